//! The hub's limits: every command charged per connection and per user, and
//! the per-user device cap.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use invitation_core::protocol::{ClientMessage, CloseReason, Command, ServerBody};
use invitation_core::{CallId, DeviceId, ErrorCode, RequestId, SwitchboardConfig, User, UserId};
use tokio::time::Instant;

use super::{Hub, HubMsg, LinkKey, Outbound, now};
use crate::limits::HubLimits;
use crate::metrics::Metrics;
use crate::outbox::Outbox;

fn hub(limits: HubLimits) -> (Hub, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let hub = Hub::new(SwitchboardConfig::default(), limits, None, metrics.clone());
    (hub, metrics)
}

fn open(hub: &mut Hub, key: LinkKey, user: &str, device: &str) -> Arc<Outbox> {
    let queue = Outbox::new(256);
    hub.handle(
        HubMsg::Open {
            key,
            user: User::new(UserId::new(user).unwrap(), user).unwrap(),
            device: DeviceId::new(device).unwrap(),
            last_seq: None,
            tx: queue.clone(),
        },
        now(),
    );
    queue
}

fn send(hub: &mut Hub, key: LinkKey, id: &str, command: Command) {
    hub.handle(
        HubMsg::Command {
            key,
            message: ClientMessage::new(RequestId::new(id).unwrap(), command),
            at: Instant::now(),
        },
        now(),
    );
}

/// Everything queued, as bodies; a close as `Err`.
fn drain(queue: &Outbox) -> Vec<Result<ServerBody, CloseReason>> {
    std::iter::from_fn(|| queue.try_pop())
        .map(|o| match o {
            Outbound::Message(q) => Ok(q.message.body),
            Outbound::Close(r) => Err(r),
        })
        .collect()
}

/// The answer to the one command just sent: `Ok(())` for a pong or reply,
/// the error code otherwise.
fn answer(queue: &Outbox) -> Result<(), (ErrorCode, Option<u64>)> {
    let bodies = drain(queue);
    let answers: Vec<_> = bodies
        .into_iter()
        .filter_map(|b| match b {
            Ok(ServerBody::Pong { .. } | ServerBody::Reply { .. }) => Some(Ok(())),
            Ok(ServerBody::Error(e)) => Some(Err((e.code, e.retry_after_ms))),
            _ => None,
        })
        .collect();
    assert_eq!(answers.len(), 1, "one answer: {answers:?}");
    answers.into_iter().next().unwrap()
}

/// Every command, not only invites, takes a token from its connection's
/// bucket and its user's bucket; a refused command reaches nothing (not even
/// the retry memory) and the buckets refill with time.
#[tokio::test(start_paused = true)]
async fn every_command_is_charged_per_connection_and_per_user() {
    let (mut hub, metrics) = hub(HubLimits::new((1.0, 3.0), (1.0, 5.0), (1e9, 1e9), 10));
    let phone = open(&mut hub, 1, "alice", "phone");
    let laptop = open(&mut hub, 2, "alice", "laptop");
    drain(&phone);
    drain(&laptop);

    for i in 0..3 {
        send(&mut hub, 1, &format!("p{i}"), Command::Ping);
        assert_eq!(answer(&phone), Ok(()), "ping {i} is within the burst");
    }
    send(&mut hub, 1, "p3", Command::Ping);
    match answer(&phone) {
        Err((ErrorCode::RateLimited, Some(wait))) => {
            assert!((900..=1000).contains(&wait), "retry after {wait} ms")
        }
        other => panic!("the connection's 4th command: {other:?}"),
    }

    // The other device has its own connection bucket, but the user's
    // bucket (5) has 2 tokens left.
    for i in 0..2 {
        send(&mut hub, 2, &format!("q{i}"), Command::Sync);
        let bodies = drain(&laptop);
        assert!(
            matches!(bodies.as_slice(), [Ok(ServerBody::Sync(_))]),
            "{bodies:?}"
        );
    }
    let unknown = CallId::new("c-unknown").unwrap();
    send(&mut hub, 2, "a1", Command::Accept { call_id: unknown });
    assert!(matches!(answer(&laptop), Err((ErrorCode::RateLimited, _))));
    assert_eq!(metrics.rate_limited.load(Ordering::Relaxed), 2);
    assert_eq!(hub.sb.remembered_requests(), 0);

    tokio::time::advance(Duration::from_secs(1)).await;
    send(&mut hub, 1, "p4", Command::Ping);
    assert_eq!(answer(&phone), Ok(()), "refilled after a second");
}

/// A user's devices are capped: one more is refused with
/// `closing: too_many_devices` before the switchboard sees it, the others
/// are untouched, and a device already online may always reconnect.
#[tokio::test]
async fn a_device_over_the_cap_is_refused() {
    let (mut hub, metrics) = hub(HubLimits::new((1e9, 1e9), (1e9, 1e9), (1e9, 1e9), 2));
    let d1 = open(&mut hub, 1, "alice", "d1");
    let d2 = open(&mut hub, 2, "alice", "d2");
    let d3 = open(&mut hub, 3, "alice", "d3");
    assert_eq!(drain(&d3), [Err(CloseReason::TooManyDevices)]);
    assert_eq!(
        hub.sb.online_devices(&UserId::new("alice").unwrap()).len(),
        2
    );
    assert!(!hub.links.contains_key(&3));
    assert!(drain(&d2).iter().all(Result::is_ok), "d2 untouched");
    // d1 reconnects (a new connection of the same device): it replaces
    // itself.
    let d1_again = open(&mut hub, 4, "alice", "d1");
    assert!(matches!(
        drain(&d1_again).first(),
        Some(Ok(ServerBody::Welcome { .. }))
    ));
    assert!(drain(&d1).contains(&Err(CloseReason::Replaced)));
    // Another user is not affected.
    let bob = open(&mut hub, 5, "bob", "d1");
    assert!(matches!(
        drain(&bob).first(),
        Some(Ok(ServerBody::Welcome { .. }))
    ));
    assert!(
        metrics
            .render()
            .contains("invitation_connections_refused_total{reason=\"devices\"} 1")
    );
}
