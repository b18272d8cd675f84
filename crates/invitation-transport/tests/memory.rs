//! The memory hub passes the transport conformance suite, and drops a
//! client that never reads.

use async_trait::async_trait;
use invitation_core::User;
use invitation_transport::conformance::{self, Fixture};
use invitation_transport::memory::MemoryHub;
use invitation_transport::{BoxTransport, TransportErrorKind};

struct Memory(MemoryHub);

#[async_trait]
impl Fixture for Memory {
    async fn transport(&self, user: &User) -> BoxTransport {
        std::sync::Arc::new(self.0.transport(user.clone()))
    }
}

#[tokio::test(start_paused = true)]
async fn memory_hub_passes_conformance() {
    conformance::run_all(&Memory(MemoryHub::new())).await;
}

#[tokio::test(start_paused = true)]
async fn kicked_connection_observes_close() {
    use invitation_core::protocol::{ClientMessage, Control};
    use invitation_core::{DeviceId, RequestId, UserId};
    use invitation_transport::Transport;
    let hub = MemoryHub::new();
    let mut conn = hub
        .transport(User::named("k", "K"))
        .connect()
        .await
        .unwrap();
    let hello = Control::Hello {
        device: DeviceId::new("d").unwrap(),
        token: None,
        last_seq: None,
    };
    conn.send(ClientMessage::new(RequestId::new("h").unwrap(), hello))
        .await
        .unwrap();
    conn.recv().await.unwrap(); // welcome
    conn.recv().await.unwrap(); // sync
    hub.kick(&UserId::new("k").unwrap(), &DeviceId::new("d").unwrap());
    let err = conn.recv().await.unwrap_err();
    assert_eq!(err.kind(), TransportErrorKind::Closed);
    let online = hub
        .inspect(|sb| sb.online_devices(&UserId::new("k").unwrap()).len())
        .await;
    assert_eq!(online, Some(0));
}

#[tokio::test(start_paused = true)]
async fn f5_client_that_never_reads_is_dropped_and_the_hub_stays_bounded() {
    use invitation_core::protocol::{ClientMessage, Command, Control, InviteRequest, ReplyResult};
    use invitation_core::{CallType, DeviceId, RequestId, UserId};
    use invitation_transport::Transport;
    use invitation_transport::memory::OUTBOUND_QUEUE;
    let hub = MemoryHub::new();
    let hello = |d: &str| Control::Hello {
        device: DeviceId::new(d).unwrap(),
        token: None,
        last_seq: None,
    };
    let mut sleepy = hub
        .transport(User::named("sleepy", "S"))
        .connect()
        .await
        .unwrap();
    sleepy
        .send(ClientMessage::new(RequestId::new("h").unwrap(), hello("d")))
        .await
        .unwrap();
    let mut caller = hub
        .transport(User::named("caller", "C"))
        .connect()
        .await
        .unwrap();
    caller
        .send(ClientMessage::new(RequestId::new("h").unwrap(), hello("d")))
        .await
        .unwrap();
    // Each round gives the sleepy callee two events (incoming, ended).
    for i in 0..OUTBOUND_QUEUE {
        let invite = Command::Invite(InviteRequest::new(
            vec![UserId::new("sleepy").unwrap()],
            CallType::Voice,
        ));
        caller
            .send(ClientMessage::new(
                RequestId::new(format!("i{i}")).unwrap(),
                invite,
            ))
            .await
            .unwrap();
        // The answer rides on the `outgoing_call` the invite caused.
        let answered = async {
            loop {
                let m = caller.recv().await.unwrap();
                if let Some((_, ReplyResult::Invited { call_id, .. })) = m.body.success() {
                    break call_id;
                }
            }
        };
        let call_id = tokio::time::timeout(std::time::Duration::from_secs(5), answered)
            .await
            .unwrap_or_else(|_| panic!("invite i{i} was not answered within 5 s"));
        caller
            .send(ClientMessage::new(
                RequestId::new(format!("c{i}")).unwrap(),
                Command::Cancel {
                    call_id,
                    custom_data: None,
                },
            ))
            .await
            .unwrap();
    }
    let online = hub
        .inspect(|sb| sb.online_devices(&UserId::new("sleepy").unwrap()).len())
        .await;
    assert_eq!(
        online,
        Some(0),
        "the hub dropped the client that never reads"
    );
    // What it had queued is bounded, then the close is observed.
    let mut n = 0;
    while sleepy.recv().await.is_ok() {
        n += 1;
    }
    assert!(n <= OUTBOUND_QUEUE, "{n} messages were queued");
    assert_eq!(hub.closes(invitation_core::CloseCause::TooSlow), 1);
}

/// Tokens for the authenticating hub: `user:seconds` is valid for that
/// many seconds from when it is checked; anything else is refused.
struct Seconds;

impl invitation_core::Authenticator for Seconds {
    fn authenticate(
        &self,
        token: Option<&str>,
    ) -> Result<invitation_core::Identity, invitation_core::AuthRefusal> {
        let (user, secs) = token
            .and_then(|t| t.split_once(':'))
            .ok_or_else(|| invitation_core::AuthRefusal::new("no token"))?;
        let secs: u64 = secs
            .parse()
            .map_err(|_| invitation_core::AuthRefusal::new("bad token"))?;
        Ok(invitation_core::Identity::new(
            User::named(user, user),
            Some(std::time::Duration::from_secs(secs)),
        ))
    }
}

fn authenticating_hub() -> MemoryHub {
    MemoryHub::with_authenticator(
        invitation_core::SwitchboardConfig::default(),
        invitation_core::SequentialCallIds::default(),
        std::sync::Arc::new(Seconds),
    )
}

async fn open(
    hub: &MemoryHub,
    token: Option<&str>,
) -> (
    invitation_transport::BoxConnection,
    invitation_core::protocol::ServerMessage,
) {
    use invitation_core::protocol::{ClientMessage, Control};
    use invitation_core::{DeviceId, RequestId};
    use invitation_transport::Transport;
    // The transport's user is not who the link becomes: the token says.
    let mut conn = hub
        .transport(User::named("nobody", "N"))
        .connect()
        .await
        .unwrap();
    let hello = Control::Hello {
        device: DeviceId::new("d").unwrap(),
        token: token.map(str::to_owned),
        last_seq: None,
    };
    conn.send(ClientMessage::new(RequestId::new("h").unwrap(), hello))
        .await
        .unwrap();
    let first = conn.recv().await.unwrap();
    (conn, first)
}

/// Reads until the link ends; returns the `closing` reason seen, if any.
async fn read_to_close(
    conn: &mut invitation_transport::BoxConnection,
) -> Option<invitation_core::protocol::CloseReason> {
    use invitation_core::protocol::ServerBody;
    let mut reason = None;
    while let Ok(m) = conn.recv().await {
        if let ServerBody::Closing { reason: r } = m.body {
            reason = Some(r);
        }
    }
    reason
}

#[tokio::test(start_paused = true)]
async fn an_authenticating_hub_takes_the_identity_from_the_token_and_expires_it() {
    use invitation_core::protocol::{CloseReason, ServerBody};
    use invitation_core::{CloseCause, UserId};
    use std::time::Duration;
    let hub = authenticating_hub();
    let (mut conn, welcome) = open(&hub, Some("alice:30")).await;
    assert!(
        matches!(welcome.body, ServerBody::Welcome { .. }),
        "{welcome:?}"
    );
    let online = hub
        .inspect(|sb| sb.online_devices(&UserId::new("alice").unwrap()).len())
        .await;
    assert_eq!(online, Some(1), "the token's user, not the transport's");
    let began = tokio::time::Instant::now();
    let reason = tokio::time::timeout(Duration::from_secs(60), read_to_close(&mut conn))
        .await
        .expect("the link ends");
    assert_eq!(reason, Some(CloseReason::TokenExpired));
    assert_eq!(began.elapsed(), Duration::from_secs(30), "at the expiry");
    assert_eq!(hub.closes(CloseCause::TokenExpired), 1);
    let online = hub
        .inspect(|sb| sb.online_devices(&UserId::new("alice").unwrap()).len())
        .await;
    assert_eq!(online, Some(0));
}

#[tokio::test(start_paused = true)]
async fn a_renewal_in_time_keeps_the_link_and_a_refused_one_does_not_extend_it() {
    use invitation_core::RequestId;
    use invitation_core::protocol::{ClientMessage, CloseReason, Control, ReplyResult, ServerBody};
    use std::time::Duration;
    let hub = authenticating_hub();
    let (mut conn, _) = open(&hub, Some("alice:30")).await;
    let _sync = conn.recv().await.unwrap();
    tokio::time::sleep(Duration::from_secs(20)).await;
    let renew = |id: &str, token: &str| {
        ClientMessage::new(
            RequestId::new(id).unwrap(),
            Control::Renew {
                token: token.into(),
            },
        )
    };
    conn.send(renew("r1", "alice:30")).await.unwrap();
    let answer = conn.recv().await.unwrap();
    assert!(
        matches!(&answer.body, ServerBody::Reply { re, result: ReplyResult::Done } if re.as_str() == "r1"),
        "{answer:?}"
    );
    // A token of someone else is refused and changes nothing.
    conn.send(renew("r2", "mallory:3600")).await.unwrap();
    let answer = conn.recv().await.unwrap();
    assert!(
        matches!(&answer.body, ServerBody::Error(e) if e.re.as_ref().map(RequestId::as_str) == Some("r2")),
        "{answer:?}"
    );
    let began = tokio::time::Instant::now();
    let reason = tokio::time::timeout(Duration::from_secs(120), read_to_close(&mut conn))
        .await
        .expect("the link ends");
    assert_eq!(reason, Some(CloseReason::TokenExpired));
    assert_eq!(
        began.elapsed(),
        Duration::from_secs(30),
        "30 s after the renewal, not 30 s after the hello"
    );
}

#[tokio::test(start_paused = true)]
async fn an_authenticating_hub_refuses_bad_tokens_and_closes_silent_links() {
    use invitation_core::CloseCause;
    use invitation_core::protocol::ServerBody;
    use invitation_transport::Transport;
    use std::time::Duration;
    let hub = authenticating_hub();
    let (mut conn, answer) = open(&hub, None).await;
    assert!(
        matches!(&answer.body, ServerBody::Error(e) if e.code == invitation_core::ErrorCode::Unauthorized),
        "{answer:?}"
    );
    assert_eq!(read_to_close(&mut conn).await, None);
    assert_eq!(hub.closes(CloseCause::Unauthorized), 1);

    // No hello at all: closed after the hello timeout.
    let mut silent = hub
        .transport(User::named("s", "S"))
        .connect()
        .await
        .unwrap();
    let began = tokio::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(60), silent.recv()).await;
    assert!(matches!(ended, Ok(Err(_))), "{ended:?}");
    assert_eq!(began.elapsed(), Duration::from_secs(5));
    assert_eq!(hub.closes(CloseCause::NoHello), 1);
}

#[tokio::test(start_paused = true)]
async fn the_default_hub_vouches_without_tokens_and_never_expires_a_link() {
    use invitation_core::CloseCause;
    use invitation_core::protocol::ServerBody;
    use invitation_transport::Transport;
    use std::time::Duration;
    let hub = MemoryHub::new();
    let (mut conn, welcome) = open(&hub, None).await;
    assert!(
        matches!(welcome.body, ServerBody::Welcome { .. }),
        "{welcome:?}"
    );
    let _sync = conn.recv().await.unwrap();
    let mut silent = hub
        .transport(User::named("s", "S"))
        .connect()
        .await
        .unwrap();
    let quiet = tokio::time::timeout(Duration::from_secs(3600), conn.recv()).await;
    assert!(quiet.is_err(), "nothing for an hour: {quiet:?}");
    let quiet = tokio::time::timeout(Duration::from_secs(1), silent.recv()).await;
    assert!(quiet.is_err(), "no hello timeout either: {quiet:?}");
    assert_eq!(hub.closes(CloseCause::NoHello), 0);
    assert_eq!(hub.closes(CloseCause::TokenExpired), 0);
}

/// A client that closed its end while the hub still had something for it
/// is gone, not too slow: the hub tells the two apart.
#[tokio::test(start_paused = true)]
async fn a_link_closed_by_its_client_is_gone_not_too_slow() {
    use invitation_core::protocol::{ClientMessage, Command, InviteRequest};
    use invitation_core::{CallType, CloseCause, RequestId, UserId};
    let hub = MemoryHub::new();
    let (mut callee, _) = open_as(&hub, "callee").await;
    let (mut caller, _) = open_as(&hub, "caller").await;
    let _sync = callee.recv().await.unwrap();
    let invite = Command::Invite(InviteRequest::new(
        vec![UserId::new("callee").unwrap()],
        CallType::Voice,
    ));
    // The invite reaches the hub before the callee's close does: the hub
    // writes the ring to a link whose client already let go.
    caller
        .send(ClientMessage::new(RequestId::new("i").unwrap(), invite))
        .await
        .unwrap();
    callee.close().await;
    let online = hub
        .inspect(|sb| sb.online_devices(&UserId::new("callee").unwrap()).len())
        .await;
    assert_eq!(online, Some(0));
    assert_eq!(hub.closes(CloseCause::TooSlow), 0, "not too slow");
    assert_eq!(hub.closes(CloseCause::PeerGone), 1, "gone");
}

async fn open_as(
    hub: &MemoryHub,
    user: &str,
) -> (
    invitation_transport::BoxConnection,
    invitation_core::protocol::ServerMessage,
) {
    use invitation_core::protocol::{ClientMessage, Control};
    use invitation_core::{DeviceId, RequestId};
    use invitation_transport::Transport;
    let mut conn = hub
        .transport(User::named(user, user))
        .connect()
        .await
        .unwrap();
    let hello = Control::Hello {
        device: DeviceId::new("d").unwrap(),
        token: None,
        last_seq: None,
    };
    conn.send(ClientMessage::new(RequestId::new("h").unwrap(), hello))
        .await
        .unwrap();
    let first = conn.recv().await.unwrap();
    (conn, first)
}

/// A hub made with restarts crashes and recovers: the link drops, the state
/// survives (the invitation still rings, from the snapshot plus the journal
/// after it), the device resumes with exactly the events it missed, and a
/// command retried with its request id is answered, not run again. A hub
/// without restarts refuses to restart.
#[tokio::test(start_paused = true)]
async fn a_restarted_hub_keeps_its_calls_and_the_devices_resume() {
    use invitation_core::protocol::{
        ClientMessage, Command, Control, InviteRequest, ReplyResult, ServerBody,
    };
    use invitation_core::{
        CallType, DeviceId, RequestId, SequentialCallIds, SwitchboardConfig, UserId,
    };
    use invitation_transport::Transport;
    use invitation_transport::memory::RestartError;
    use std::time::Duration;

    let plain = MemoryHub::new();
    assert!(matches!(
        plain.restart().await,
        Err(RestartError::NotDurable)
    ));

    let hub = MemoryHub::with_restarts(
        SwitchboardConfig::default(),
        SequentialCallIds::default(),
        None,
    );
    let hello = |last_seq| Control::Hello {
        device: DeviceId::new("d").unwrap(),
        token: None,
        last_seq,
    };
    let rid = |s: &str| RequestId::new(s).unwrap();
    let mut a = hub
        .transport(User::named("a", "A"))
        .connect()
        .await
        .unwrap();
    a.send(ClientMessage::new(rid("h"), hello(None)))
        .await
        .unwrap();
    a.recv().await.unwrap(); // welcome
    a.recv().await.unwrap(); // sync
    assert_eq!(hub.snapshot().await.map(|n| n > 0), Some(true));
    // After the snapshot: an invitation to an offline callee (held).
    let invite = Command::Invite(
        InviteRequest::new(vec![UserId::new("b").unwrap()], CallType::Voice)
            .with_timeout_s(Some(60)),
    );
    a.send(ClientMessage::new(rid("inv"), invite.clone()))
        .await
        .unwrap();
    let first = a.recv().await.unwrap();
    let ServerBody::Event {
        seq: 1,
        result: Some(ReplyResult::Invited { call_id, .. }),
        ..
    } = first.body
    else {
        panic!("{first:?}")
    };
    tokio::time::sleep(Duration::from_secs(5)).await;

    let recovered = hub.restart().await.unwrap();
    assert_eq!(
        (
            recovered.entries,
            recovered.calls,
            recovered.ringing,
            recovered.dropped
        ),
        (1, 1, 1, 1)
    );
    let err = a.recv().await.unwrap_err();
    assert_eq!(err.kind(), TransportErrorKind::Closed);

    // Resume from seq 0: exactly the one event (the outgoing call).
    let mut a = hub
        .transport(User::named("a", "A"))
        .connect()
        .await
        .unwrap();
    a.send(ClientMessage::new(rid("h2"), hello(Some(0))))
        .await
        .unwrap();
    let welcome = a.recv().await.unwrap();
    assert!(
        matches!(
            welcome.body,
            ServerBody::Welcome {
                seq: 1,
                resumed: true,
                ..
            }
        ),
        "{welcome:?}"
    );
    let replay = a.recv().await.unwrap();
    assert!(
        matches!(replay.body, ServerBody::Event { seq: 1, .. }),
        "{replay:?}"
    );
    // The invite, retried: the same call.
    a.send(ClientMessage::new(rid("inv"), invite))
        .await
        .unwrap();
    let again = a.recv().await.unwrap();
    match again.body {
        ServerBody::Reply {
            result: ReplyResult::Invited { call_id: again, .. },
            ..
        } => assert_eq!(again, call_id),
        other => panic!("{other:?}"),
    }
    let (calls, ringing) = hub
        .inspect(move |sb| {
            let ringing = sb.call(&call_id).is_some_and(|c| c.is_ringing());
            (sb.calls().count(), ringing)
        })
        .await
        .unwrap();
    assert_eq!((calls, ringing), (1, true));
}
