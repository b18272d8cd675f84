//! Push end to end: a server on 127.0.0.1 port 0 whose push gateway is a
//! real HTTP receiver on another port 0. Devices register over the
//! protocol and through the HTTP API; callers ring them while they are
//! offline or in the background; every request's signature is checked with
//! the crate's own `webhook::verify`, and its ring time and collapse id
//! with the call's.

mod common;

use common::*;
use invitation_core::protocol::{ClientMessage, Command, Event, ServerBody};
use invitation_core::{CallId, RequestId};
use invitation_server::RunningServer;
use serde_json::{Value, json};

const KEY: &str = "api-key-push-0123456789abcdef0123456";
const PUSH_NEW: &str = "push-new-0123456789abcdef0123456789";
const PUSH_OLD: &str = "push-old-0123456789abcdef0123456789";

async fn push_server(gateway: &str) -> RunningServer {
    server(|c| {
        c.api_listen = "127.0.0.1:0".parse().unwrap();
        c.api_keys = vec![KEY.to_owned()];
        c.api_rate_per_key = 1000.0;
        c.api_burst_per_key = 1000.0;
        c.push_gateway_url = Some(gateway.to_owned());
        c.push_secrets = vec![PUSH_NEW.to_owned(), PUSH_OLD.to_owned()];
    })
    .await
}

fn api(srv: &RunningServer, path: &str) -> String {
    format!("http://{}{path}", srv.api_addr.expect("the API is on"))
}

/// The HTTP status of an API request.
async fn status(req: reqwest::RequestBuilder) -> u16 {
    tokio::time::timeout(SOON, req.bearer_auth(KEY).send())
        .await
        .expect("answered in time")
        .expect("an HTTP answer")
        .status()
        .as_u16()
}

async fn command(raw: &mut Raw, id: &str, command: Command) -> ServerBody {
    raw.send(&ClientMessage::new(RequestId::new(id).unwrap(), command))
        .await;
    raw.until(|b| {
        matches!(b, ServerBody::Reply { .. } | ServerBody::Error { .. }) || b.success().is_some()
    })
    .await
    .body
}

/// Registers push credentials over the protocol, then hangs up.
async fn register_and_leave(srv: &RunningServer, user: &str, device: &str, token: &str) {
    let (mut raw, _) = Raw::hello(srv, user, device, None).await;
    let reg: Command = serde_json::from_value(
        json!({"type": "register_push", "platform": "apns", "token": token}),
    )
    .unwrap();
    let answer = command(&mut raw, "p1", reg).await;
    assert!(answer.success().is_some(), "{answer:?}");
}

/// Invites; `id` is the request id (a repeated one is answered from memory).
async fn invite(raw: &mut Raw, id: &str, callees: &[&str], timeout_s: u32) -> String {
    let invite: Command = serde_json::from_value(
        json!({"type": "invite", "callees": callees, "call_type": "voice", "timeout_s": timeout_s}),
    )
    .unwrap();
    raw.send(&ClientMessage::new(RequestId::new(id).unwrap(), invite))
        .await;
    let m = raw.until(|b| b.success().is_some()).await;
    match m.body.success() {
        Some((_, invitation_core::protocol::ReplyResult::Invited { call_id, .. })) => {
            call_id.to_string()
        }
        other => panic!("{other:?}"),
    }
}

/// (type, user, device, token, ttl_ms, reason) of the next `n` pushes,
/// sorted (one input's pushes to several devices go out concurrently),
/// each checked to be about `call` with the call as its collapse id.
async fn next_pushes(
    rx: &mut Signed,
    n: usize,
    call: &str,
) -> Vec<(String, String, String, String, u64, String)> {
    let mut got = Vec::new();
    for _ in 0..n {
        let p: Value = next_signed(rx, PUSH_OLD).await;
        assert_eq!(p["call_id"], call, "{p}");
        assert_eq!(p["collapse_id"], call, "{p}");
        assert_eq!(
            p["expires_at"].as_u64().unwrap() - p["created_at"].as_u64().unwrap(),
            p["ttl_ms"].as_u64().unwrap()
        );
        got.push((
            p["type"].as_str().unwrap().to_owned(),
            p["user"].as_str().unwrap().to_owned(),
            p["device"].as_str().unwrap().to_owned(),
            p["token"].as_str().unwrap().to_owned(),
            p["ttl_ms"].as_u64().unwrap(),
            p["reason"].as_str().unwrap_or("").to_owned(),
        ));
    }
    got.sort();
    got
}

fn push(
    kind: &str,
    user: &str,
    device: &str,
    token: &str,
    ttl_ms: u64,
    reason: &str,
) -> (String, String, String, String, u64, String) {
    (
        kind.into(),
        user.into(),
        device.into(),
        token.into(),
        ttl_ms,
        reason.into(),
    )
}

/// Bob registered his phone over the protocol, Carol her tablet through
/// the API; both are offline. Alice rings both: one ring push each, with
/// the whole 30 s to live; her cancel sends each a stop with the reason.
#[tokio::test]
async fn offline_devices_get_a_ring_and_then_a_stop() {
    let (url, mut gateway) = receiver().await;
    let srv = push_server(&url).await;
    register_and_leave(&srv, "bob", "phone", "tok-bob").await;
    let http = reqwest::Client::new();
    let put = http
        .put(api(&srv, "/v1/users/carol/devices/tablet/push"))
        .json(&json!({"platform": "fcm", "token": "tok-carol"}));
    assert_eq!(status(put).await, 204);

    let (mut alice, _) = Raw::hello(&srv, "alice", "laptop", None).await;
    let call = invite(&mut alice, "inv1", &["bob", "carol"], 30).await;
    assert_eq!(
        next_pushes(&mut gateway, 2, &call).await,
        vec![
            push("ring", "bob", "phone", "tok-bob", 30_000, ""),
            push("ring", "carol", "tablet", "tok-carol", 30_000, ""),
        ]
    );
    let cancel = Command::cancel(CallId::new(call.as_str()).unwrap());
    command(&mut alice, "c1", cancel).await;
    let stops = next_pushes(&mut gateway, 2, &call).await;
    for (stop, who) in stops.iter().zip(["bob", "carol"]) {
        assert_eq!((stop.0.as_str(), stop.1.as_str()), ("stop", who));
        assert_eq!(stop.5, "canceled");
        // What was left of the ring: the cancel came within the deadline.
        assert!(
            stop.4 > 30_000 - SOON.as_millis() as u64 && stop.4 <= 30_000,
            "{stop:?}"
        );
    }
    srv.stop().await;
}

/// A device in the background rings over its socket and its user is
/// pushed too; when it answers, the pushed phone is told to stop (the
/// device that answered is not). A device in the foreground means no push.
#[tokio::test]
async fn a_backgrounded_device_answers_and_the_pushed_phone_stops() {
    let (url, mut gateway) = receiver().await;
    let srv = push_server(&url).await;
    register_and_leave(&srv, "bob", "phone", "tok-phone").await;
    let (mut laptop, _) = Raw::hello(&srv, "bob", "laptop", None).await;
    let (mut alice, _) = Raw::hello(&srv, "alice", "laptop", None).await;

    // In the foreground: no push; alice cancels.
    let call = invite(&mut alice, "inv2", &["bob"], 30).await;
    command(
        &mut alice,
        "c1",
        Command::cancel(CallId::new(call.as_str()).unwrap()),
    )
    .await;

    let background: Command =
        serde_json::from_value(json!({"type": "app_state", "background": true})).unwrap();
    let answer = command(&mut laptop, "bg", background).await;
    assert!(answer.success().is_some(), "{answer:?}");
    let call = invite(&mut alice, "inv3", &["bob"], 20).await;
    // The first push the gateway sees is this call's: none came for the
    // call rung while the laptop was in the foreground.
    assert_eq!(
        next_pushes(&mut gateway, 1, &call).await,
        vec![push("ring", "bob", "phone", "tok-phone", 20_000, "")]
    );
    laptop
        .until(|b| {
            matches!(
                b,
                ServerBody::Event {
                    event: Event::IncomingCall { .. },
                    ..
                }
            )
        })
        .await;
    command(
        &mut laptop,
        "a1",
        Command::accept(CallId::new(call.as_str()).unwrap()),
    )
    .await;
    let stop = next_pushes(&mut gateway, 1, &call).await;
    assert_eq!(
        (stop[0].0.as_str(), stop[0].2.as_str(), stop[0].5.as_str()),
        ("stop", "phone", "accepted")
    );
    srv.stop().await;
}

/// The API lists, replaces and forgets registrations, refusing bad ones
/// with the documented codes; a forgotten device is not pushed.
#[tokio::test]
async fn the_api_manages_registrations_and_refuses_bad_ones() {
    let (url, mut gateway) = receiver().await;
    let srv = push_server(&url).await;
    let http = reqwest::Client::new();
    let path = |d: &str| api(&srv, &format!("/v1/users/dave/devices/{d}/push"));
    for (device, token) in [("a", "t-a"), ("b", "t-b"), ("a", "t-a2")] {
        let put = http
            .put(path(device))
            .json(&json!({"platform": "web_push", "token": token}));
        assert_eq!(status(put).await, 204);
    }
    let list = |http: &reqwest::Client| {
        http.get(api(&srv, "/v1/users/dave/push"))
            .bearer_auth(KEY)
            .send()
    };
    let listed: Value = list(&http).await.unwrap().json().await.unwrap();
    assert_eq!(
        listed,
        json!({"devices": [
            {"device": "b", "platform": "web_push", "token": "t-b"},
            {"device": "a", "platform": "web_push", "token": "t-a2"},
        ]})
    );

    // Refusals: each with its status and code, nothing changed.
    let refused = [
        (
            json!({"platform": "apns", "token": ""}),
            "a",
            400,
            "invalid",
        ),
        (
            json!({"platform": "apns", "token": "a\u{0}b"}),
            "a",
            400,
            "invalid",
        ),
        (
            json!({"platform": "apns", "token": "x".repeat(4097)}),
            "a",
            400,
            "invalid",
        ),
        (
            json!({"platform": "pager", "token": "t"}),
            "a",
            400,
            "bad_request",
        ),
        (
            json!({"platform": "apns", "token": "t", "extra": 1}),
            "a",
            400,
            "bad_request",
        ),
        (
            json!({"platform": "apns", "token": "t"}),
            "backend",
            400,
            "invalid",
        ),
    ];
    for (body, device, want, code) in refused {
        let resp = http
            .put(path(device))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), want, "{body}");
        let err: Value = resp.json().await.unwrap();
        assert_eq!(err["error"]["code"], code, "{body}: {err}");
    }
    assert_eq!(status(http.put(path("a")).body("{}")).await, 415);
    assert_eq!(
        reqwest::Client::new()
            .put(path("a"))
            .json(&json!({"platform": "apns", "token": "t"}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16(),
        401
    );
    let after: Value = list(&http).await.unwrap().json().await.unwrap();
    assert_eq!(after, listed);

    // Forget "b": only "a" is pushed.
    assert_eq!(status(http.delete(path("b"))).await, 204);
    let (mut alice, _) = Raw::hello(&srv, "alice", "laptop", None).await;
    let call = invite(&mut alice, "inv4", &["dave"], 15).await;
    assert_eq!(
        next_pushes(&mut gateway, 1, &call).await,
        vec![push("ring", "dave", "a", "t-a2", 15_000, "")]
    );
    srv.stop().await;
}

/// A ring that nobody answers ends in a timeout: the stop says so, with
/// nothing left to live for.
#[tokio::test]
async fn a_timed_out_ring_is_stopped_with_reason_timeout() {
    let (url, mut gateway) = receiver().await;
    let srv = push_server(&url).await;
    register_and_leave(&srv, "bob", "phone", "tok").await;
    let (mut alice, _) = Raw::hello(&srv, "alice", "laptop", None).await;
    let call = invite(&mut alice, "inv5", &["bob"], 1).await;
    assert_eq!(
        next_pushes(&mut gateway, 1, &call).await,
        vec![push("ring", "bob", "phone", "tok", 1_000, "")]
    );
    assert_eq!(
        next_pushes(&mut gateway, 1, &call).await,
        vec![push("stop", "bob", "phone", "tok", 0, "timeout")]
    );
    srv.stop().await;
}

/// Registrations and "who was pushed" live in the durable state: after a
/// restart of a durable server mid-ring, the caller's cancel still stops
/// the pushed phone, and a new call still pushes it.
#[tokio::test]
async fn a_restart_mid_ring_keeps_registrations_and_the_stop() {
    let (url, mut gateway) = receiver().await;
    let tmp = TempDir::new("push");
    let durable = |c: &mut invitation_server::Config| {
        c.push_gateway_url = Some(url.clone());
        c.push_secrets = vec![PUSH_NEW.to_owned()];
        c.data_dir = Some(tmp.0.clone());
    };
    let first = server(durable).await;
    register_and_leave(&first, "bob", "phone", "tok").await;
    let (mut alice, _) = Raw::hello(&first, "alice", "laptop", None).await;
    let call = invite(&mut alice, "inv6", &["bob"], 60).await;
    let ring = next_signed(&mut gateway, PUSH_NEW).await;
    assert_eq!(
        (ring["type"].as_str(), ring["call_id"].as_str()),
        (Some("ring"), Some(call.as_str()))
    );
    drop(alice);
    first.stop().await;

    let second = server(durable).await;
    let (mut alice, _) = Raw::hello(&second, "alice", "laptop", None).await;
    command(
        &mut alice,
        "c6",
        Command::cancel(CallId::new(call.as_str()).unwrap()),
    )
    .await;
    let stop = next_signed(&mut gateway, PUSH_NEW).await;
    assert_eq!(
        (
            stop["type"].as_str(),
            stop["call_id"].as_str(),
            stop["token"].as_str(),
            stop["reason"].as_str()
        ),
        (
            Some("stop"),
            Some(call.as_str()),
            Some("tok"),
            Some("canceled")
        )
    );
    let next = invite(&mut alice, "inv7", &["bob"], 10).await;
    let ring = next_signed(&mut gateway, PUSH_NEW).await;
    assert_eq!(
        (
            ring["type"].as_str(),
            ring["call_id"].as_str(),
            ring["ttl_ms"].as_u64()
        ),
        (Some("ring"), Some(next.as_str()), Some(10_000))
    );
    second.stop().await;
}

/// The Rust client registers and says it went to the background: its own
/// connected device is then pushed as well as rung over the socket.
#[tokio::test]
async fn the_rust_client_registers_and_goes_to_the_background() {
    use invitation::transport::ws::WsTransport;
    use invitation::{Client, ClientError};

    let (url, mut gateway) = receiver().await;
    let srv = push_server(&url).await;
    let bob = Client::builder()
        .user(invitation_core::User::named("bob", "Bob"))
        .device("pixel")
        .token(srv.token("bob", "Bob"))
        .transport(WsTransport::new(srv.url()))
        .build()
        .unwrap();
    tokio::time::timeout(SOON, bob.connect())
        .await
        .unwrap()
        .unwrap();
    let empty = bob
        .register_push(invitation_core::protocol::PushPlatform::Fcm, "")
        .await;
    assert!(matches!(empty, Err(ClientError::Invalid(_))), "{empty:?}");
    tokio::time::timeout(
        SOON,
        bob.register_push(invitation_core::protocol::PushPlatform::Fcm, "fcm-tok"),
    )
    .await
    .unwrap()
    .unwrap();
    tokio::time::timeout(SOON, bob.set_background(true))
        .await
        .unwrap()
        .unwrap();

    let (mut alice, _) = Raw::hello(&srv, "alice", "laptop", None).await;
    let call = invite(&mut alice, "inv8", &["bob"], 30).await;
    assert_eq!(
        next_pushes(&mut gateway, 1, &call).await,
        vec![push("ring", "bob", "pixel", "fcm-tok", 30_000, "")]
    );
    bob.close().await;
    srv.stop().await;
}
