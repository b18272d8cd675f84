//! The NATS building blocks (`invitation_server::cluster`) against a real
//! `nats-server` with JetStream, started here on a loopback port of its own
//! choosing with a temporary store.
//!
//! Without `nats-server` on the PATH these tests say so and pass, unless
//! `INVITATION_REQUIRE_NATS=1` (set by `.ci/run`, which installs it): then
//! its absence fails them.

mod common;

use std::time::Duration;

use common::nats::nats_server;
use invitation_server::cluster::{ClusterError, FencedLog, Lease, Nats};

#[tokio::test]
async fn one_node_at_a_time_holds_the_lease_and_a_stale_holder_cannot_renew() {
    let Some(server) = nats_server("lease").await else {
        return;
    };
    let nats = Nats::connect(&server.url, "lease").await.unwrap();
    // Long enough that a stalled test machine does not let it lapse early.
    let ttl = Duration::from_millis(1500);
    let mut a = Lease::open(&nats, "node-a", ttl).await.unwrap();
    let mut b = Lease::open(&nats, "node-b", ttl).await.unwrap();

    assert!(a.try_take().await.unwrap(), "a free lease is taken");
    assert!(!b.try_take().await.unwrap(), "a held lease is not");
    assert_eq!(a.holder().await.unwrap().as_deref(), Some("node-a"));
    a.renew().await.unwrap();
    let renewed = tokio::time::Instant::now();
    assert!(
        matches!(b.renew().await, Err(ClusterError::LeaseLost { .. })),
        "a node that never held it cannot renew it"
    );

    // a stops renewing (as a node that hangs or dies would): once the ttl
    // has passed, b's next attempt takes it. b tries as a standby does,
    // every 100 ms, for at most 5 s.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut attempts = 0;
    while !b.try_take().await.unwrap() {
        attempts += 1;
        assert!(
            tokio::time::Instant::now() < deadline,
            "b never took the expired lease ({attempts} attempts; holder {:?})",
            b.holder().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(attempts >= 1, "the lease was free before its ttl passed");
    // The renewal counted: b got it no earlier than a ttl after it (less the
    // renewal's own round trip, which ended at `renewed`).
    assert!(
        renewed.elapsed() + Duration::from_millis(200) >= ttl,
        "the lease changed hands {:?} after a's renewal (ttl {ttl:?})",
        renewed.elapsed()
    );
    assert_eq!(b.holder().await.unwrap().as_deref(), Some("node-b"));

    // a wakes up and tries to go on: refused, and it knows it lost.
    assert!(a.held());
    assert!(matches!(
        a.renew().await,
        Err(ClusterError::LeaseLost { .. })
    ));
    assert!(!a.held());
    b.renew().await.unwrap();
}

#[tokio::test]
async fn a_writer_that_missed_an_append_is_fenced_until_it_catches_up() {
    let Some(server) = nats_server("log").await else {
        return;
    };
    let nats = Nats::connect(&server.url, "log").await.unwrap();
    let mut a = FencedLog::open(&nats, "JOURNAL").await.unwrap();
    let mut b = FencedLog::open(&nats, "JOURNAL").await.unwrap();

    for entry in ["one", "two", "three"] {
        a.append(entry.as_bytes().to_vec()).await.unwrap();
    }
    assert_eq!(a.last(), 3);

    // b has not read them: its append is refused and changes nothing.
    match b.append(b"stale".to_vec()).await {
        Err(ClusterError::Fenced { expected: 0, .. }) => {}
        other => panic!("a stale append must be fenced, got {other:?}"),
    }
    let read = b.catch_up().await.unwrap();
    let texts: Vec<(u64, &str)> = read
        .iter()
        .map(|(seq, e)| (*seq, std::str::from_utf8(e).unwrap()))
        .collect();
    assert_eq!(texts, [(1, "one"), (2, "two"), (3, "three")]);
    assert_eq!(b.append(b"four".to_vec()).await.unwrap(), 4);

    // Now a is behind.
    assert!(matches!(
        a.append(b"lost".to_vec()).await,
        Err(ClusterError::Fenced { expected: 3, .. })
    ));
    let read = a.catch_up().await.unwrap();
    assert_eq!(read, [(4, b"four".to_vec())]);
    assert!(
        a.catch_up().await.unwrap().is_empty(),
        "nothing more to read"
    );

    // A node that starts later reads the whole history, in order.
    let mut c = FencedLog::open(&nats, "JOURNAL").await.unwrap();
    let all: Vec<u64> = c
        .catch_up()
        .await
        .unwrap()
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(all, [1, 2, 3, 4]);
}

#[tokio::test]
async fn an_unreachable_nats_is_a_connect_error_naming_the_url() {
    // A port nobody listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    match tokio::time::timeout(Duration::from_secs(10), Nats::connect(&url, "x")).await {
        Ok(Err(e @ ClusterError::Connect { .. })) => {
            assert!(e.to_string().contains(&url), "{e}")
        }
        other => panic!("expected a connect error, got {other:?}"),
    }
}
