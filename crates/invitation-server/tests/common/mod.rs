//! Helpers for tests against a real `invitation-server` on 127.0.0.1:0: the
//! server, and a raw protocol client for bad input. (SDK clients over
//! WebSocket: tests/suite.)

#![allow(dead_code, unreachable_pub)]

pub mod nats;
pub mod tls;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use invitation_core::DecodeLimits;
use invitation_core::protocol::{ClientMessage, ServerBody, ServerMessage};
use invitation_server::{Config, RunningServer, Server};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Generous bound for anything that should happen "now" over loopback.
pub const SOON: Duration = Duration::from_secs(10);

pub const SECRET: &str = "test-secret-0123456789abcdef";

/// A server on 127.0.0.1:0 with a fixed secret and short timers.
pub async fn server(tweak: impl FnOnce(&mut Config)) -> RunningServer {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        secret: Some(SECRET.to_owned()),
        caller_gone_grace_s: 1,
        invite_rate_per_user: 1000.0,
        invite_burst_per_user: 1000.0,
        conn_rate_per_ip: 10_000.0,
        conn_burst_per_ip: 10_000.0,
        command_rate_per_user: 10_000.0,
        command_burst_per_user: 10_000.0,
        command_rate_per_conn: 10_000.0,
        command_burst_per_conn: 10_000.0,
        // Load shedding answers `unavailable` when the machine is busy (a
        // loaded CI box): tests that are not about shedding must not see it.
        shed_invites_after_ms: 0,
        ..Config::default()
    };
    tweak(&mut config);
    Server::bind(config).await.unwrap().spawn()
}

/// A raw protocol client: exact frames in, exact messages out.
pub struct Raw {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a raw connection ended.
#[derive(Debug, PartialEq)]
pub enum Ended {
    /// A close frame with this code.
    Code(u16),
    /// The stream ended without a close frame.
    Eof,
}

impl Raw {
    pub async fn connect(srv: &RunningServer) -> Raw {
        let (ws, _) = tokio_tungstenite::connect_async(srv.url()).await.unwrap();
        Raw { ws }
    }

    /// Connects and says hello with a valid token; reads the welcome.
    pub async fn hello(
        srv: &RunningServer,
        user: &str,
        device: &str,
        last_seq: Option<u64>,
    ) -> (Raw, ServerMessage) {
        let mut raw = Raw::connect(srv).await;
        let token = srv.token(user, user);
        raw.send_hello(&token, device, last_seq).await;
        let welcome = raw.recv().await;
        assert!(
            matches!(welcome.body, ServerBody::Welcome { .. }),
            "{welcome:?}"
        );
        (raw, welcome)
    }

    pub async fn send_hello(&mut self, token: &str, device: &str, last_seq: Option<u64>) {
        let mut hello = serde_json::json!({"v": 1, "id": "hello", "type": "hello", "device": device, "token": token});
        if let Some(s) = last_seq {
            hello["last_seq"] = s.into();
        }
        self.text(&hello.to_string()).await;
    }

    pub async fn text(&mut self, s: &str) {
        self.ws.send(Message::text(s.to_owned())).await.unwrap();
    }

    pub async fn send(&mut self, m: &ClientMessage) {
        self.text(&m.encode()).await;
    }

    /// The next protocol message (skips pings).
    pub async fn recv(&mut self) -> ServerMessage {
        self.try_recv().await.expect("a message")
    }

    pub async fn try_recv(&mut self) -> Result<ServerMessage, Ended> {
        tokio::time::timeout(SOON, async {
            loop {
                match self.ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        return Ok(
                            ServerMessage::decode(t.as_str(), &DecodeLimits::default()).unwrap()
                        );
                    }
                    Some(Ok(Message::Close(f))) => {
                        return Err(Ended::Code(f.map_or(1005, |f| u16::from(f.code))));
                    }
                    Some(Ok(_)) => continue,
                    Some(Err(_)) | None => return Err(Ended::Eof),
                }
            }
        })
        .await
        .expect("the server answers in time")
    }

    /// Reads until `f` matches.
    pub async fn until(&mut self, f: impl Fn(&ServerBody) -> bool) -> ServerMessage {
        loop {
            let m = self.recv().await;
            if f(&m.body) {
                return m;
            }
        }
    }

    /// Reads until the connection ends; returns how, and the messages before.
    pub async fn until_closed(&mut self) -> (Ended, Vec<ServerMessage>) {
        let mut seen = Vec::new();
        loop {
            match self.try_recv().await {
                Ok(m) => seen.push(m),
                Err(e) => return (e, seen),
            }
        }
    }

    /// A round trip proving the connection (and the server) still work.
    pub async fn ping(&mut self) {
        self.ping_collect().await;
    }

    /// Pings and returns every message that arrived before the pong.
    pub async fn ping_collect(&mut self) -> Vec<ServerMessage> {
        self.text(r#"{"v":1,"id":"ping","type":"ping"}"#).await;
        let mut before = Vec::new();
        loop {
            let m = self.recv().await;
            if matches!(m.body, ServerBody::Pong { .. }) {
                return before;
            }
            before.push(m);
        }
    }
}

/// A fresh directory under the system temporary directory (a data
/// directory for a durable server), removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let mut bytes = [0u8; 8];
        getrandom::fill(&mut bytes).unwrap();
        let name: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("invitation-test-{tag}-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What [`receiver`] passes on: each request's signature header and body.
pub type Signed = tokio::sync::mpsc::UnboundedReceiver<(Option<String>, String)>;

/// A real HTTP receiver (a webhook endpoint, a push gateway) on
/// 127.0.0.1:0: answers 204 and passes on each request's signature header
/// and body. Returns its URL.
pub async fn receiver() -> (String, Signed) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    receiver_on(listener)
}

/// [`receiver`] on a listener of the caller's.
pub fn receiver_on(listener: tokio::net::TcpListener) -> (String, Signed) {
    let (app, rx) = signed_router(|| true);
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, rx)
}

/// The receiving end of [`receiver`], for any listener: `POST /hook` passes
/// on each request's signature header and body, then answers 204 when
/// `open()` says so, else 503 (an endpoint that is down).
pub fn signed_router(
    open: impl Fn() -> bool + Clone + Send + Sync + 'static,
) -> (axum::Router, Signed) {
    use axum::http::{HeaderMap, StatusCode};
    use invitation_server::webhook::SIGNATURE_HEADER;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let tx = tx.clone();
            let open = open.clone();
            async move {
                let signature = headers
                    .get(SIGNATURE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let _ = tx.send((signature, body));
                if open() {
                    StatusCode::NO_CONTENT
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                }
            }
        }),
    );
    (app, rx)
}

/// The next request [`receiver`] got, its signature verified with
/// `secret`, as JSON.
pub async fn next_signed(rx: &mut Signed, secret: &str) -> serde_json::Value {
    let (signature, body) = tokio::time::timeout(SOON, rx.recv())
        .await
        .expect("a request within the deadline")
        .expect("the receiver runs");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    invitation_server::webhook::verify(
        &[secret],
        signature.as_deref(),
        body.as_bytes(),
        now,
        Duration::from_secs(300),
    )
    .unwrap_or_else(|e| panic!("{e}: {signature:?} {body}"));
    serde_json::from_str(&body).unwrap()
}
