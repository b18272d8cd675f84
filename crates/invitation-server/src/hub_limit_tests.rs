//! The hub's limits: every command charged per connection and per user, and
//! the per-user device cap.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use invitation_core::protocol::{CloseReason, Command, ServerBody};
use invitation_core::{
    CallId, ConnId, DeviceId, ErrorCode, RequestId, SwitchboardConfig, SwitchboardInput, User,
    UserId,
};
use tokio::time::Instant;

use super::{Hub, HubMsg, Outbound, now};
use crate::limits::HubLimits;
use crate::metrics::Metrics;
use crate::outbox::Outbox;

fn hub(limits: HubLimits) -> (Hub, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let hub = Hub::new(SwitchboardConfig::default(), limits, None, metrics.clone());
    (hub, metrics)
}

fn open(hub: &mut Hub, key: u64, user: &str, device: &str) -> Arc<Outbox> {
    let queue = Outbox::new(256);
    hub.step(
        HubMsg::Open {
            conn: ConnId::new(key),
            tx: queue.clone(),
            input: SwitchboardInput::Connect {
                user: User::new(UserId::new(user).unwrap(), user).unwrap(),
                device: DeviceId::new(device).unwrap(),
                last_seq: None,
                hello: RequestId::new("h").unwrap(),
            },
        },
        now(),
    );
    queue
}

/// A call command (`Some`) or a sync (`None`) from connection `key`.
fn send(hub: &mut Hub, key: u64, id: &str, command: Option<Command>) {
    let id = RequestId::new(id).unwrap();
    let input = match command {
        Some(command) => SwitchboardInput::Command { id, command },
        None => SwitchboardInput::Sync { id },
    };
    hub.step(
        HubMsg::Input {
            conn: ConnId::new(key),
            input,
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

/// The answer to the one command just sent: `Ok(())` for a sync or success,
/// the error code otherwise.
fn answer(queue: &Outbox) -> Result<(), (ErrorCode, Option<u64>)> {
    let bodies = drain(queue);
    let answers: Vec<_> = bodies
        .into_iter()
        .filter_map(|b| match b {
            // A reply, or the event a command's answer rides on.
            Ok(ServerBody::Sync(_)) => Some(Ok(())),
            Ok(b) if b.success().is_some() => Some(Ok(())),
            Ok(ServerBody::Error(e)) => Some(Err((e.code, e.retry_after_ms))),
            _ => None,
        })
        .collect();
    assert_eq!(answers.len(), 1, "one answer: {answers:?}");
    answers.into_iter().next().unwrap()
}

/// Every command and sync that reaches the hub, not only invites, takes a
/// token from its user's bucket, shared by the user's devices; a refused
/// command reaches nothing (not even the retry memory) and the bucket
/// refills with time. (Each connection's own bucket, pings included, is the
/// connection machine's: see invitation-core's connection tests.)
#[tokio::test(start_paused = true)]
async fn every_command_is_charged_per_user() {
    let (mut hub, metrics) = hub(HubLimits::new((1.0, 5.0), (1e9, 1e9), 10));
    let phone = open(&mut hub, 1, "alice", "phone");
    let laptop = open(&mut hub, 2, "alice", "laptop");
    drain(&phone);
    drain(&laptop);

    for i in 0..3 {
        send(&mut hub, 1, &format!("p{i}"), None);
        assert_eq!(answer(&phone), Ok(()), "sync {i} is within the burst");
    }
    // The other device shares the user's bucket (5): 2 tokens left.
    for i in 0..2 {
        send(&mut hub, 2, &format!("q{i}"), None);
        let bodies = drain(&laptop);
        assert!(
            matches!(bodies.as_slice(), [Ok(ServerBody::Sync(_))]),
            "{bodies:?}"
        );
    }
    let unknown = CallId::new("c-unknown").unwrap();
    send(
        &mut hub,
        2,
        "a1",
        Some(Command::Accept {
            call_id: unknown,
            custom_data: None,
        }),
    );
    match answer(&laptop) {
        Err((ErrorCode::RateLimited, Some(wait))) => {
            assert!((900..=1000).contains(&wait), "retry after {wait} ms")
        }
        other => panic!("the user's 6th command: {other:?}"),
    }
    send(&mut hub, 1, "p3", None);
    assert!(matches!(answer(&phone), Err((ErrorCode::RateLimited, _))));
    assert_eq!(metrics.rate_limited.load(Ordering::Relaxed), 2);
    assert_eq!(hub.sb.remembered_requests(), 0);

    tokio::time::advance(Duration::from_secs(1)).await;
    send(&mut hub, 1, "p4", None);
    assert_eq!(answer(&phone), Ok(()), "refilled after a second");
}

/// A user's devices are capped: one more is refused with
/// `closing: too_many_devices` before the switchboard sees it, the others
/// are untouched, and a device already online may always reconnect.
#[tokio::test]
async fn a_device_over_the_cap_is_refused() {
    let (mut hub, metrics) = hub(HubLimits::new((1e9, 1e9), (1e9, 1e9), 2));
    let d1 = open(&mut hub, 1, "alice", "d1");
    let d2 = open(&mut hub, 2, "alice", "d2");
    let d3 = open(&mut hub, 3, "alice", "d3");
    assert_eq!(drain(&d3), [Err(CloseReason::TooManyDevices)]);
    assert_eq!(
        hub.sb.online_devices(&UserId::new("alice").unwrap()).len(),
        2
    );
    assert!(!hub.links.contains_key(&ConnId::new(3)));
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
