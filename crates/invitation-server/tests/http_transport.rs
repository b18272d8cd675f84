//! The HTTP transport against a real `invitation-server` on 127.0.0.1:0,
//! request by request: what a session may hold is bounded exactly like a
//! WebSocket connection (slots, per-address caps, the device cap, the
//! bytes kept for a client that does not poll), an abandoned session is
//! probed and then dropped after the dead-peer interval (its slot freed),
//! unknown ids get nothing, and the client notices a silent server.

mod common;

use std::time::Duration;

use common::*;
use invitation::transport::http::HttpTransport;
use invitation::transport::{Transport, TransportErrorKind};
use invitation_core::DecodeLimits;
use invitation_core::protocol::{CloseReason, ServerBody, ServerMessage};
use invitation_server::RunningServer;
use reqwest::StatusCode;
use std::sync::atomic::Ordering;
use tokio::time::{Instant, timeout};

/// One raw HTTP session: exact requests, exact answers.
struct Session {
    http: reqwest::Client,
    base: String,
    id: String,
    /// Frames received so far (the next poll's `from`).
    from: u64,
}

/// A client that keeps one TCP connection and reuses it, so the only
/// slots taken besides the sessions' are that connection's.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()
        .unwrap()
}

async fn create(http: &reqwest::Client, srv: &RunningServer) -> Result<Session, StatusCode> {
    let base = format!("http://{}", srv.addr);
    let r = timeout(SOON, http.post(format!("{base}/sessions")).send())
        .await
        .expect("answered in time")
        .unwrap();
    if r.status() != StatusCode::CREATED {
        return Err(r.status());
    }
    let body: serde_json::Value = r.json().await.unwrap();
    Ok(Session {
        http: http.clone(),
        base,
        id: body["session"].as_str().unwrap().to_owned(),
        from: 0,
    })
}

impl Session {
    async fn post(&self, text: &str) -> StatusCode {
        let url = format!("{}/sessions/{}/messages", self.base, self.id);
        timeout(SOON, self.http.post(url).body(text.to_owned()).send())
            .await
            .expect("answered in time")
            .unwrap()
            .status()
    }

    async fn hello(&self, srv: &RunningServer, user: &str, device: &str) {
        let hello = serde_json::json!({"v": 1, "id": "hello", "type": "hello",
            "device": device, "token": srv.token(user, user)});
        assert_eq!(self.post(&hello.to_string()).await, StatusCode::ACCEPTED);
    }

    /// One poll: status, messages, and the close header.
    async fn poll(&mut self, wait_ms: u64) -> (StatusCode, Vec<ServerMessage>, Option<String>) {
        let url = format!(
            "{}/sessions/{}/messages?from={}&wait_ms={wait_ms}",
            self.base, self.id, self.from
        );
        let r = timeout(SOON, self.http.get(url).send())
            .await
            .expect("answered in time")
            .unwrap();
        let status = r.status();
        let closed = r
            .headers()
            .get("invitation-closed")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = r.text().await.unwrap();
        let messages: Vec<ServerMessage> = if status == StatusCode::OK {
            body.lines()
                .map(|l| ServerMessage::decode(l, &DecodeLimits::default()).unwrap())
                .collect()
        } else {
            Vec::new()
        };
        self.from += messages.len() as u64;
        (status, messages, closed)
    }

    /// Polls until `n` messages came (each poll answers as soon as there
    /// are any).
    async fn messages(&mut self, n: usize) -> Vec<ServerMessage> {
        let mut got = Vec::new();
        while got.len() < n {
            let (status, m, _) = self.poll(5_000).await;
            assert_eq!(status, StatusCode::OK, "got so far: {got:?}");
            assert!(
                !m.is_empty(),
                "a 5 s poll with nothing; got so far: {got:?}"
            );
            got.extend(m);
        }
        got
    }

    async fn delete(&self) -> StatusCode {
        let url = format!("{}/sessions/{}", self.base, self.id);
        timeout(SOON, self.http.delete(url).send())
            .await
            .expect("answered in time")
            .unwrap()
            .status()
    }
}

/// Watches the server's open-sessions gauge until it reads `n` (checked
/// every 10 ms, for at most `SOON`); panics with the last reading.
async fn sessions_gauge_reaches(srv: &RunningServer, n: i64) {
    let read = || srv.metrics.sessions.load(Ordering::Relaxed);
    let reached = timeout(SOON, async {
        while read() != n {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        reached.is_ok(),
        "sessions gauge stayed at {}, not {n}",
        read()
    );
}

/// Each session holds a connection slot from creation to its end, next to
/// the slot of the TCP connection carrying the requests: with room for
/// three, one connection and two sessions fill the server; a third session
/// is refused (503) until one ends, and then fits.
#[tokio::test]
async fn a_session_holds_a_slot_until_it_ends() {
    let srv = server(|c| c.max_connections = 3).await;
    let http = http();
    let a = create(&http, &srv).await.expect("first session");
    let _b = create(&http, &srv).await.expect("second session");
    assert_eq!(
        create(&http, &srv).await.err(),
        Some(StatusCode::SERVICE_UNAVAILABLE),
        "the connection and two sessions fill three slots"
    );
    assert_eq!(a.delete().await, StatusCode::NO_CONTENT);
    assert!(
        create(&http, &srv).await.is_ok(),
        "the ended session gave its slot back"
    );
}

/// The per-address cap counts sessions too (429 past it).
#[tokio::test]
async fn sessions_count_against_the_per_address_cap() {
    let srv = server(|c| c.max_connections_per_ip = 3).await;
    let http = http();
    let _a = create(&http, &srv).await.expect("first session");
    let b = create(&http, &srv).await.expect("second session");
    assert_eq!(
        create(&http, &srv).await.err(),
        Some(StatusCode::TOO_MANY_REQUESTS)
    );
    assert_eq!(b.delete().await, StatusCode::NO_CONTENT);
    assert!(create(&http, &srv).await.is_ok());
}

/// A session nobody polls: the held poll is answered empty when the
/// heartbeat wants a sign of life (after `ping_every_s`); with no further
/// request the session is dropped after `dead_after_s`, the device leaves
/// and the slot is free again.
#[tokio::test]
async fn an_abandoned_session_is_probed_then_dropped_and_frees_its_slot() {
    let srv = server(|c| {
        c.ping_every_s = 1;
        c.dead_after_s = 2;
        c.max_connections = 2;
    })
    .await;
    let http = http();
    let mut s = create(&http, &srv).await.unwrap();
    s.hello(&srv, "quiet", "d").await;
    let first = s.messages(2).await;
    assert!(
        matches!(first[0].body, ServerBody::Welcome { .. }),
        "{first:?}"
    );
    assert!(matches!(first[1].body, ServerBody::Sync(_)), "{first:?}");
    assert_eq!(srv.metrics.sessions.load(Ordering::Relaxed), 1);
    assert_eq!(
        create(&http, &srv).await.err(),
        Some(StatusCode::SERVICE_UNAVAILABLE),
        "the session holds the second slot"
    );
    // The last sign of life: a poll that would wait 30 s.
    let polled = Instant::now();
    let (status, m, closed) = s.poll(30_000).await;
    let probe = polled.elapsed();
    assert_eq!((status, m.len(), closed), (StatusCode::OK, 0, None));
    assert!(
        probe >= Duration::from_millis(900) && probe < Duration::from_secs(2),
        "the probe answered the held poll after {probe:?}"
    );
    // Now silence.
    sessions_gauge_reaches(&srv, 0).await;
    let dropped = polled.elapsed();
    assert!(
        dropped >= Duration::from_millis(1900) && dropped < Duration::from_secs(4),
        "dropped {dropped:?} after the last request"
    );
    assert!(
        create(&http, &srv).await.is_ok(),
        "the dropped session gave its slot back"
    );
    let (status, _, _) = s.poll(0).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "the session is gone");
}

/// The per-user device cap holds for HTTP sessions: a second device over
/// the cap hears `closing too_many_devices` instead of `welcome`, with the
/// close header, and its session ends.
#[tokio::test]
async fn the_device_cap_holds_for_http_sessions() {
    let srv = server(|c| c.max_devices_per_user = 1).await;
    let http = http();
    let mut first = create(&http, &srv).await.unwrap();
    first.hello(&srv, "carol", "phone").await;
    first.messages(2).await;
    let mut second = create(&http, &srv).await.unwrap();
    second.hello(&srv, "carol", "laptop").await;
    let (status, m, closed) = second.poll(5_000).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(m.len(), 1, "{m:?}");
    assert!(
        matches!(
            m[0].body,
            ServerBody::Closing {
                reason: CloseReason::TooManyDevices
            }
        ),
        "{m:?}"
    );
    assert_eq!(closed.as_deref(), Some("too many devices"));
    let late = second.post("{}").await;
    assert!(
        late == StatusCode::GONE || late == StatusCode::NOT_FOUND,
        "the session is over: {late}"
    );
}

/// What a session keeps for a client that does not poll is capped in
/// bytes: past the cap the session waits `write_timeout_s` for a poll and
/// then drops the client as too slow (and the device leaves); the client's
/// further messages are refused, not queued.
#[tokio::test]
async fn a_session_that_is_not_polled_is_dropped_past_its_byte_cap() {
    let srv = server(|c| {
        c.write_timeout_s = 1;
        c.send_buffer_bytes = 4096;
        c.max_message_bytes = 1024;
    })
    .await;
    let http = http();
    let mut alice = create(&http, &srv).await.unwrap();
    alice.hello(&srv, "alice", "phone").await;
    alice.messages(2).await;
    // Every ping is answered by a `pong` kept for alice; the cap is
    // 2 x 4 KiB, about 180 of them. She posts pings and never polls.
    let mut accepted = 0;
    for i in 0..400 {
        let ping = format!(r#"{{"v":1,"id":"p{i}","type":"ping"}}"#);
        if alice.post(&ping).await != StatusCode::ACCEPTED {
            break;
        }
        accepted += 1;
    }
    eprintln!("pings taken before the session stopped reading: {accepted}");
    assert!(accepted > 100, "only {accepted} pings were taken");
    assert!(accepted < 400, "the session never stopped taking pings");
    // Alice never polls again: dropped once the write deadline passes.
    let too_slow = timeout(SOON, async {
        while srv.metrics.too_slow.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(too_slow.is_ok(), "alice was never dropped as too slow");
    sessions_gauge_reaches(&srv, 0).await;
    let (status, m, _) = alice.poll(0).await;
    assert!(
        status == StatusCode::NOT_FOUND || (status == StatusCode::OK && m.is_empty()),
        "nothing kept for a dropped client: {status} {m:?}"
    );
}

/// An id nobody was given reaches nothing; bad queries and methods are
/// refused with their status.
#[tokio::test]
async fn unknown_ids_and_bad_requests_are_refused() {
    let srv = server(|_| {}).await;
    let http = http();
    let base = format!("http://{}", srv.addr);
    let s = create(&http, &srv).await.unwrap();
    assert_eq!(s.id.len(), 32);
    let guess = "0".repeat(32);
    for (method, path, want) in [
        ("GET", format!("/sessions/{guess}/messages?from=0"), 404),
        ("POST", format!("/sessions/{guess}/messages"), 404),
        ("DELETE", format!("/sessions/{guess}"), 404),
        ("GET", format!("/sessions/{}/messages", s.id), 400),
        ("GET", format!("/sessions/{}/messages?from=7", s.id), 400),
        ("PUT", format!("/sessions/{}/messages", s.id), 405),
        ("GET", "/sessions".to_owned(), 405),
    ] {
        let r = http
            .request(method.parse().unwrap(), format!("{base}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), want, "{method} {path}");
    }
    // A body over the message limit is refused and closes the session.
    let big = format!("{{\"v\":1,\"pad\":\"{}\"}}", "x".repeat(20 * 1024));
    assert_eq!(s.post(&big).await, StatusCode::PAYLOAD_TOO_LARGE);
}

/// The client notices a server that stops answering: a poll with no
/// answer within its wait plus grace ends the connection with a
/// retryable timeout (the driver then reconnects).
#[tokio::test]
async fn the_client_notices_a_silent_server() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A server that opens sessions and then never answers a poll.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = sock.read(&mut buf).await.unwrap();
            if buf[..n].starts_with(b"POST /sessions ") {
                let body = r#"{"session":"abc"}"#;
                let answer = format!(
                    "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                sock.write_all(answer.as_bytes()).await.unwrap();
            } else {
                held.push(sock); // a poll: never answered
            }
        }
    });
    let transport = HttpTransport::new(format!("http://{addr}/"))
        .poll_timing(Duration::from_millis(300), Duration::from_millis(300));
    let mut conn = transport.connect().await.expect("a session");
    let started = Instant::now();
    let e = timeout(SOON, conn.recv())
        .await
        .expect("noticed in time")
        .expect_err("no message from a silent server");
    let took = started.elapsed();
    assert_eq!(e.kind(), TransportErrorKind::Timeout, "{e}");
    assert!(e.is_retryable());
    assert!(
        took >= Duration::from_millis(550) && took < Duration::from_secs(3),
        "noticed after {took:?}"
    );
    assert_eq!(
        conn.recv().await.expect_err("stays closed").kind(),
        TransportErrorKind::Closed
    );
    fake.abort();
}

/// A graceful stop reaches HTTP clients too: the held poll is answered
/// with `closing shutting_down` and the close header, and the server
/// stops within its grace period (no session is left behind).
#[tokio::test]
async fn a_graceful_stop_tells_a_polling_client() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = server(|_| {}).await;
    let http = http();
    let mut s = create(&http, &srv).await.unwrap();
    s.hello(&srv, "dora", "d").await;
    s.messages(2).await;
    // The poll's bytes are in the server's socket before the stop begins.
    let mut raw = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let request = format!(
        "GET /sessions/{}/messages?from=2&wait_ms=30000 HTTP/1.1\r\nhost: x\r\n\r\n",
        s.id
    );
    raw.write_all(request.as_bytes()).await.unwrap();
    let stopping = tokio::spawn(srv.stop());
    let mut answer = Vec::new();
    timeout(SOON, raw.read_to_end(&mut answer))
        .await
        .expect("the held poll is answered and the connection closed")
        .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    assert!(
        answer.contains("invitation-closed: shutting down"),
        "{answer}"
    );
    assert!(
        answer.contains(r#""type":"closing","reason":"shutting_down""#),
        "{answer}"
    );
    timeout(SOON, stopping)
        .await
        .expect("stopped within the grace period")
        .unwrap();
}

/// The Origin allow-list applies to every HTTP transport request, as to
/// the WebSocket upgrade.
#[tokio::test]
async fn origins_are_checked_on_http_requests() {
    let srv = server(|c| c.allowed_origins = vec!["https://app.example".into()]).await;
    let http = http();
    let url = format!("http://{}/sessions", srv.addr);
    let refused = http
        .post(&url)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let allowed = http
        .post(&url)
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), StatusCode::CREATED);
    let native = http.post(&url).send().await.unwrap();
    assert_eq!(
        native.status(),
        StatusCode::CREATED,
        "no Origin: a native app"
    );
}

/// A kept-alive TCP connection of the HTTP transport that sends no next
/// request is closed after the handshake timeout (it holds a slot).
#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = server(|c| c.handshake_timeout_s = 1).await;
    let mut raw = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    raw.write_all(b"POST /sessions HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    timeout(SOON, raw.read_to_end(&mut answer))
        .await
        .expect("the idle connection was closed")
        .unwrap();
    let took = started.elapsed();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 201 Created"), "{answer}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "closed after {took:?}"
    );
}

/// Why the client cannot open a session, said apart: a full server is
/// worth retrying (I/O kind, the status named); a server that does not
/// serve the HTTP transport is not (protocol kind).
#[tokio::test]
async fn the_client_says_why_it_cannot_open_a_session() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Full: the request's own connection takes the only slot.
    let srv = server(|c| c.max_connections = 1).await;
    let e = match HttpTransport::new(format!("http://{}/", srv.addr))
        .connect()
        .await
    {
        Ok(_) => panic!("the server has no slot for a session"),
        Err(e) => e,
    };
    assert_eq!(e.kind(), TransportErrorKind::Io, "{e}");
    assert!(e.is_retryable());
    assert_eq!(
        e.to_string(),
        format!(
            "{} answered opening a session with HTTP 503 Service Unavailable",
            srv.addr
        )
    );
    // Some other HTTP server.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let other = tokio::spawn(async move {
        let (mut sock, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let _ = sock.read(&mut buf).await.unwrap();
        sock.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
    });
    let e = match HttpTransport::new(format!("http://{addr}/"))
        .connect()
        .await
    {
        Ok(_) => panic!("not an invitation server"),
        Err(e) => e,
    };
    assert_eq!(e.kind(), TransportErrorKind::Protocol, "{e}");
    assert!(!e.is_retryable());
    assert_eq!(
        e.to_string(),
        format!("{addr} does not serve the HTTP transport (HTTP 404 Not Found)")
    );
    other.await.unwrap();
}

/// Opening a session counts against the per-address rate of new
/// connections, as opening a WebSocket does (429 past it).
#[tokio::test]
async fn new_sessions_count_against_the_per_address_rate() {
    let srv = server(|c| {
        c.conn_rate_per_ip = 0.001;
        c.conn_burst_per_ip = 3.0;
    })
    .await;
    let http = http();
    // The one TCP connection takes a token, each session one more.
    let _a = create(&http, &srv).await.expect("first session");
    let _b = create(&http, &srv).await.expect("second session");
    assert_eq!(
        create(&http, &srv).await.err(),
        Some(StatusCode::TOO_MANY_REQUESTS)
    );
}
