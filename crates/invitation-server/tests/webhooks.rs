//! Webhooks end to end: a server on 127.0.0.1 port 0 whose call events go
//! to a real HTTP receiver on another port 0; real WebSocket clients and
//! the HTTP API make the calls. Every request's signature is checked with
//! the crate's own `webhook::verify`.

mod common;

use std::time::Duration;

use common::*;
use invitation_core::RequestId;
use invitation_core::protocol::{ClientMessage, Command, Event, ServerBody};
use invitation_server::RunningServer;
use serde_json::{Value, json};

const KEY: &str = "api-key-hooks-0123456789abcdef012345";
const SECRET_NEW: &str = "whsec-new-0123456789abcdef0123456789";
const SECRET_OLD: &str = "whsec-old-0123456789abcdef0123456789";

/// The next event, its signature verified (the receiver knows only the
/// second secret: a receiver mid-rotation).
async fn next_event(rx: &mut Signed) -> Value {
    next_signed(rx, SECRET_OLD).await
}

async fn hooked_server(url: &str) -> RunningServer {
    server(|c| {
        c.api_listen = "127.0.0.1:0".parse().unwrap();
        c.api_keys = vec![KEY.to_owned()];
        c.api_rate_per_key = 1000.0;
        c.api_burst_per_key = 1000.0;
        c.webhook_urls = vec![url.to_owned()];
        c.webhook_secrets = vec![SECRET_NEW.to_owned(), SECRET_OLD.to_owned()];
    })
    .await
}

fn api(srv: &RunningServer, path: &str) -> String {
    format!("http://{}{path}", srv.api_addr.expect("the API is on"))
}

/// The backend cancels `call` through the API (`DELETE /v1/calls/{id}`).
async fn cancel_call(srv: &RunningServer, call: &str) {
    let resp = tokio::time::timeout(
        SOON,
        reqwest::Client::new()
            .delete(api(srv, &format!("/v1/calls/{call}")))
            .bearer_auth(KEY)
            .send(),
    )
    .await
    .expect("answered in time")
    .expect("an HTTP answer");
    assert!(resp.status().is_success(), "{}", resp.status());
}

async fn start_call(srv: &RunningServer, caller: &str, callee: &str) -> String {
    let resp = tokio::time::timeout(
        SOON,
        reqwest::Client::new()
            .post(api(srv, "/v1/calls"))
            .bearer_auth(KEY)
            .json(&json!({"caller": caller, "callees": [callee], "call_type": "voice"}))
            .send(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::CREATED);
    let body: Value = resp.json().await.unwrap();
    body["call_id"].as_str().unwrap().to_owned()
}

/// (type, data) of each event, for exact comparison; its id goes to `ids`.
fn brief(event: &Value, ids: &mut Vec<String>) -> (String, Value) {
    let id = event["id"].as_str().unwrap();
    assert!(
        id.len() == 36 && id.starts_with("evt_"),
        "an id of evt_ and 32 hex digits: {id}"
    );
    ids.push(id.to_owned());
    (
        event["type"].as_str().unwrap().to_owned(),
        event["data"].clone(),
    )
}

/// A call answered then hung up, and a call canceled by the backend: each
/// milestone arrives once, signed, in order, each with an id of its own
/// and the data of who did what.
#[tokio::test]
async fn every_call_milestone_arrives_signed_and_in_order() {
    let (url, mut rx) = receiver().await;
    let srv = hooked_server(&url).await;
    let (mut bob, _) = Raw::hello(&srv, "bob", "bob-phone", None).await;
    let mut ids = Vec::new();

    let call = start_call(&srv, "alice", "bob").await;
    bob.until(|b| {
        matches!(
            b,
            ServerBody::Event {
                event: Event::IncomingCall { .. },
                ..
            }
        )
    })
    .await;
    // The phone confirms it has the invitation (a receipt, never answered).
    bob.send(&ClientMessage::new(
        RequestId::new("r1").unwrap(),
        Command::Received {
            call_id: invitation_core::CallId::new(call.as_str()).unwrap(),
        },
    ))
    .await;
    bob.send(&ClientMessage::new(
        RequestId::new("a1").unwrap(),
        Command::Accept {
            call_id: invitation_core::CallId::new(call.as_str()).unwrap(),
            custom_data: None,
        },
    ))
    .await;
    bob.until(|b| b.success().is_some()).await;
    bob.send(&ClientMessage::new(
        RequestId::new("h1").unwrap(),
        Command::HangUp {
            call_id: invitation_core::CallId::new(call.as_str()).unwrap(),
            custom_data: None,
        },
    ))
    .await;
    let mut got = Vec::new();
    for _ in 0..6 {
        let event = next_event(&mut rx).await;
        assert_eq!(event["call_id"], call.as_str(), "{event}");
        assert!(event["created_at"].as_u64().unwrap() > 1_700_000_000_000);
        got.push(brief(&event, &mut ids));
    }
    assert_eq!(
        got,
        [
            (
                "call.invited".into(),
                json!({"caller": "alice", "device": "backend", "callees": ["bob"]})
            ),
            (
                "call.ringing".into(),
                json!({"caller": "alice", "callee": "bob"})
            ),
            (
                "call.delivered".into(),
                json!({"caller": "alice", "callee": "bob", "device": "bob-phone"})
            ),
            (
                "call.accepted".into(),
                json!({"caller": "alice", "callee": "bob", "reason": "accepted", "device": "bob-phone"})
            ),
            (
                "call.hung_up".into(),
                json!({"caller": "alice", "user": "bob", "device": "bob-phone"})
            ),
            (
                "call.ended".into(),
                json!({"caller": "alice", "callees": ["bob"], "reason": "hung_up"})
            ),
        ]
    );

    // Carol is offline: her invitation is held (no ringing) until the
    // backend cancels it.
    let second = start_call(&srv, "alice", "carol").await;
    cancel_call(&srv, &second).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(brief(&next_event(&mut rx).await, &mut ids));
    }
    assert_eq!(
        got,
        [
            (
                "call.invited".into(),
                json!({"caller": "alice", "device": "backend", "callees": ["carol"]})
            ),
            (
                "call.canceled".into(),
                json!({"caller": "alice", "callee": "carol", "reason": "canceled", "device": null})
            ),
            (
                "call.ended".into(),
                json!({"caller": "alice", "callees": ["carol"], "reason": "canceled"})
            ),
        ]
    );
    let mut distinct = ids.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 9, "{ids:?}");
    // Counted once the receiver's answer is read (just after it saw the
    // request).
    let delivered = || {
        srv.metrics
            .webhooks_delivered
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let deadline = tokio::time::Instant::now() + SOON;
    while delivered() != 9 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} delivered",
            delivered()
        );
        tokio::task::yield_now().await;
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(50), rx.recv())
            .await
            .is_err(),
        "no event beyond the eight"
    );
    srv.stop().await;
}

/// A receiver that answers 503 while `open` is false, 204 after.
async fn gated_receiver(open: std::sync::Arc<std::sync::atomic::AtomicBool>) -> (String, Signed) {
    let (app, rx) = signed_router(move || open.load(std::sync::atomic::Ordering::SeqCst));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

/// At least once across a restart: a durable server writes a call's
/// events to its outbox while the receiver answers 503, and stops; the
/// next run on the same data directory delivers all of them, in order,
/// the first with the id the receiver already saw.
#[tokio::test]
async fn events_not_delivered_before_a_stop_are_delivered_after_the_restart() {
    let tmp = TempDir::new("webhooks");
    let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (url, mut rx) = gated_receiver(open.clone()).await;
    let durable = |c: &mut invitation_server::Config| {
        c.api_listen = "127.0.0.1:0".parse().unwrap();
        c.api_keys = vec![KEY.to_owned()];
        c.api_rate_per_key = 1000.0;
        c.api_burst_per_key = 1000.0;
        c.webhook_urls = vec![url.clone()];
        c.webhook_secrets = vec![SECRET_NEW.to_owned(), SECRET_OLD.to_owned()];
        c.data_dir = Some(tmp.0.clone());
    };
    let first = server(durable).await;
    let call = start_call(&first, "alice", "carol").await;
    cancel_call(&first, &call).await;
    // The first event was tried (and refused with 503).
    let refused = next_event(&mut rx).await;
    assert_eq!(refused["type"], "call.invited");
    assert_eq!(refused["call_id"], call.as_str());
    first.stop().await;
    let outbox = std::fs::read_to_string(tmp.0.join("webhooks/outbox-000000000001.jsonl")).unwrap();
    assert_eq!(outbox.lines().count(), 3, "{outbox}");

    open.store(true, std::sync::atomic::Ordering::SeqCst);
    let second = server(durable).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        let event = next_event(&mut rx).await;
        assert_eq!(event["call_id"], call.as_str(), "{event}");
        got.push((
            event["type"].as_str().unwrap().to_owned(),
            event["id"].clone(),
        ));
    }
    let types: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["call.invited", "call.canceled", "call.ended"]);
    assert_eq!(got[0].1, refused["id"], "the same event, the same id");
    // Each written line was delivered as it was written.
    let lines: Vec<Value> = outbox
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let written: Vec<&Value> = lines.iter().map(|l| &l["id"]).collect();
    let sent: Vec<&Value> = got.iter().map(|(_, id)| id).collect();
    assert_eq!(written, sent);
    // The cursor moved to the end: a third run sends nothing again.
    let delivered = || {
        second
            .metrics
            .webhooks_delivered
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let deadline = tokio::time::Instant::now() + SOON;
    while delivered() != 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} delivered",
            delivered()
        );
        tokio::task::yield_now().await;
    }
    second.stop().await;
    let cursors: Vec<String> = std::fs::read_dir(tmp.0.join("webhooks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("cursor-"))
        .collect();
    assert_eq!(cursors.len(), 1, "{cursors:?}");
    let cursor = std::fs::read_to_string(tmp.0.join("webhooks").join(&cursors[0])).unwrap();
    assert_eq!(cursor.trim(), format!("1 {}", outbox.len()));
}
