//! The HTTP API over real HTTP: a server on 127.0.0.1 port 0 with its API
//! on a second port 0, and a reqwest client. Every refusal is checked by
//! status and error code; every answer by its data, against what real
//! WebSocket clients did.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use invitation_core::protocol::{
    ClientMessage, Command, Event, InviteRequest, ReplyResult, ServerBody,
};
use invitation_core::{CallId, CallRecord, CallType, DeviceId, Reason, RequestId, UserId};
use invitation_server::{Config, RecordStore, RunningServer};
use reqwest::StatusCode;
use serde_json::{Value, json};

const KEY_A: &str = "api-key-a-0123456789abcdef0123456789";
const KEY_B: &str = "api-key-b-0123456789abcdef0123456789";
const KEY_OLD: &str = "api-key-old-0123456789abcdef01234567";

/// A server whose API is on, with keys A and B.
async fn api_server(tweak: impl FnOnce(&mut Config)) -> RunningServer {
    server(|c| {
        c.api_listen = "127.0.0.1:0".parse().unwrap();
        c.api_keys = vec![KEY_A.to_owned(), KEY_B.to_owned()];
        c.api_rate_per_key = 1000.0;
        c.api_burst_per_key = 1000.0;
        tweak(c);
    })
    .await
}

fn base(srv: &RunningServer) -> String {
    format!("http://{}", srv.api_addr.expect("the API is on"))
}

/// A request with a deadline; returns the status, the `Retry-After`
/// header and the JSON body (`Null` when it is not JSON).
async fn send(req: reqwest::RequestBuilder) -> (StatusCode, Option<String>, Value) {
    let resp = tokio::time::timeout(SOON, req.send())
        .await
        .expect("answered in time")
        .expect("an HTTP answer");
    let status = resp.status();
    let retry = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let text = tokio::time::timeout(SOON, resp.text())
        .await
        .expect("body in time")
        .expect("a body");
    (
        status,
        retry,
        serde_json::from_str(&text).unwrap_or(Value::Null),
    )
}

async fn get(srv: &RunningServer, path: &str, key: &str) -> (StatusCode, Value) {
    let req = reqwest::Client::new()
        .get(format!("{}{path}", base(srv)))
        .bearer_auth(key);
    let (s, _, v) = send(req).await;
    (s, v)
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no code>")
}

/// Asserts an error answer: the status and the stable code, and a message.
#[track_caller]
fn refused(got: (StatusCode, Value), status: StatusCode, expected: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(code(&got.1), expected, "{}", got.1);
    assert!(
        got.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        got.1
    );
}

fn rid(s: &str) -> RequestId {
    RequestId::new(s).unwrap()
}

/// No key, a wrong key, a key of another scheme: 401 `unauthorized`, all
/// alike. Both configured keys work; a key that was removed from the
/// configuration (rotated out) does not.
#[tokio::test]
async fn keys_are_checked_and_rotate() {
    let srv = api_server(|_| {}).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/users/alice/presence", base(&srv));
    let (s, _, body) = send(client.get(&url)).await;
    refused((s, body), StatusCode::UNAUTHORIZED, "unauthorized");
    refused(
        get(&srv, "/v1/users/alice/presence", "not-a-key").await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    // The right key, but not as a bearer token.
    let (s, _, body) = send(client.get(&url).header("authorization", KEY_A)).await;
    refused((s, body), StatusCode::UNAUTHORIZED, "unauthorized");
    // A configured key with one byte changed.
    let mut near = KEY_A.to_owned();
    near.pop();
    near.push('X');
    refused(
        get(&srv, "/v1/users/alice/presence", &near).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    for key in [KEY_A, KEY_B] {
        let (s, body) = get(&srv, "/v1/users/alice/presence", key).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        assert_eq!(body["user"], "alice");
    }
    srv.stop().await;

    // Rotation: the old key and the new one configured together, then the
    // old one removed.
    let srv = api_server(|c| c.api_keys = vec![KEY_OLD.to_owned(), KEY_A.to_owned()]).await;
    for key in [KEY_OLD, KEY_A] {
        assert_eq!(
            get(&srv, "/v1/users/alice/presence", key).await.0,
            StatusCode::OK
        );
    }
    srv.stop().await;
    let srv = api_server(|c| c.api_keys = vec![KEY_A.to_owned()]).await;
    refused(
        get(&srv, "/v1/users/alice/presence", KEY_OLD).await,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    assert_eq!(
        get(&srv, "/v1/users/alice/presence", KEY_A).await.0,
        StatusCode::OK
    );
    srv.stop().await;
}

/// Without `api_keys` the API is off: no listener at all.
#[tokio::test]
async fn the_api_is_off_without_keys() {
    let srv = server(|_| {}).await;
    assert_eq!(srv.api_addr, None);
    srv.stop().await;
}

/// A graceful stop closes the API listener too: nothing answers on its
/// address afterwards.
#[tokio::test]
async fn the_api_stops_with_the_server() {
    let srv = api_server(|_| {}).await;
    let addr = srv.api_addr.unwrap();
    assert_eq!(
        get(&srv, "/v1/users/alice/presence", KEY_A).await.0,
        StatusCode::OK
    );
    tokio::time::timeout(SOON, srv.stop())
        .await
        .expect("stops in time");
    let after = tokio::time::timeout(SOON, tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect answers in time");
    assert!(after.is_err(), "the API still accepts after the stop");
}

/// Bad bodies: not JSON, an unknown field, a wrong type, no content type,
/// over the size limit (with and without a declared length), bad ids and
/// out-of-range values; an unknown route and a wrong method. Each with its
/// documented status and code.
#[tokio::test]
async fn bad_requests_get_typed_errors() {
    let srv = api_server(|c| c.api_max_body_bytes = 1024).await;
    let client = reqwest::Client::new();
    let tokens = format!("{}/v1/tokens", base(&srv));
    let post = |body: String| {
        client
            .post(&tokens)
            .bearer_auth(KEY_A)
            .header("content-type", "application/json")
            .body(body)
    };
    let cases: Vec<(&str, String, StatusCode, &str)> = vec![
        (
            "not JSON",
            "{\"user\": ".into(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "unknown field",
            json!({"user": "alice", "admin": true}).to_string(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "wrong type",
            json!({"user": 7}).to_string(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "bad user id",
            json!({"user": "has space"}).to_string(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "ttl zero",
            json!({"user": "alice", "ttl_s": 0}).to_string(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "ttl too long",
            json!({"user": "alice", "ttl_s": 31 * 86_400}).to_string(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "control character in the name",
            json!({"user": "alice", "name": "a\u{7}b"}).to_string(),
            StatusCode::BAD_REQUEST,
            "bad_request",
        ),
        (
            "oversized",
            json!({"user": "alice", "name": "x".repeat(2000)}).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
    ];
    for (what, body, status, expected) in cases {
        let (s, _, v) = send(post(body)).await;
        assert_eq!(s, status, "{what}: {v}");
        assert_eq!(code(&v), expected, "{what}: {v}");
    }
    // Over the limit without a declared length (a chunked stream).
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b' '; 512])).collect();
    let streamed = client
        .post(&tokens)
        .bearer_auth(KEY_A)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )));
    let (s, _, v) = send(streamed).await;
    refused((s, v), StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    // Not JSON by content type.
    let (s, _, v) = send(
        client
            .post(&tokens)
            .bearer_auth(KEY_A)
            .header("content-type", "text/plain")
            .body(json!({"user": "alice"}).to_string()),
    )
    .await;
    refused(
        (s, v),
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    );
    // Ids and query parameters.
    refused(
        get(&srv, "/v1/users/has%20space/presence", KEY_A).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    refused(
        get(&srv, "/v1/calls/bad%20id", KEY_A).await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    refused(
        get(&srv, "/v1/calls/c-nosuchcall", KEY_A).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    for query in [
        "limit=0",
        "limit=1001",
        "cursor=nonsense",
        "sort=desc",
        "from=soon",
    ] {
        let got = get(&srv, &format!("/v1/users/alice/records?{query}"), KEY_A).await;
        refused(got, StatusCode::BAD_REQUEST, "bad_request");
    }
    // Routes.
    refused(
        get(&srv, "/v1/nothing-here", KEY_A).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    refused(
        get(&srv, "/v2/tokens", "").await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    refused(
        get(&srv, "/v1/tokens", KEY_A).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    // Refused requests changed nothing: the server still answers.
    assert_eq!(
        get(&srv, "/v1/users/alice/presence", KEY_A).await.0,
        StatusCode::OK
    );
    srv.stop().await;
}

/// Each key has its own bucket: past the burst, 429 `rate_limited` with a
/// `Retry-After` in whole seconds; the other key is not affected.
#[tokio::test]
async fn each_key_is_rate_limited() {
    let srv = api_server(|c| {
        c.api_rate_per_key = 0.5;
        c.api_burst_per_key = 3.0;
    })
    .await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/users/alice/presence", base(&srv));
    for i in 0..3 {
        let (s, _, v) = send(client.get(&url).bearer_auth(KEY_A)).await;
        assert_eq!(s, StatusCode::OK, "request {i}: {v}");
    }
    let (s, retry, v) = send(client.get(&url).bearer_auth(KEY_A)).await;
    refused((s, v), StatusCode::TOO_MANY_REQUESTS, "rate_limited");
    let retry: u64 = retry.expect("Retry-After").parse().expect("seconds");
    assert!((1..=2).contains(&retry), "Retry-After {retry}");
    let (s, _, _) = send(client.get(&url).bearer_auth(KEY_B)).await;
    assert_eq!(s, StatusCode::OK, "key B has its own bucket");
    // A bad key costs no key's tokens (and is refused before the limit).
    let (s, _, v) = send(client.get(&url).bearer_auth("wrong")).await;
    refused((s, v), StatusCode::UNAUTHORIZED, "unauthorized");
    srv.stop().await;
}

/// A token minted by the API opens a WebSocket session as that user, with
/// that display name; `expires_at` is the requested lifetime from now.
#[tokio::test]
async fn minted_tokens_open_websocket_sessions() {
    let srv = api_server(|_| {}).await;
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let (s, _, v) = send(
        reqwest::Client::new()
            .post(format!("{}/v1/tokens", base(&srv)))
            .bearer_auth(KEY_B)
            .json(&json!({"user": "carol", "name": "Carol C", "ttl_s": 600})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expires = v["expires_at"].as_u64().expect("expires_at");
    assert!(
        (before + 600..=after + 600).contains(&expires),
        "{expires} not 600 s after {before}..{after}"
    );
    let token = v["token"].as_str().expect("token");
    let identity = srv.authority.verify(token).expect("the server's own token");
    assert_eq!(identity.user.id.as_str(), "carol");
    assert_eq!(&*identity.user.name, "Carol C");
    let mut raw = Raw::connect(&srv).await;
    raw.send_hello(token, "laptop", None).await;
    let welcome = raw.recv().await;
    assert!(
        matches!(welcome.body, ServerBody::Welcome { .. }),
        "{welcome:?}"
    );
    // The session is carol's: the API sees her device.
    let (_, p) = get(&srv, "/v1/users/carol/presence", KEY_A).await;
    assert_eq!(p["devices"], json!(["laptop"]));
    // Defaults: an empty name, an hour.
    let (s, _, v) = send(
        reqwest::Client::new()
            .post(format!("{}/v1/tokens", base(&srv)))
            .bearer_auth(KEY_A)
            .json(&json!({"user": "dave"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let identity = srv.authority.verify(v["token"].as_str().unwrap()).unwrap();
    assert_eq!(&*identity.user.name, "");
    let exp = v["expires_at"].as_u64().unwrap();
    assert!((before + 3600..=after + 3601).contains(&exp), "{exp}");
    srv.stop().await;
}

/// Presence follows real WebSocket sessions: nothing, then bob's devices;
/// then ringing (bob) and calling (alice) with the call id; then both in
/// the call; then nothing once it ended and bob left.
#[tokio::test]
async fn presence_and_a_calls_live_state_follow_real_clients() {
    let srv = api_server(|_| {}).await;
    let (_, p) = get(&srv, "/v1/users/bob/presence", KEY_A).await;
    assert_eq!(
        p,
        json!({"user": "bob", "devices": [], "online": false, "in_call": false,
               "ringing": false, "calling": false, "calls": []})
    );
    let (mut alice, _) = Raw::hello(&srv, "alice", "alice-phone", None).await;
    let (mut bob_phone, _) = Raw::hello(&srv, "bob", "bob-phone", None).await;
    let (mut bob_tablet, _) = Raw::hello(&srv, "bob", "bob-tablet", None).await;
    let (_, p) = get(&srv, "/v1/users/bob/presence", KEY_A).await;
    let mut devices: Vec<String> = serde_json::from_value(p["devices"].clone()).unwrap();
    devices.sort();
    assert_eq!(devices, ["bob-phone", "bob-tablet"]);
    assert_eq!(p["online"], true);
    assert_eq!(p["ringing"], false);

    alice
        .send(&ClientMessage::new(
            rid("i1"),
            Command::Invite(
                InviteRequest::new(
                    vec![UserId::new("bob").unwrap(), UserId::new("carol").unwrap()],
                    CallType::Video,
                )
                .with_timeout_s(Some(60)),
            ),
        ))
        .await;
    let reply = alice.until(|b| b.success().is_some()).await;
    let Some((_, ReplyResult::Invited { call_id, .. })) = reply.body.success() else {
        panic!("{reply:?}")
    };
    let call_id: CallId = call_id.clone();
    for bob in [&mut bob_phone, &mut bob_tablet] {
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
    }
    let (_, p) = get(&srv, "/v1/users/bob/presence", KEY_A).await;
    assert_eq!(p["ringing"], true, "{p}");
    assert_eq!(p["in_call"], false, "{p}");
    assert_eq!(p["calls"], json!([call_id.as_str()]));
    let (_, p) = get(&srv, "/v1/users/alice/presence", KEY_A).await;
    assert_eq!(p["calling"], true, "{p}");
    assert_eq!(p["calls"], json!([call_id.as_str()]));

    // The call while ringing: carol is offline (held), bob rings.
    let path = format!("/v1/calls/{call_id}");
    let (s, c) = get(&srv, &path, KEY_A).await;
    assert_eq!(s, StatusCode::OK, "{c}");
    assert_eq!(c["call_id"], call_id.as_str());
    assert_eq!(c["caller"], "alice");
    assert_eq!(c["caller_device"], "alice-phone");
    assert_eq!(c["type"], "video");
    assert_eq!(c["state"], "ringing");
    assert_eq!(c["ended_reason"], Value::Null);
    assert_eq!(
        c["callees"],
        json!([
            {"user": "bob", "state": "ringing", "device": null},
            {"user": "carol", "state": "ringing", "device": null},
        ])
    );
    let invited = c["invited_at"].as_i64().unwrap();
    let deadline = c["ring_deadline"].as_i64().unwrap();
    assert_eq!(deadline - invited, 60_000_000_000, "the 60 s ring");
    let now_ns = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    )
    .unwrap();
    assert!(
        (now_ns - 30_000_000_000..=now_ns).contains(&invited),
        "invited_at {invited} vs now {now_ns}"
    );
    assert_eq!(c["answered_at"], Value::Null, "nobody answered yet");

    // Bob accepts on the tablet (the answering device); carol, offline,
    // still rings.
    bob_tablet
        .send(&ClientMessage::new(
            rid("a1"),
            Command::accept(call_id.clone()),
        ))
        .await;
    bob_tablet.until(|b| b.success().is_some()).await;
    alice
        .until(|b| {
            matches!(
                b,
                ServerBody::Event {
                    event: Event::CalleeOutcome {
                        reason: Reason::Accepted,
                        ..
                    },
                    ..
                }
            )
        })
        .await;
    let (_, c) = get(&srv, &path, KEY_A).await;
    assert_eq!(c["state"], "in_progress", "{c}");
    let answered = c["answered_at"]
        .as_i64()
        .expect("answered_at once bob accepted");
    assert!(
        (invited..invited + 30_000_000_000).contains(&answered),
        "answered_at {answered} vs invited_at {invited}"
    );
    assert_eq!(
        c["callees"],
        json!([
            {"user": "bob", "state": "in_call", "device": "bob-tablet"},
            {"user": "carol", "state": "ringing", "device": null},
        ])
    );
    let (_, p) = get(&srv, "/v1/users/bob/presence", KEY_A).await;
    assert_eq!(p["in_call"], true, "{p}");
    assert_eq!(p["ringing"], false, "{p}");
    let (_, p) = get(&srv, "/v1/users/alice/presence", KEY_A).await;
    assert_eq!(p["in_call"], true, "{p}");
    assert_eq!(p["calling"], false, "{p}");

    // Bob leaves on the tablet: with nobody else in it but the caller, the
    // call ends (hung up); his outcome stays `accepted` with the device,
    // carol's ring is canceled. The ended call is still readable for a while.
    bob_tablet
        .send(&ClientMessage::new(
            rid("h1"),
            Command::hang_up(call_id.clone()),
        ))
        .await;
    bob_tablet.until(|b| b.success().is_some()).await;
    let (_, c) = get(&srv, &path, KEY_A).await;
    assert_eq!(c["state"], "ended", "{c}");
    assert_eq!(c["ended_reason"], "hung_up", "{c}");
    assert_eq!(
        c["callees"],
        json!([
            {"user": "bob", "state": "accepted", "device": "bob-tablet"},
            {"user": "carol", "state": "canceled", "device": null},
        ])
    );
    let (_, p) = get(&srv, "/v1/users/bob/presence", KEY_A).await;
    assert_eq!(
        (&p["in_call"], &p["ringing"], &p["calls"]),
        (&json!(false), &json!(false), &json!([])),
        "{p}"
    );
    srv.stop().await;
}

/// 1,000 records of alice's (and 200 of someone else's), written to the
/// data directory before the server starts; paging through them over HTTP
/// with the cursor, 7 at a time then 100 at a time, returns each exactly
/// once, in end-time order; a time range returns just its part. An
/// in-memory server answers an empty page.
#[tokio::test]
async fn paging_through_a_thousand_records_with_a_cursor() {
    let dir = TempDir::new("records");
    let now_ns = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos(),
    )
    .unwrap();
    const MS: i64 = 1_000_000;
    // Ended 1 ms apart, the newest a minute ago; ids say the order.
    let t0 = now_ns - 60_000 * MS - 1200 * MS;
    let mut written = Vec::new();
    {
        let mut store =
            RecordStore::open(dir.0.join("records"), Duration::from_secs(30 * 86_400)).unwrap();
        let mut batch = Vec::new();
        for i in 0..1200i64 {
            let (caller, id) = if i % 6 == 5 {
                ("zoe", format!("c-other-{i:04}"))
            } else {
                ("alice", format!("c-rec-{i:04}"))
            };
            let mut r = CallRecord::new(
                CallId::new(&id).unwrap(),
                UserId::new(caller).unwrap(),
                DeviceId::new("phone").unwrap(),
                CallType::Voice,
                t0 + i * MS - 30_000 * MS,
                t0 + i * MS,
                Reason::Timeout,
            );
            r.callees = vec![invitation_core::CalleeRecord::new(
                UserId::new("bob").unwrap(),
                Reason::Timeout,
            )];
            if caller == "alice" {
                written.push(id);
            }
            batch.push(r);
        }
        store.append(&batch).unwrap();
        store.sync().unwrap();
    }
    assert_eq!(written.len(), 1000);
    let srv = api_server(|c| c.data_dir = Some(dir.0.clone())).await;

    for limit in [7usize, 100] {
        let mut seen: Vec<String> = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let mut path = format!("/v1/users/alice/records?limit={limit}");
            if let Some(c) = &cursor {
                path.push_str(&format!("&cursor={c}"));
            }
            let (s, page) = get(&srv, &path, KEY_A).await;
            assert_eq!(s, StatusCode::OK, "{page}");
            let records = page["records"].as_array().expect("records");
            assert!(records.len() <= limit, "{} > {limit}", records.len());
            for r in records {
                assert_eq!(r["caller"], "alice", "{r}");
                assert_eq!(r["callees"][0]["user"], "bob", "{r}");
                assert_eq!(r["callees"][0]["outcome"], "timeout", "{r}");
                seen.push(r["call_id"].as_str().unwrap().to_owned());
            }
            pages += 1;
            assert!(pages <= 1000 / limit + 2, "too many pages");
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_owned()),
                None => break,
            }
        }
        assert_eq!(
            seen, written,
            "every record once, in end-time order (limit {limit})"
        );
    }

    // A range: records 100..200 of the whole sequence.
    let (from, to) = (t0 + 100 * MS, t0 + 200 * MS);
    let (s, page) = get(
        &srv,
        &format!("/v1/users/alice/records?from={from}&to={to}&limit=1000"),
        KEY_A,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{page}");
    let ids: Vec<&str> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["call_id"].as_str().unwrap())
        .collect();
    let expected: Vec<&str> = written
        .iter()
        .map(String::as_str)
        .filter(|id| {
            let n: i64 = id["c-rec-".len()..].parse().unwrap();
            (100..200).contains(&n)
        })
        .collect();
    assert_eq!(ids, expected);
    assert_eq!(page["next_cursor"], Value::Null);
    srv.stop().await;

    let srv = api_server(|_| {}).await;
    let (s, page) = get(&srv, "/v1/users/alice/records", KEY_A).await;
    assert_eq!(s, StatusCode::OK, "{page}");
    assert_eq!(page, json!({"records": [], "next_cursor": null}));
    srv.stop().await;
}

/// The OpenAPI document is served without a key, is the repository's
/// docs/openapi.json, and every path and method it lists is a route of the
/// server (answered by its handler, not by the unknown-route or
/// wrong-method fallback).
#[tokio::test]
async fn the_openapi_document_matches_the_routes() {
    let srv = api_server(|_| {}).await;
    let (s, _, doc) =
        send(reqwest::Client::new().get(format!("{}/v1/openapi.json", base(&srv)))).await;
    assert_eq!(s, StatusCode::OK);
    let kept: Value = serde_json::from_str(include_str!("../../../docs/openapi.json")).unwrap();
    assert_eq!(doc, kept);
    let client = reqwest::Client::new();
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{user}", "alice")
            .replace("{device}", "phone")
            .replace("{call_id}", "c-unknown");
        for method in ops.as_object().unwrap().keys() {
            let url = format!("{}{concrete}", base(&srv));
            let req = match method.as_str() {
                "get" => client.get(&url),
                "post" => client.post(&url).json(&json!({"user": "alice"})),
                "delete" => client.delete(&url),
                "put" => client
                    .put(&url)
                    .json(&json!({"platform": "fcm", "token": "t"})),
                other => panic!("undocumented method {other}"),
            };
            let (s, _, body) = send(req.bearer_auth(KEY_A)).await;
            assert_ne!(s, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}: {body}");
            assert!(
                !(s == StatusCode::NOT_FOUND && body["error"]["message"] == "no such route"),
                "{method} {path} is documented but not served: {body}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 10);
    srv.stop().await;
}

async fn post_call(srv: &RunningServer, body: Value, key: Option<&str>) -> (StatusCode, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/v1/calls", base(srv)))
        .bearer_auth(KEY_A)
        .json(&body);
    if let Some(k) = key {
        req = req.header("idempotency-key", k);
    }
    let (s, _, v) = send(req).await;
    (s, v)
}

async fn delete_call(srv: &RunningServer, call_id: &str) -> (StatusCode, Value) {
    let req = reqwest::Client::new()
        .delete(format!("{}/v1/calls/{call_id}", base(srv)))
        .bearer_auth(KEY_A);
    let (s, _, v) = send(req).await;
    (s, v)
}

/// The backend starts a call for alice: bob rings, alice's phone sees the
/// outgoing call (made by the device `backend`), a retry with the same
/// Idempotency-Key is the same call, DELETE cancels it for everyone;
/// refusals carry the protocol's codes.
#[tokio::test]
async fn the_backend_starts_and_cancels_calls() {
    let srv = api_server(|_| {}).await;
    let (mut alice, _) = Raw::hello(&srv, "alice", "alice-phone", None).await;
    let (mut bob, _) = Raw::hello(&srv, "bob", "bob-phone", None).await;
    let body = json!({"caller": "alice", "caller_name": "Alice", "callees": ["bob"],
                      "call_type": "video", "timeout_s": 45, "custom_data": "room-9"});
    let (status, started) = post_call(&srv, body.clone(), Some("order-77")).await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let call_id = started["call_id"].as_str().unwrap().to_owned();
    assert_eq!(started["ring_remaining_ms"], 45_000);
    assert_eq!(
        started["callees"],
        json!([{"user": "bob", "status": "ringing"}])
    );
    let ring = bob
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
    let ring = serde_json::to_value(&ring.body).unwrap();
    assert_eq!(ring["event"]["call_id"], call_id.as_str());
    assert_eq!(ring["event"]["custom_data"], "room-9");
    let outgoing = alice
        .until(|b| {
            matches!(
                b,
                ServerBody::Event {
                    event: Event::OutgoingCall { .. },
                    ..
                }
            )
        })
        .await;
    let outgoing = serde_json::to_value(&outgoing.body).unwrap();
    assert_eq!(outgoing["event"]["device"], "backend");

    // The same key again: the same call, not a second one.
    let (status, again) = post_call(&srv, body.clone(), Some("order-77")).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(again["call_id"], call_id.as_str());
    let (_, state) = get(&srv, &format!("/v1/calls/{call_id}"), KEY_A).await;
    assert_eq!(state["caller_device"], "backend");
    assert_eq!(state["state"], "ringing");

    // A second call for alice while she is calling: caller_busy (409).
    refused(
        post_call(
            &srv,
            json!({"caller": "alice", "callees": ["carol"], "call_type": "voice"}),
            None,
        )
        .await,
        StatusCode::CONFLICT,
        "caller_busy",
    );
    // The call rules' refusals: invalid (400).
    refused(
        post_call(
            &srv,
            json!({"caller": "dave", "callees": [], "call_type": "voice"}),
            None,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid",
    );
    refused(
        post_call(
            &srv,
            json!({"caller": "dave", "callees": ["bob"], "call_type": "fax"}),
            None,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );

    // DELETE cancels it: bob stops ringing, alice learns it.
    let (status, _) = delete_call(&srv, &call_id).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let ended = bob
        .until(|b| {
            matches!(
                b,
                ServerBody::Event {
                    event: Event::IncomingEnded { .. },
                    ..
                }
            )
        })
        .await;
    let ended = serde_json::to_value(&ended.body).unwrap();
    assert_eq!(ended["event"]["reason"], "canceled");
    refused(
        delete_call(&srv, &call_id).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    srv.stop().await;
}
