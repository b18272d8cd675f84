//! Raw protocol against a real `invitation-server` on 127.0.0.1:0:
//! reconnect scenarios (A1-A3, A9, A10, C1, C3), bad input (E1-E12),
//! authorisation (D1-D12), floods (F2, F5), operations, and the transport
//! conformance suite over WebSocket and over HTTP.

mod common;

use std::time::Duration;

use async_trait::async_trait;
use common::*;
use futures_util::SinkExt;
use invitation::transport::BoxTransport;
use invitation::transport::conformance::{self, Fixture};
use invitation::transport::ws::WsTransport;
use invitation_core::protocol::{
    ClientMessage, CloseReason, Command, Event, InviteRequest, ReplyResult, ServerBody,
};
use invitation_core::{CallId, CallType, ErrorCode, RequestId, User, UserId};
use invitation_server::{Claims, RunningServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn rid(s: &str) -> RequestId {
    RequestId::new(s).unwrap()
}

fn invite_msg(id: &str, callee: &str) -> ClientMessage {
    ClientMessage::new(
        rid(id),
        Command::Invite(
            InviteRequest::new(vec![UserId::new(callee).unwrap()], CallType::Voice)
                .with_timeout_s(Some(60)),
        ),
    )
}

fn error_code(b: &ServerBody) -> Option<ErrorCode> {
    match b {
        ServerBody::Error(e) => Some(e.code),
        _ => None,
    }
}

/// The first reply or error (skipping events).
async fn invited(raw: &mut Raw) -> (RequestId, ReplyResult) {
    let m = raw
        .until(|b| b.success().is_some() || matches!(b, ServerBody::Error(_)))
        .await;
    match m.body.success() {
        Some((re, result)) => (re.clone(), result),
        None => panic!("{m:?}"),
    }
}

fn call_of(r: &ReplyResult) -> CallId {
    match r {
        ReplyResult::Invited { call_id, .. } => call_id.clone(),
        other => panic!("{other:?}"),
    }
}

struct Ws(RunningServer, Option<common::tls::TestPki>);

#[async_trait]
impl Fixture for Ws {
    async fn transport(&self, _user: &User) -> BoxTransport {
        let ws = WsTransport::new(self.0.url());
        match &self.1 {
            Some(pki) => std::sync::Arc::new(ws.tls(pki.client_tls())),
            None => std::sync::Arc::new(ws),
        }
    }
    fn token(&self, user: &User) -> Option<String> {
        Some(self.0.token(user.id.as_str(), &user.name))
    }
}

#[tokio::test]
async fn ws_backend_passes_conformance() {
    conformance::run_all(&Ws(server(|_| {}).await, None)).await;
}

/// The same suite over `wss://`: the server terminates TLS itself.
#[tokio::test]
async fn wss_backend_passes_conformance() {
    let pki = common::tls::TestPki::loopback();
    let srv = server(|c| pki.serve(c)).await;
    assert!(srv.url().starts_with("wss://"), "{}", srv.url());
    conformance::run_all(&Ws(srv, Some(pki))).await;
}

/// The server, reached over the HTTP transport (`https://` with its own
/// TLS when a test certificate is given).
struct Http(RunningServer, Option<common::tls::TestPki>);

#[async_trait]
impl Fixture for Http {
    async fn transport(&self, _user: &User) -> BoxTransport {
        use invitation::transport::http::HttpTransport;
        match &self.1 {
            None => std::sync::Arc::new(HttpTransport::new(format!("http://{}/", self.0.addr))),
            Some(pki) => std::sync::Arc::new(
                HttpTransport::new(format!("https://{}/", self.0.addr)).tls(pki.client_tls()),
            ),
        }
    }
    fn token(&self, user: &User) -> Option<String> {
        Some(self.0.token(user.id.as_str(), &user.name))
    }
}

/// The same suite over the HTTP transport (requests and long polls on the
/// main port, each session driving the same connection machine).
#[tokio::test]
async fn http_backend_passes_conformance() {
    conformance::run_all(&Http(server(|_| {}).await, None)).await;
}

/// ... and over `https://`, the server terminating TLS itself.
#[tokio::test]
async fn https_backend_passes_conformance() {
    let pki = common::tls::TestPki::loopback();
    let srv = server(|c| pki.serve(c)).await;
    conformance::run_all(&Http(srv, Some(pki))).await;
}

// ----- reconnects -------------------------------------------------------

#[tokio::test]
async fn a1_a2_retry_after_reconnect_gets_the_same_call() {
    let srv = server(|_| {}).await;
    let (mut alice, _) = Raw::hello(&srv, "alice", "phone", None).await;
    alice.send(&invite_msg("r1", "bob")).await;
    let (_, first) = invited(&mut alice).await;
    drop(alice); // the reply may have been lost: the client retries on a new connection
    let (mut alice, _) = Raw::hello(&srv, "alice", "phone", Some(1)).await;
    alice.send(&invite_msg("r1", "bob")).await;
    let (re, again) = invited(&mut alice).await;
    assert_eq!(re, rid("r1"));
    assert_eq!(call_of(&again), call_of(&first), "no second call");
}

#[tokio::test]
async fn a3_duplicated_accept_is_one_transition() {
    let srv = server(|_| {}).await;
    let (mut alice, _) = Raw::hello(&srv, "alice", "phone", None).await;
    let (mut bob, _) = Raw::hello(&srv, "bob", "phone", None).await;
    alice.send(&invite_msg("r1", "bob")).await;
    let call = call_of(&invited(&mut alice).await.1);
    let accept = ClientMessage::new(
        rid("a1"),
        Command::Accept {
            call_id: call.clone(),
            custom_data: None,
        },
    );
    for _ in 0..4 {
        bob.send(&accept).await;
    }
    let mut answers = Vec::new();
    while answers.len() < 4 {
        let m = bob.recv().await;
        if let Some((re, result)) = m.body.success() {
            answers.push((re.clone(), result));
        }
    }
    assert!(
        answers.windows(2).all(|w| w[0] == w[1]),
        "duplicates get the same answer"
    );
    let outcomes = {
        let mut n = 0;
        loop {
            let m = alice.recv().await;
            if let ServerBody::Event {
                event: Event::CalleeOutcome { reason, .. },
                ..
            } = m.body
            {
                assert_eq!(reason, invitation_core::Reason::Accepted);
                n += 1;
                break n;
            }
        }
    };
    assert_eq!(outcomes, 1);
    alice.ping().await; // no second outcome queued before the pong
}

#[tokio::test]
async fn a9_flapping_connection_rings_once_and_stays_bounded() {
    let srv = server(|_| {}).await;
    let (mut alice, _) = Raw::hello(&srv, "alice", "phone", None).await;
    alice.send(&invite_msg("r1", "bob")).await;
    invited(&mut alice).await;
    // bob's phone connects 20 times, each time resuming from the last
    // sequence number the previous connection was welcomed with.
    let mut last_seq = None;
    let mut rings = 0;
    for _ in 0..20 {
        let (mut bob, welcome) = Raw::hello(&srv, "bob", "phone", last_seq).await;
        let ServerBody::Welcome { seq, .. } = welcome.body else {
            unreachable!()
        };
        for m in bob.ping_collect().await {
            match m.body {
                ServerBody::Event {
                    event: Event::IncomingCall { .. },
                    ..
                } => rings += 1,
                ServerBody::Sync(s) => rings += s.calls.len(),
                _ => {}
            }
        }
        last_seq = Some(seq);
        drop(bob);
    }
    assert_eq!(
        rings, 1,
        "the first connection got the call; the 19 resumes replayed nothing"
    );
    // The call is still there, once, for a device that asks.
    let (mut fresh, _) = Raw::hello(&srv, "bob", "tablet", None).await;
    let sync = fresh.until(|b| matches!(b, ServerBody::Sync(_))).await;
    let ServerBody::Sync(s) = sync.body else {
        unreachable!()
    };
    assert_eq!(s.calls.len(), 1);
    let sessions = srv
        .metrics
        .sessions
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        sessions <= 3,
        "{sessions} sessions left open after flapping"
    );
}

#[tokio::test]
async fn a10_gap_beyond_the_buffer_gets_resync() {
    let srv = server(|_| {}).await;
    let (mut bob, welcome) = Raw::hello(&srv, "bob", "phone", Some(1_000_000)).await;
    assert!(matches!(
        welcome.body,
        ServerBody::Welcome { resumed: false, .. }
    ));
    assert!(matches!(bob.recv().await.body, ServerBody::Sync(_)));
}

#[tokio::test]
async fn c1_new_device_during_ringing_can_accept() {
    let srv = server(|_| {}).await;
    let (mut alice, _) = Raw::hello(&srv, "alice", "phone", None).await;
    let (_bob_phone, _) = Raw::hello(&srv, "bob", "phone", None).await;
    alice.send(&invite_msg("r1", "bob")).await;
    let call = call_of(&invited(&mut alice).await.1);
    let (mut laptop, _) = Raw::hello(&srv, "bob", "laptop", None).await;
    let sync = laptop.until(|b| matches!(b, ServerBody::Sync(_))).await;
    let ServerBody::Sync(s) = sync.body else {
        unreachable!()
    };
    assert_eq!(s.calls.len(), 1);
    assert_eq!(s.calls[0].call_id, call);
    laptop
        .send(&ClientMessage::new(
            rid("a"),
            Command::Accept {
                call_id: call,
                custom_data: None,
            },
        ))
        .await;
    let reply = laptop.until(|b| b.answers() == Some(&rid("a"))).await;
    assert!(
        matches!(reply.body.success(), Some((_, ReplyResult::Done))),
        "{reply:?}"
    );
}

#[tokio::test]
async fn c3_same_device_reconnecting_replaces_the_old_connection() {
    let srv = server(|_| {}).await;
    let (mut old, _) = Raw::hello(&srv, "bob", "phone", None).await;
    let (mut new, _) = Raw::hello(&srv, "bob", "phone", None).await;
    let (end, seen) = old.until_closed().await;
    assert!(seen.iter().any(|m| matches!(
        m.body,
        ServerBody::Closing {
            reason: CloseReason::Replaced
        }
    )));
    assert_eq!(end, Ended::Code(1000));
    new.ping().await;
}

// ----- bad input ----------------------------------------------------------

#[tokio::test]
async fn e1_oversize_message_is_closed_with_1009() {
    let srv = server(|_| {}).await;
    let (mut raw, _) = Raw::hello(&srv, "eve", "d", None).await;
    let (mut control, _) = Raw::hello(&srv, "carl", "d", None).await;
    raw.text(&format!(
        r#"{{"v":1,"id":"x","type":"ping","pad":"{}"}}"#,
        "x".repeat(70_000)
    ))
    .await;
    let (end, _) = raw.until_closed().await;
    assert_eq!(end, Ended::Code(1009));
    control.ping().await;
}

#[tokio::test]
async fn e3_invalid_utf8_text_frame_is_closed_with_1007() {
    let srv = server(|_| {}).await;
    let (mut raw, _) = Raw::hello(&srv, "eve", "d", None).await;
    // A masked text frame whose payload is not UTF-8, written by hand.
    let payload = [0xff, 0xfe, 0xfd];
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    let stream = match raw.ws.get_mut() {
        tokio_tungstenite::MaybeTlsStream::Plain(s) => s,
        _ => unreachable!(),
    };
    stream.write_all(&frame).await.unwrap();
    let (end, _) = raw.until_closed().await;
    assert_eq!(end, Ended::Code(1007));
}

#[tokio::test]
async fn e4_e5_e6_e7_e9_e10_get_typed_errors_and_keep_the_connection() {
    let srv = server(|_| {}).await;
    let (mut raw, _) = Raw::hello(&srv, "eve", "d", None).await;
    let deep = format!(
        r#"{{"v":1,"id":"x","type":"ping","a":{}{}}}"#,
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let cases: Vec<(String, ErrorCode)> = vec![
        (deep, ErrorCode::OverLimits),
        (r#"{"v":1,"id":"x","type":"ping","a":1,"a":2}"#.into(), ErrorCode::DuplicateKey),
        (r#"{"v":1,"id":"x","type":"teleport"}"#.into(), ErrorCode::UnknownType),
        (r#"{"v":1,"id":"x","type":"accept"}"#.into(), ErrorCode::Invalid),
        (r#"{"v":1,"id":"x","type":"accept","call_id":"a b"}"#.into(), ErrorCode::Invalid),
        (r#"{"v":1,"id":"x","type":"invite","callees":["a","b","c","d","e","f","g","h","i","j"],"call_type":"voice"}"#.into(), ErrorCode::Invalid),
        (r#"{"v":1,"id":"x","type":"invite","callees":["eve"],"call_type":"voice"}"#.into(), ErrorCode::Invalid),
        (r#"{"v":1,"id":"x","type":"invite","callees":["b"],"call_type":"voice","timeout_s":0}"#.into(), ErrorCode::Invalid),
        (r#"{"v":1,"id":"x","type":"invite","callees":["b"],"call_type":"voice","timeout_s":1.5}"#.into(), ErrorCode::Invalid),
        (r#"{"v":2,"id":"x","type":"ping"}"#.into(), ErrorCode::UnsupportedVersion),
        ("not json".into(), ErrorCode::Malformed),
    ];
    for (input, code) in cases {
        raw.text(&input).await;
        let m = raw.until(|b| error_code(b).is_some()).await;
        assert_eq!(error_code(&m.body), Some(code), "{input:.80}");
        raw.ping().await; // the connection is kept
    }
}

#[tokio::test]
async fn e6_repeated_abuse_closes_the_connection() {
    let srv = server(|c| c.max_protocol_errors = 3).await;
    let (mut raw, _) = Raw::hello(&srv, "eve", "d", None).await;
    for _ in 0..4 {
        raw.text("garbage").await;
    }
    let (end, seen) = raw.until_closed().await;
    assert_eq!(end, Ended::Code(1008));
    assert!(seen.iter().any(|m| matches!(
        m.body,
        ServerBody::Closing {
            reason: CloseReason::ProtocolViolation
        }
    )));
}

#[tokio::test]
async fn binary_frames_are_refused_with_1003() {
    let srv = server(|_| {}).await;
    let (mut raw, _) = Raw::hello(&srv, "eve", "d", None).await;
    raw.ws
        .send(tokio_tungstenite::tungstenite::Message::binary(vec![
            1, 2, 3,
        ]))
        .await
        .unwrap();
    assert_eq!(raw.until_closed().await.0, Ended::Code(1003));
}

async fn http_exchange(srv: &RunningServer, request: &[u8]) -> String {
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = String::new();
    let _ = tokio::time::timeout(SOON, s.read_to_string(&mut out))
        .await
        .expect("answered in time");
    out
}

#[tokio::test]
async fn e12_malformed_and_huge_handshakes_are_refused() {
    let srv = server(|_| {}).await;
    assert!(
        http_exchange(&srv, b"\x16\x03\x01\x00garbage\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 400")
    );
    let huge = format!(
        "GET / HTTP/1.1\r\nUpgrade: websocket\r\nX-Pad: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    assert!(
        http_exchange(&srv, huge.as_bytes())
            .await
            .starts_with("HTTP/1.1 431")
    );
    // An upgrade request missing its key fails the WebSocket handshake.
    let bad = http_exchange(
        &srv,
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    )
    .await;
    assert!(bad.is_empty() || bad.starts_with("HTTP/1.1 4"), "{bad}");
}

#[tokio::test]
async fn e12_byte_by_byte_dribble_is_cut_at_the_handshake_timeout() {
    let srv = server(|c| c.handshake_timeout_s = 1).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    let request = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n";
    let mut closed = false;
    for b in request.iter().cycle().take(10_000) {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        let mut buf = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                closed = true;
                break;
            }
            _ => {}
        }
    }
    assert!(closed, "the dribbling client was cut off");
    assert!(started.elapsed() < Duration::from_secs(5));
}

// ----- authorisation ------------------------------------------------------

#[tokio::test]
async fn d1_identity_comes_from_the_token() {
    let srv = server(|_| {}).await;
    let (mut mallory, _) = Raw::hello(&srv, "mallory", "d", None).await;
    let (mut bob, _) = Raw::hello(&srv, "bob", "d", None).await;
    mallory
        .text(r#"{"v":1,"id":"x","type":"invite","callees":["bob"],"call_type":"voice","caller":{"id":"alice","name":"Alice"}}"#)
        .await;
    let m = bob
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
    let ServerBody::Event {
        event: Event::IncomingCall { caller, .. },
        ..
    } = m.body
    else {
        unreachable!()
    };
    assert_eq!(caller.id.as_str(), "mallory");
}

#[tokio::test]
async fn d2_d3_non_participants_and_wrong_roles_change_nothing() {
    let srv = server(|_| {}).await;
    let (mut alice, _) = Raw::hello(&srv, "alice", "d", None).await;
    let (mut bob, _) = Raw::hello(&srv, "bob", "d", None).await;
    let (mut mallory, _) = Raw::hello(&srv, "mallory", "d", None).await;
    alice.send(&invite_msg("r1", "bob")).await;
    let call = call_of(&invited(&mut alice).await.1);
    for (i, cmd) in [
        Command::Accept {
            call_id: call.clone(),
            custom_data: None,
        },
        Command::Decline {
            call_id: call.clone(),
            busy: false,
            custom_data: None,
        },
        Command::Cancel {
            call_id: call.clone(),
            custom_data: None,
        },
        Command::HangUp {
            call_id: call.clone(),
            custom_data: None,
        },
    ]
    .into_iter()
    .enumerate()
    {
        mallory
            .send(&ClientMessage::new(rid(&format!("m{i}")), cmd))
            .await;
        let m = mallory.until(|b| error_code(b).is_some()).await;
        assert_eq!(error_code(&m.body), Some(ErrorCode::NotFound));
    }
    bob.send(&ClientMessage::new(
        rid("c"),
        Command::Cancel {
            call_id: call.clone(),
            custom_data: None,
        },
    ))
    .await;
    assert_eq!(
        error_code(&bob.until(|b| error_code(b).is_some()).await.body),
        Some(ErrorCode::WrongRole)
    );
    alice
        .send(&ClientMessage::new(
            rid("a"),
            Command::Accept {
                call_id: call.clone(),
                custom_data: None,
            },
        ))
        .await;
    assert_eq!(
        error_code(&alice.until(|b| error_code(b).is_some()).await.body),
        Some(ErrorCode::WrongRole)
    );
    // Still ringing: bob can accept.
    bob.send(&ClientMessage::new(
        rid("ok"),
        Command::Accept {
            call_id: call,
            custom_data: None,
        },
    ))
    .await;
    let m = bob.until(|b| b.answers() == Some(&rid("ok"))).await;
    assert!(
        matches!(m.body.success(), Some((_, ReplyResult::Done))),
        "{m:?}"
    );
}

fn claims(sub: &str, exp_in: i64) -> Claims {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    Claims {
        sub: sub.into(),
        name: sub.into(),
        exp: (now + exp_in) as u64,
        iat: now as u64,
        aud: "invitation".into(),
        iss: None,
        nbf: None,
    }
}

async fn refused_with(srv: &RunningServer, token: &str) {
    let mut raw = Raw::connect(srv).await;
    raw.send_hello(token, "d", None).await;
    let (end, seen) = raw.until_closed().await;
    assert!(
        seen.iter()
            .any(|m| error_code(&m.body) == Some(ErrorCode::Unauthorized)),
        "{seen:?}"
    );
    assert_eq!(end, Ended::Code(1008));
}

#[tokio::test]
async fn d5_d7_d8_bad_tokens_are_refused() {
    let srv = server(|_| {}).await;
    let a = &srv.authority;
    refused_with(&srv, &a.sign(&claims("alice", -10))).await; // expired
    let mut nbf = claims("alice", 3600);
    nbf.nbf = Some(nbf.iat + 3600);
    refused_with(&srv, &a.sign(&nbf)).await; // not yet valid
    let good = a.sign(&claims("alice", 3600));
    let body = good.split('.').nth(1).unwrap();
    refused_with(
        &srv,
        &format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{body}."),
    )
    .await; // alg none
    let mut flipped = good.clone().into_bytes();
    let i = flipped.len() - 3;
    flipped[i] = if flipped[i] == b'A' { b'B' } else { b'A' };
    refused_with(&srv, std::str::from_utf8(&flipped).unwrap()).await; // bit flip
    refused_with(&srv, &good[..good.len() / 2]).await; // truncated
    refused_with(&srv, "%%%.%%%.%%%").await; // not base64
    // A huge token does not even fit the message size limit.
    let mut raw = Raw::connect(&srv).await;
    raw.send_hello(&"a".repeat(40_000), "d", None).await;
    assert_eq!(raw.until_closed().await.0, Ended::Code(1009));
    let mut aud = claims("alice", 3600);
    aud.aud = "other".into();
    refused_with(&srv, &a.sign(&aud)).await; // wrong audience
    refused_with(&srv, "").await; // none
}

#[tokio::test]
async fn d5_live_connection_closes_at_expiry_unless_renewed() {
    let srv = server(|_| {}).await;
    let short = srv.authority.sign(&claims("alice", 2));
    let mut raw = Raw::connect(&srv).await;
    raw.send_hello(&short, "d", None).await;
    raw.until(|b| matches!(b, ServerBody::Welcome { .. })).await;
    let (end, seen) = raw.until_closed().await;
    assert!(seen.iter().any(|m| matches!(
        m.body,
        ServerBody::Closing {
            reason: CloseReason::TokenExpired
        }
    )));
    assert_eq!(end, Ended::Code(1008));

    // Renewed in band: it stays open past the first expiry.
    let mut raw = Raw::connect(&srv).await;
    raw.send_hello(&srv.authority.sign(&claims("alice", 2)), "d", None)
        .await;
    raw.until(|b| matches!(b, ServerBody::Welcome { .. })).await;
    let renew =
        serde_json::json!({"v":1,"id":"rn","type":"renew","token": srv.token("alice", "alice")});
    raw.text(&renew.to_string()).await;
    raw.until(|b| b.success().is_some()).await;
    let wrong_user =
        serde_json::json!({"v":1,"id":"rx","type":"renew","token": srv.token("mallory", "m")});
    raw.text(&wrong_user.to_string()).await;
    assert_eq!(
        error_code(&raw.until(|b| error_code(b).is_some()).await.body),
        Some(ErrorCode::Unauthorized)
    );
    tokio::time::timeout(Duration::from_secs(4), std::future::pending::<()>())
        .await
        .ok();
    raw.ping().await;
}

#[tokio::test]
async fn d11_disallowed_origin_is_refused_before_upgrade() {
    let srv = server(|c| c.allowed_origins = vec!["https://app.example".into()]).await;
    let req = |origin: &str| {
        format!(
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: {origin}\r\n\r\n"
        )
    };
    assert!(
        http_exchange(&srv, req("https://evil.example").as_bytes())
            .await
            .starts_with("HTTP/1.1 403")
    );
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(req("https://app.example").as_bytes())
        .await
        .unwrap();
    let mut buf = [0u8; 12];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"HTTP/1.1 101");
}

#[tokio::test]
async fn d12_no_hello_in_time_is_closed() {
    let srv = server(|c| c.auth_timeout_s = 1).await;
    let mut raw = Raw::connect(&srv).await;
    let (end, _) = raw.until_closed().await;
    assert_eq!(end, Ended::Code(1008));
    // A first message that is not hello is refused at once.
    let mut raw = Raw::connect(&srv).await;
    raw.text(r#"{"v":1,"id":"x","type":"ping"}"#).await;
    let (end, seen) = raw.until_closed().await;
    assert!(
        seen.iter()
            .any(|m| error_code(&m.body) == Some(ErrorCode::Unauthorized))
    );
    assert_eq!(end, Ended::Code(1008));
}

// ----- floods -------------------------------------------------------------

#[tokio::test]
async fn f2_invite_flood_is_rate_limited_and_the_callee_not_flooded() {
    let srv = server(|c| {
        c.invite_rate_per_user = 2.0;
        c.invite_burst_per_user = 5.0;
        c.busy_policy = "ring_anyway".into();
    })
    .await;
    let (mut flood, _) = Raw::hello(&srv, "flood", "d", None).await;
    let (mut victim, _) = Raw::hello(&srv, "victim", "d", None).await;
    for i in 0..1000 {
        flood.send(&invite_msg(&format!("f{i}"), "victim")).await;
    }
    let mut limited = 0;
    let mut ok = 0;
    while ok + limited < 1000 {
        let m = flood.recv().await;
        match m.body {
            ref b if b.success().is_some() => ok += 1,
            ServerBody::Error(e) if e.code == ErrorCode::RateLimited => {
                assert!(e.retry_after_ms.is_some_and(|ms| ms > 0));
                limited += 1;
            }
            ServerBody::Error(e) if e.code == ErrorCode::CallerBusy => ok += 1,
            _ => {}
        }
    }
    assert!(limited >= 990, "{limited} rate limited");
    victim.ping().await;
    let counted = srv
        .metrics
        .rate_limited
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(counted, limited as u64, "the metric counts every refusal");
    let mut rings = 0;
    victim.text(r#"{"v":1,"id":"p2","type":"ping"}"#).await;
    loop {
        let m = victim.recv().await;
        match m.body {
            ServerBody::Event {
                event: Event::IncomingCall { .. },
                ..
            } => rings += 1,
            ServerBody::Pong { .. } => break,
            _ => {}
        }
    }
    assert!(rings <= 6, "the victim got {rings} rings");
}

#[tokio::test]
async fn f5_a_client_that_never_reads_is_dropped() {
    let srv = server(|c| {
        c.outbound_queue = 64;
        c.max_custom_data = 60 * 1024;
        c.max_message_bytes = 64 * 1024;
    })
    .await;
    // sleepy never reads after its welcome.
    let (_sleepy, _) = Raw::hello(&srv, "sleepy", "d", None).await;
    let (mut caller, _) = Raw::hello(&srv, "caller", "d", None).await;
    let big = "x".repeat(50 * 1024);
    for i in 0..2000 {
        let invite = ClientMessage::new(
            rid(&format!("i{i}")),
            Command::Invite(
                InviteRequest::new(vec![UserId::new("sleepy").unwrap()], CallType::Voice)
                    .with_custom_data(Some(
                        invitation_core::CustomData::with_limit(&big, 60 * 1024).unwrap(),
                    )),
            ),
        );
        caller.send(&invite).await;
        let want = rid(&format!("i{i}"));
        let m = caller
            .until(|b| b.success().is_some_and(|(re, _)| *re == want))
            .await;
        let Some((_, ReplyResult::Invited { call_id: call, .. })) = m.body.success() else {
            panic!("{m:?}")
        };
        caller
            .send(&ClientMessage::new(
                rid(&format!("c{i}")),
                Command::Cancel {
                    call_id: call,
                    custom_data: None,
                },
            ))
            .await;
        if srv
            .metrics
            .too_slow
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
        {
            break;
        }
    }
    assert!(
        srv.metrics
            .too_slow
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1,
        "the sleepy client was dropped"
    );
    caller.ping().await;
}

// ----- operations ---------------------------------------------------------

#[tokio::test]
async fn healthz_and_metrics() {
    let srv = server(|_| {}).await;
    let (mut alice, _) = Raw::hello(&srv, "alice", "d", None).await;
    let (mut bob, _) = Raw::hello(&srv, "bob", "d", None).await;
    alice.send(&invite_msg("r1", "bob")).await;
    invited(&mut alice).await;
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
    let health = http_exchange(&srv, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(health.starts_with("HTTP/1.1 200") && health.ends_with("ok\n"));
    let metrics = http_exchange(&srv, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(metrics.contains("invitation_sessions 2"), "{metrics}");
    assert!(metrics.contains("invitation_invitations_total 1"));
    assert!(metrics.contains("invitation_invite_to_ring_seconds_count 1"));
    assert!(
        http_exchange(&srv, b"GET /nope HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404")
    );
}

#[tokio::test]
async fn graceful_shutdown_tells_clients() {
    let srv = server(|_| {}).await;
    let (mut raw, _) = Raw::hello(&srv, "alice", "d", None).await;
    let addr = srv.addr;
    let stopping = tokio::spawn(srv.stop());
    let (end, seen) = raw.until_closed().await;
    assert!(seen.iter().any(|m| matches!(
        m.body,
        ServerBody::Closing {
            reason: CloseReason::ShuttingDown
        }
    )));
    assert_eq!(end, Ended::Code(1001));
    tokio::time::timeout(SOON, stopping).await.unwrap().unwrap();
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn a11_silent_peer_is_pinged_then_dropped_within_the_heartbeat_window() {
    let srv = server(|c| {
        c.ping_every_s = 1;
        c.dead_after_s = 2;
    })
    .await;
    let (mut raw, _) = Raw::hello(&srv, "quiet", "d", None).await;
    raw.recv().await; // the sync
    // From now on read the raw socket, below tungstenite: nothing answers
    // the server's pings, as with a peer that vanished without a FIN.
    let stream = match raw.ws.get_mut() {
        tokio_tungstenite::MaybeTlsStream::Plain(s) => s,
        _ => unreachable!(),
    };
    let started = tokio::time::Instant::now();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(SOON, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Err(_) => panic!("the silent peer was never dropped"),
        }
    }
    assert_eq!(
        bytes.first(),
        Some(&0x89),
        "the first thing sent is a ping frame"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(4),
        "dropped after {took:?}"
    );
}

/// Every event a ring timeout causes is timed in the lateness histogram
/// (the benchmark reads it), also when other traffic reaches the server
/// while the timers are due.
#[tokio::test]
async fn timeout_events_are_timed() {
    use invitation_core::protocol::{ClientMessage, Command, Event, InviteRequest};
    use invitation_core::{CallType, RequestId, UserId};
    let srv = server(|_| {}).await;
    let mut callers = Vec::new();
    for i in 0..20 {
        let (mut raw, _) = Raw::hello(&srv, &format!("caller{i}"), "d", None).await;
        raw.send(&ClientMessage::new(
            RequestId::new(format!("i{i}")).unwrap(),
            Command::Invite(
                InviteRequest::new(
                    vec![UserId::new(format!("offline{i}")).unwrap()],
                    CallType::Voice,
                )
                .with_timeout_s(Some(1)),
            ),
        ))
        .await;
        callers.push(raw);
    }
    // Each caller hangs up its socket as soon as it has heard the end: the
    // closes reach the server while later timers are due.
    for mut raw in callers {
        raw.until(|b| {
            matches!(
                b,
                ServerBody::Event {
                    event: Event::CallEnded { .. },
                    ..
                }
            )
        })
        .await;
    }
    // callee_outcome + call_ended for each caller, all written before the
    // last call_ended was read.
    assert_eq!(srv.metrics.timer_lateness.count(), 40);
}
