//! The gateway contract and delivery, against a real HTTP receiver on
//! 127.0.0.1 port 0 (real time: the sockets are real; every wait has a
//! deadline). Notices come from a real switchboard.

use std::time::Instant as StdInstant;

use invitation_core::protocol::{Command, InviteRequest, PushPlatform, PushRegistration};
use invitation_core::{
    CallType, ConnId, CustomData, DeviceId, RequestId, SequentialCallIds, Switchboard,
    SwitchboardConfig, User, UserId,
};
use serde_json::Value;

use super::*;
use crate::webhook::tests::{
    Answer, DEADLINE, Receiver, SECRET_NEW, SECRET_OLD, Seen, receiver, settles,
};
use crate::webhook::verify;

/// A ring for bob's phone (30 s), then the stop a cancel 5 s later causes.
fn ring_and_stop() -> (PushNotice, PushNotice) {
    let mut config = SwitchboardConfig::default();
    config.push = true;
    let mut sb = Switchboard::new(config, SequentialCallIds::default());
    #[allow(clippy::disallowed_methods)] // the origin of test time
    let t0 = StdInstant::now();
    let bob = UserId::new("bob").unwrap();
    let phone = DeviceId::new("phone").unwrap();
    let registration = PushRegistration::new(PushPlatform::Apns, "apns-token-1");
    sb.handle_backend_push(t0, &bob, &phone, Some(registration))
        .unwrap();
    let alice = ConnId::new(1);
    sb.connect(
        t0,
        alice,
        User::named("alice", "Alice"),
        DeviceId::new("laptop").unwrap(),
        None,
        None,
    );
    let invite = InviteRequest::new(vec![bob], CallType::Video)
        .with_custom_data(Some(CustomData::new("{\"room\":7}").unwrap()))
        .with_timeout_s(Some(30));
    let call = match sb.handle_command(
        t0,
        alice,
        RequestId::new("r1").unwrap(),
        Command::Invite(invite),
    ) {
        Ok(invitation_core::protocol::ReplyResult::Invited { call_id, .. }) => call_id,
        other => panic!("{other:?}"),
    };
    let ring = sb.poll_push().expect("a ring");
    let later = t0 + Duration::from_secs(5);
    sb.handle_command(
        later,
        alice,
        RequestId::new("r2").unwrap(),
        Command::cancel(call),
    )
    .unwrap();
    let stop = sb.poll_push().expect("a stop");
    (ring, stop)
}

fn settings(url: &str, timeout: Duration) -> PushSettings {
    PushSettings {
        url: url.to_owned(),
        secrets: vec![SECRET_NEW.to_owned(), SECRET_OLD.to_owned()].into(),
        timeout,
        first_retry: Duration::from_millis(10),
        max_retry: Duration::from_millis(40),
        stop_max_age: Duration::from_millis(500),
        queue: 16,
        in_flight: 8,
        tls: crate::tls::outbound_tls(None, false).unwrap(),
    }
}

/// The body, once its signature verified under the older secret.
fn checked(seen: &Seen) -> Value {
    verify(
        &[SECRET_OLD],
        seen.signature.as_deref(),
        seen.body.as_bytes(),
        unix_ms_now() / 1000,
        Duration::from_secs(300),
    )
    .unwrap_or_else(|e| panic!("{e}: {seen:?}"));
    serde_json::from_str(&seen.body).unwrap()
}

fn send(pushes: &mut Pushes, notice: &PushNotice) {
    pushes.note(notice);
    pushes.flush();
}

#[tokio::test]
async fn a_ring_and_its_stop_carry_the_documented_fields_signed() {
    let (ring, stop) = ring_and_stop();
    let mut gateway: Receiver = receiver(vec![]).await;
    let metrics = Arc::new(Metrics::default());
    let mut pushes = Pushes::start(
        settings(&gateway.url, Duration::from_secs(5)),
        metrics.clone(),
    );

    send(&mut pushes, &ring);
    let body = checked(&gateway.next().await);
    assert_eq!(body["type"], "ring");
    assert_eq!(body["call_id"], ring.call_id.as_str());
    assert_eq!(body["collapse_id"], ring.call_id.as_str());
    assert_eq!(body["ttl_ms"], 30_000);
    assert_eq!(
        body["expires_at"].as_u64().unwrap() - body["created_at"].as_u64().unwrap(),
        30_000
    );
    assert_eq!(body["user"], "bob");
    assert_eq!(body["device"], "phone");
    assert_eq!(body["platform"], "apns");
    assert_eq!(body["token"], "apns-token-1");
    assert_eq!(body["call"]["caller"]["id"], "alice");
    assert_eq!(body["call"]["caller"]["name"], "Alice");
    assert_eq!(body["call"]["call_type"], "video");
    assert_eq!(body["call"]["callees"][0]["id"], "bob");
    assert_eq!(body["call"]["custom_data"], "{\"room\":7}");
    assert!(body["id"].as_str().unwrap().starts_with("push_"));
    assert!(body.get("reason").is_none());
    settles(&metrics.pushes_sent, 1).await;

    send(&mut pushes, &stop);
    let body = checked(&gateway.next().await);
    assert_eq!(body["type"], "stop");
    assert_eq!(body["collapse_id"], ring.call_id.as_str());
    assert_eq!(body["reason"], "canceled");
    assert_eq!(body["ttl_ms"], 25_000);
    assert_eq!(body["token"], "apns-token-1");
    assert!(body.get("call").is_none());
    settles(&metrics.pushes_sent, 2).await;
}

#[tokio::test]
async fn a_failing_ring_is_retried_with_the_same_body_then_given_up() {
    let (mut ring, _) = ring_and_stop();
    ring.ttl = Duration::from_millis(200);
    let mut gateway = receiver(vec![Answer::Status(500), Answer::Status(503)]).await;
    let metrics = Arc::new(Metrics::default());
    let mut pushes = Pushes::start(
        settings(&gateway.url, Duration::from_secs(5)),
        metrics.clone(),
    );
    send(&mut pushes, &ring);
    let first = gateway.next().await;
    let second = gateway.next().await;
    let third = gateway.next().await;
    assert_eq!(first.body, second.body, "a retry is the same request");
    assert_eq!(second.body, third.body);
    settles(&metrics.pushes_sent, 1).await;
    assert_eq!(metrics.push_failed_attempts.load(Ordering::Relaxed), 2);

    // Failing for good: given up once the ring would have ended.
    let mut gateway = receiver(vec![Answer::Status(500); 1_000]).await;
    let metrics = Arc::new(Metrics::default());
    let mut pushes = Pushes::start(
        settings(&gateway.url, Duration::from_secs(5)),
        metrics.clone(),
    );
    let started = tokio::time::Instant::now();
    send(&mut pushes, &ring);
    gateway.next().await;
    settles(&metrics.pushes_dropped, 1).await;
    assert!(started.elapsed() < DEADLINE);
    assert_eq!(metrics.pushes_sent.load(Ordering::Relaxed), 0);
    let attempts = metrics.push_failed_attempts.load(Ordering::Relaxed);
    // 10, 20, 40, 40 ... ms apart within 200 ms: a handful, not one.
    assert!((3..=10).contains(&attempts), "{attempts} attempts");
}

#[tokio::test]
async fn a_refusal_for_good_is_not_retried() {
    let (ring, _) = ring_and_stop();
    let mut gateway = receiver(vec![Answer::Status(410)]).await;
    let metrics = Arc::new(Metrics::default());
    let mut pushes = Pushes::start(
        settings(&gateway.url, Duration::from_secs(5)),
        metrics.clone(),
    );
    send(&mut pushes, &ring);
    gateway.next().await;
    settles(&metrics.pushes_dropped, 1).await;
    assert_eq!(metrics.push_failed_attempts.load(Ordering::Relaxed), 0);
    // The next request is the next push, not a retry.
    let (other, _) = ring_and_stop();
    send(&mut pushes, &other);
    let seen = checked(&gateway.next().await);
    assert_eq!(seen["type"], "ring");
    settles(&metrics.pushes_sent, 1).await;
}

#[tokio::test]
async fn a_stop_goes_out_after_its_ring_even_while_the_ring_hangs() {
    let (ring, stop) = ring_and_stop();
    // The ring's request hangs (up to the 5 s attempt timeout); the stop
    // cuts it short and goes out next.
    let mut gateway = receiver(vec![Answer::Hang]).await;
    let metrics = Arc::new(Metrics::default());
    let mut pushes = Pushes::start(
        settings(&gateway.url, Duration::from_secs(5)),
        metrics.clone(),
    );
    send(&mut pushes, &ring);
    assert_eq!(checked(&gateway.next().await)["type"], "ring");
    send(&mut pushes, &stop);
    assert_eq!(checked(&gateway.next().await)["type"], "stop");
    settles(&metrics.pushes_sent, 1).await;
}

#[tokio::test]
async fn a_full_queue_drops_and_counts() {
    let (ring, _) = ring_and_stop();
    let metrics = Arc::new(Metrics::default());
    // A sender that never drains: a gateway that hangs, one request in
    // flight, a queue of 2.
    let gateway = receiver(vec![Answer::Hang; 10]).await;
    let mut s = settings(&gateway.url, Duration::from_secs(30));
    s.queue = 2;
    s.in_flight = 1;
    let mut pushes = Pushes::start(s, metrics.clone());
    for _ in 0..20 {
        pushes.note(&ring);
    }
    pushes.flush();
    // In flight 1, waiting for a permit 1, queued 2: at least 16 dropped.
    let dropped = metrics.pushes_dropped.load(Ordering::Relaxed);
    assert!((16..=18).contains(&dropped), "{dropped} dropped");
}
