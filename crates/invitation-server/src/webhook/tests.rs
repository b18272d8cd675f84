//! Signing and verifying, and delivery to a real HTTP receiver on
//! 127.0.0.1 port 0 (real time: the sockets are real; every wait has a
//! deadline).

use super::*;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use std::sync::Mutex;

pub(crate) const SECRET_NEW: &str = "whsec-new-0123456789abcdef0123456789";
pub(crate) const SECRET_OLD: &str = "whsec-old-0123456789abcdef0123456789";
pub(crate) const DEADLINE: Duration = Duration::from_secs(10);

#[test]
fn a_signature_verifies_with_either_secret_and_nothing_else() {
    let body = br#"{"id":"c.0","type":"call.invited"}"#;
    let header = sign(&[SECRET_NEW, SECRET_OLD], 1_700_000_000, body);
    assert!(header.starts_with("t=1700000000,v1="), "{header}");
    assert_eq!(header.matches(",v1=").count(), 2, "{header}");
    let five_min = Duration::from_secs(300);
    // Either secret alone verifies (a receiver mid-rotation).
    for secret in [SECRET_NEW, SECRET_OLD] {
        assert_eq!(
            verify(&[secret], Some(&header), body, 1_700_000_100, five_min),
            Ok(())
        );
    }
    // The same header over another body, or under another secret: no.
    assert_eq!(
        verify(&[SECRET_NEW], Some(&header), b"{}", 1_700_000_000, five_min),
        Err(VerifyError::NoMatch)
    );
    assert_eq!(
        verify(
            &["whsec-other-0123456789abcdef01234567"],
            Some(&header),
            body,
            1_700_000_000,
            five_min
        ),
        Err(VerifyError::NoMatch)
    );
    // Too old, or too far ahead.
    assert_eq!(
        verify(&[SECRET_NEW], Some(&header), body, 1_700_000_301, five_min),
        Err(VerifyError::Stale {
            timestamp: 1_700_000_000,
            age_s: 301
        })
    );
    assert!(matches!(
        verify(&[SECRET_NEW], Some(&header), body, 1_699_999_000, five_min),
        Err(VerifyError::Stale { age_s: 1000, .. })
    ));
    // A timestamp changed after signing: no signature matches.
    let moved = header.replacen("t=1700000000", "t=1700000001", 1);
    assert_eq!(
        verify(&[SECRET_NEW], Some(&moved), body, 1_700_000_000, five_min),
        Err(VerifyError::NoMatch)
    );
    assert_eq!(
        verify(&[SECRET_NEW], None, body, 1_700_000_000, five_min),
        Err(VerifyError::Missing)
    );
}

#[test]
fn malformed_headers_are_named() {
    let body = b"{}";
    let good = sign(&[SECRET_NEW], 100, body);
    let v1 = good.split_once(",v1=").unwrap().1.to_owned();
    let cases = [
        ("", "a part is not key=value"),
        ("t=100", "no v1 signature"),
        (&format!("v1={v1}") as &str, "no t="),
        (&format!("t=abc,v1={v1}"), "t is not unix seconds"),
        (&format!("t=100,t=100,v1={v1}"), "two timestamps"),
        ("t=100,v1=abcd", "a v1 signature is not 64 hex digits"),
        (
            &format!("t=100,v1={}", "zz".repeat(32)),
            "a v1 signature is not 64 hex digits",
        ),
        (
            &format!("t=100{}", format!(",v1={v1}").repeat(MAX_SIGNATURES + 1)),
            "too many signatures",
        ),
    ];
    for (header, why) in cases {
        assert_eq!(
            verify(
                &[SECRET_NEW],
                Some(header),
                body,
                100,
                Duration::from_secs(300)
            ),
            Err(VerifyError::Malformed(why)),
            "{header}"
        );
    }
    // Unknown schemes are skipped; the v1 still counts.
    let extended = format!("t=100,v0=old,v1={v1}");
    assert_eq!(
        verify(
            &[SECRET_NEW],
            Some(&extended),
            body,
            100,
            Duration::from_secs(300)
        ),
        Ok(())
    );
}

/// What the receiver does with each request, in turn; then `200`.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Answer {
    Status(u16),
    /// Answers nothing for a minute (longer than any attempt's timeout).
    Hang,
}

/// One request the receiver saw.
#[derive(Debug)]
pub(crate) struct Seen {
    pub(crate) signature: Option<String>,
    pub(crate) body: String,
}

/// A real HTTP receiver on 127.0.0.1 port 0 (also the push tests' gateway).
pub(crate) struct Receiver {
    pub(crate) url: String,
    seen: mpsc::UnboundedReceiver<Seen>,
}

pub(crate) async fn receiver(script: Vec<Answer>) -> Receiver {
    receiver_failing(script, None).await
}

/// A receiver that also answers 500 to every request whose body contains
/// `always_fail`.
async fn receiver_failing(script: Vec<Answer>, always_fail: Option<&'static str>) -> Receiver {
    let script = Arc::new(Mutex::new(script.into_iter()));
    let (tx, seen) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: String| {
            let script = script.clone();
            let tx = tx.clone();
            async move {
                let signature = headers
                    .get(SIGNATURE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let fails = always_fail.is_some_and(|f| body.contains(f));
                let _ = tx.send(Seen { signature, body });
                if fails {
                    return StatusCode::INTERNAL_SERVER_ERROR;
                }
                let answer = script.lock().unwrap().next();
                match answer {
                    Some(Answer::Hang) => {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        StatusCode::OK
                    }
                    Some(Answer::Status(s)) => StatusCode::from_u16(s).unwrap(),
                    None => StatusCode::OK,
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Receiver { url, seen }
}

impl Receiver {
    pub(crate) async fn next(&mut self) -> Seen {
        tokio::time::timeout(DEADLINE, self.seen.recv())
            .await
            .expect("a webhook request within the deadline")
            .expect("the receiver runs")
    }
}

fn fast(max_age: Duration) -> Delivery {
    Delivery {
        secrets: vec![SECRET_NEW.to_owned(), SECRET_OLD.to_owned()].into(),
        timeout: Duration::from_millis(300),
        max_age,
        first_retry: Duration::from_millis(10),
        max_retry: Duration::from_millis(40),
        queue: 16,
        tls: crate::tls::outbound_tls(None, false).expect("a TLS client configuration"),
    }
}

fn event(id: &str) -> HookEvent {
    HookEvent {
        id: id.to_owned(),
        created_ms: unix_ms_now(),
        body: json!({"id": id, "type": "call.invited"}).to_string(),
    }
}

fn checked(seen: &Seen) -> String {
    let now = unix_ms_now() / 1000;
    verify(
        &[SECRET_OLD],
        seen.signature.as_deref(),
        seen.body.as_bytes(),
        now,
        Duration::from_secs(300),
    )
    .unwrap_or_else(|e| panic!("{e}: {seen:?}"));
    let body: Value = serde_json::from_str(&seen.body).unwrap();
    body["id"].as_str().unwrap().to_owned()
}

/// Waits until `metric` reads `want` (the task counts just after the
/// receiver answered), failing with what it read.
pub(crate) async fn settles(metric: &std::sync::atomic::AtomicU64, want: u64) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let got = metric.load(Ordering::Relaxed);
        if got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "metric stuck at {got}, wanted {want}"
        );
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn events_arrive_signed_in_order_and_500s_are_retried_with_the_same_id() {
    let mut rx = receiver(vec![Answer::Status(500), Answer::Status(503)]).await;
    let metrics = Arc::new(Metrics::default());
    let mut hooks = Webhooks::start(
        std::slice::from_ref(&rx.url),
        fast(Duration::from_secs(60)),
        metrics.clone(),
    );
    hooks.pending.extend(["c1.0", "c1.1", "c1.2"].map(event));
    hooks.flush();
    let ids: Vec<String> = [
        rx.next().await,
        rx.next().await,
        rx.next().await,
        rx.next().await,
        rx.next().await,
    ]
    .iter()
    .map(checked)
    .collect();
    // Two failures of the first event, then it and the rest, in order.
    assert_eq!(ids, ["c1.0", "c1.0", "c1.0", "c1.1", "c1.2"]);
    settles(&metrics.webhooks_delivered, 3).await;
    assert_eq!(metrics.webhook_failed_attempts.load(Ordering::Relaxed), 2);
    assert_eq!(metrics.webhooks_dropped.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_receiver_that_hangs_times_out_and_gets_the_event_again() {
    let mut rx = receiver(vec![Answer::Hang]).await;
    let metrics = Arc::new(Metrics::default());
    let mut hooks = Webhooks::start(
        std::slice::from_ref(&rx.url),
        fast(Duration::from_secs(60)),
        metrics.clone(),
    );
    hooks.pending.extend(["c2.0", "c2.1"].map(event));
    hooks.flush();
    let ids: Vec<String> = [rx.next().await, rx.next().await, rx.next().await]
        .iter()
        .map(checked)
        .collect();
    assert_eq!(ids, ["c2.0", "c2.0", "c2.1"]);
    settles(&metrics.webhooks_delivered, 2).await;
    assert_eq!(metrics.webhook_failed_attempts.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn an_event_older_than_the_max_age_is_dropped_and_the_next_goes_on() {
    // The first event fails until it is too old (200 ms here), then the
    // queue moves on to the second.
    let mut rx = receiver_failing(Vec::new(), Some("\"c3.0\"")).await;
    let metrics = Arc::new(Metrics::default());
    let mut hooks = Webhooks::start(
        std::slice::from_ref(&rx.url),
        fast(Duration::from_millis(200)),
        metrics.clone(),
    );
    hooks.pending.extend(["c3.0", "c3.1"].map(event));
    hooks.flush();
    let mut ids = Vec::new();
    loop {
        let id = checked(&rx.next().await);
        ids.push(id.clone());
        if id == "c3.1" {
            break;
        }
    }
    // 10 + 20 + 40 + 40 ... ms apart within 200 ms: a handful of attempts
    // of the first event, then the second, once.
    let first = ids.len() - 1;
    assert!((3..=20).contains(&first), "{ids:?}");
    assert!(ids[..first].iter().all(|id| id == "c3.0"), "{ids:?}");
    settles(&metrics.webhooks_delivered, 1).await;
    assert_eq!(metrics.webhooks_dropped.load(Ordering::Relaxed), 1);
    assert_eq!(
        metrics.webhook_failed_attempts.load(Ordering::Relaxed),
        first as u64
    );
}

/// The queue per endpoint is bounded: on a single-threaded runtime the
/// delivery task has not run yet when the hub flushes, so exactly
/// `queue` events wait and the rest are dropped and counted.
#[tokio::test(flavor = "current_thread")]
async fn the_queue_per_endpoint_is_bounded() {
    let metrics = Arc::new(Metrics::default());
    let mut delivery = fast(Duration::from_secs(60));
    delivery.queue = 2;
    let urls = [
        "http://127.0.0.1:9/a".to_owned(),
        "http://127.0.0.1:9/b".to_owned(),
    ];
    let mut hooks = Webhooks::start(&urls, delivery, metrics.clone());
    hooks
        .pending
        .extend(["c4.0", "c4.1", "c4.2", "c4.3", "c4.4"].map(event));
    hooks.flush();
    // 3 dropped per endpoint.
    assert_eq!(metrics.webhooks_dropped.load(Ordering::Relaxed), 6);
    assert!(hooks.pending.is_empty());
}

/// Ids depend only on the call, the milestone and its repeats: a second
/// run making the same notices makes the same ids; a repeated milestone
/// (the same user joining twice) gets a new one; the call's memory goes
/// with its `ended`.
#[test]
fn event_ids_are_deterministic_per_call_and_milestone() {
    let call = CallId::new("c-1").unwrap();
    let user = |u: &str| invitation_core::UserId::new(u).unwrap();
    let notices = [
        CallNotice::Joined {
            call_id: call.clone(),
            user: user("dan"),
        },
        CallNotice::Left {
            call_id: call.clone(),
            user: user("dan"),
        },
        CallNotice::Joined {
            call_id: call.clone(),
            user: user("dan"),
        },
        CallNotice::Joined {
            call_id: call.clone(),
            user: user("eve"),
        },
    ];
    let run = |events: &mut Events| -> Vec<(String, String)> {
        notices
            .iter()
            .map(|n| {
                let e = events.make(n, 1_000).unwrap();
                let body: Value = serde_json::from_str(&e.body).unwrap();
                assert_eq!(body["id"], e.id.as_str());
                assert_eq!(body["created_at"], 1_000);
                assert_eq!(body["call_id"], "c-1");
                (body["type"].as_str().unwrap().to_owned(), e.id)
            })
            .collect()
    };
    let mut first = Events::default();
    let a = run(&mut first);
    let b = run(&mut Events::default());
    assert_eq!(a, b);
    let types: Vec<&str> = a.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "call.participant_joined",
            "call.participant_left",
            "call.participant_joined",
            "call.participant_joined"
        ]
    );
    let mut ids: Vec<&str> = a.iter().map(|(_, id)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 4, "{a:?}");
    assert_eq!(first.seen.len(), 1);
    let ended = first
        .make(
            &CallNotice::Ended {
                call_id: call.clone(),
                reason: invitation_core::Reason::HungUp,
                caller: user("alice"),
                callees: Vec::new().into(),
            },
            2_000,
        )
        .unwrap();
    assert!(
        ended.body.contains(r#""type":"call.ended""#),
        "{}",
        ended.body
    );
    assert!(first.seen.is_empty(), "the call's memory went with it");
}
