//! Webhooks end to end: a server on 127.0.0.1 port 0 whose call events go
//! to a real HTTP receiver on another port 0; real WebSocket clients and
//! the HTTP API make the calls. Every request's signature is checked with
//! the crate's own `webhook::verify`.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::*;
use invitation_core::RequestId;
use invitation_core::protocol::{ClientMessage, Command, Event, ServerBody};
use invitation_server::RunningServer;
use invitation_server::webhook::{SIGNATURE_HEADER, verify};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const KEY: &str = "api-key-hooks-0123456789abcdef012345";
const SECRET_NEW: &str = "whsec-new-0123456789abcdef0123456789";
const SECRET_OLD: &str = "whsec-old-0123456789abcdef0123456789";

/// A receiver on 127.0.0.1:0 that answers 200 and passes on each
/// request's signature header and body.
async fn receiver() -> (String, mpsc::UnboundedReceiver<(Option<String>, String)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: String| {
            let tx = tx.clone();
            async move {
                let signature = headers
                    .get(SIGNATURE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let _ = tx.send((signature, body));
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

/// The next event, its signature verified (the receiver knows only the
/// second secret: a receiver mid-rotation).
async fn next_event(rx: &mut mpsc::UnboundedReceiver<(Option<String>, String)>) -> Value {
    let (signature, body) = tokio::time::timeout(SOON, rx.recv())
        .await
        .expect("a webhook within the deadline")
        .expect("the receiver runs");
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    verify(
        &[SECRET_OLD],
        signature.as_deref(),
        body.as_bytes(),
        now,
        Duration::from_secs(300),
    )
    .unwrap_or_else(|e| panic!("{e}: {signature:?} {body}"));
    serde_json::from_str(&body).unwrap()
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

/// (type, id, data) of each event, for exact comparison.
fn brief(event: &Value) -> (String, String, Value) {
    (
        event["type"].as_str().unwrap().to_owned(),
        event["id"].as_str().unwrap().to_owned(),
        event["data"].clone(),
    )
}

/// A call answered then hung up, and a call canceled by the backend: each
/// milestone arrives once, signed, in order, with ids `<call>.<index>`
/// and the data of who did what.
#[tokio::test]
async fn every_call_milestone_arrives_signed_and_in_order() {
    let (url, mut rx) = receiver().await;
    let srv = hooked_server(&url).await;
    let (mut bob, _) = Raw::hello(&srv, "bob", "bob-phone", None).await;

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
    for _ in 0..5 {
        let event = next_event(&mut rx).await;
        assert_eq!(event["call_id"], call.as_str(), "{event}");
        assert!(event["created_at"].as_u64().unwrap() > 1_700_000_000_000);
        got.push(brief(&event));
    }
    let id = |i: u32| format!("{call}.{i}");
    assert_eq!(
        got,
        [
            (
                "call.invited".into(),
                id(0),
                json!({"caller": "alice", "device": "backend", "callees": ["bob"]})
            ),
            (
                "call.ringing".into(),
                id(1),
                json!({"caller": "alice", "callee": "bob"})
            ),
            (
                "call.accepted".into(),
                id(2),
                json!({"caller": "alice", "callee": "bob", "reason": "accepted", "device": "bob-phone"})
            ),
            (
                "call.hung_up".into(),
                id(3),
                json!({"caller": "alice", "user": "bob", "device": "bob-phone"})
            ),
            (
                "call.ended".into(),
                id(4),
                json!({"caller": "alice", "callees": ["bob"], "reason": "hung_up"})
            ),
        ]
    );

    // Carol is offline: her invitation is held (no ringing) until the
    // backend cancels it.
    let second = start_call(&srv, "alice", "carol").await;
    let resp = tokio::time::timeout(
        SOON,
        reqwest::Client::new()
            .delete(api(&srv, &format!("/v1/calls/{second}")))
            .bearer_auth(KEY)
            .send(),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(resp.status().is_success(), "{}", resp.status());
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(brief(&next_event(&mut rx).await));
    }
    let id = |i: u32| format!("{second}.{i}");
    assert_eq!(
        got,
        [
            (
                "call.invited".into(),
                id(0),
                json!({"caller": "alice", "device": "backend", "callees": ["carol"]})
            ),
            (
                "call.canceled".into(),
                id(1),
                json!({"caller": "alice", "callee": "carol", "reason": "canceled", "device": null})
            ),
            (
                "call.ended".into(),
                id(2),
                json!({"caller": "alice", "callees": ["carol"], "reason": "canceled"})
            ),
        ]
    );
    // Counted once the receiver's answer is read (just after it saw the
    // request).
    let delivered = || {
        srv.metrics
            .webhooks_delivered
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let deadline = tokio::time::Instant::now() + SOON;
    while delivered() != 8 {
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
