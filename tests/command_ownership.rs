//! One owner per command: the client session holds a command from issue to
//! answer, retries it, and gives it up for good when its caller stops
//! waiting (a dropped future) or its deadline passes. Mock server, paused
//! clock.

use std::time::Duration;

use invitation::core::protocol::{ClientBody, Command};
use invitation::prelude::*;
use invitation::testing::mock;

fn invites_sent(server: &mock::MockServer) -> usize {
    server
        .commands()
        .iter()
        .filter(|m| matches!(m.body, ClientBody::Command(Command::Invite(_))))
        .count()
}

async fn client(transport: mock::MockTransport, timeout: Duration) -> Client {
    let client = Client::builder()
        .user(User::named("alice", "Alice"))
        .transport(transport)
        .command_timeout(timeout)
        .build()
        .unwrap();
    client.connect().await.unwrap();
    client
}

/// A caller that stops waiting (its future dropped) abandons the command:
/// the session never sends it again, however long the link stays up.
#[tokio::test(start_paused = true)]
async fn a_dropped_invite_is_never_sent_again() {
    let (transport, server) = mock::pair_as(User::named("alice", "Alice"));
    let alice = client(transport, Duration::from_secs(30)).await;
    server.set_auto_reply(false); // from now on the server never answers
    let gave_up = tokio::time::timeout(
        Duration::from_secs(3),
        alice.invite(["bob"], CallType::Voice, None),
    )
    .await;
    assert!(gave_up.is_err(), "no answer: the caller gave up");
    let sent_while_waiting = invites_sent(&server);
    assert!(
        sent_while_waiting >= 1,
        "sent, then retried while waited for"
    );
    // Retries would come at 2, 4, 8, 16 s...: none does.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(invites_sent(&server), sent_while_waiting);
}

/// Past the command timeout the command fails with `Timeout` and is given
/// up: no more retries after it.
#[tokio::test(start_paused = true)]
async fn a_command_past_its_deadline_times_out_and_stops() {
    let (transport, server) = mock::pair_as(User::named("alice", "Alice"));
    let alice = client(transport, Duration::from_secs(10)).await;
    server.set_auto_reply(false);
    let started = tokio::time::Instant::now();
    let result = alice.invite(["bob"], CallType::Voice, None).await;
    assert!(
        matches!(result, Err(ClientError::Timeout(t)) if t == Duration::from_secs(10)),
        "{result:?}"
    );
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    let sent = invites_sent(&server);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(invites_sent(&server), sent, "never sent after the deadline");
}
