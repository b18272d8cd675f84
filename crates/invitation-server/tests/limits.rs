//! Abuse limits of the server, over real sockets on 127.0.0.1:0: the
//! per-address connection cap, health and metrics when the server is full,
//! no panic (and no lost slot) from huge token times, coarse refusals, the
//! per-user device cap.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use invitation_core::DecodeLimits;
use invitation_core::protocol::{CloseReason, ServerBody, ServerMessage};
use invitation_server::{Claims, Config, RunningServer, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// Bound for anything that should happen "now" over loopback.
const SOON: Duration = Duration::from_secs(10);

async fn server(tweak: impl FnOnce(&mut Config)) -> RunningServer {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        secret: Some("test-secret-0123456789abcdef".to_owned()),
        conn_rate_per_ip: 10_000.0,
        conn_burst_per_ip: 10_000.0,
        ..Config::default()
    };
    tweak(&mut config);
    Server::bind(config).await.unwrap().spawn()
}

/// A TCP connection from `from` (any 127.x.y.z address works on Linux).
async fn tcp_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    tokio::time::timeout(SOON, socket.connect(to))
        .await
        .expect("connects in time")
        .unwrap()
}

/// Sends a raw HTTP request and reads until the server closes; "" when it
/// dropped the connection without a word.
async fn http(mut stream: TcpStream, request: &str) -> String {
    let _ = stream.write_all(request.as_bytes()).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(SOON, stream.read_to_end(&mut out))
        .await
        .expect("the server answers or closes in time");
    if read.is_err() && out.is_empty() {
        return String::new(); // reset
    }
    String::from_utf8_lossy(&out).into_owned()
}

const HEALTH: &str = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
const METRICS: &str = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
const UPGRADE: &str = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// With every connection slot held (here by silent sockets still in their
/// handshake), `/healthz` and `/metrics` still answer from the probe
/// reserve; anything else gets 503.
#[tokio::test]
async fn health_and_metrics_answer_when_the_server_is_full() {
    let srv = server(|c| c.max_connections = 2).await;
    // Accepted in order: these two take both slots.
    let a = tcp_from([127, 0, 0, 1], srv.addr).await;
    let b = tcp_from([127, 0, 0, 1], srv.addr).await;
    let health = http(tcp_from([127, 0, 0, 1], srv.addr).await, HEALTH).await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health:?}");
    assert!(health.ends_with("ok\n"));
    let metrics = http(tcp_from([127, 0, 0, 1], srv.addr).await, METRICS).await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics:?}");
    assert!(metrics.contains("invitation_connections_refused_total{reason=\"capacity\"}"));
    let upgrade = http(tcp_from([127, 0, 0, 1], srv.addr).await, UPGRADE).await;
    assert!(upgrade.starts_with("HTTP/1.1 503"), "{upgrade:?}");
    drop((a, b));
    srv.stop().await;
}

/// One address may hold at most `max_connections_per_ip` connections;
/// others are not affected.
#[tokio::test]
async fn connections_per_address_are_capped() {
    let srv = server(|c| c.max_connections_per_ip = 2).await;
    let a = tcp_from([127, 0, 0, 1], srv.addr).await;
    let b = tcp_from([127, 0, 0, 1], srv.addr).await;
    let third = http(tcp_from([127, 0, 0, 1], srv.addr).await, HEALTH).await;
    assert_eq!(third, "", "dropped at accept");
    let other = http(tcp_from([127, 0, 0, 2], srv.addr).await, HEALTH).await;
    assert!(other.starts_with("HTTP/1.1 200"), "{other:?}");
    assert!(
        srv.metrics
            .render()
            .contains("invitation_connections_refused_total{reason=\"per_ip\"} 1")
    );
    drop((a, b));
    srv.stop().await;
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn hello(srv: &RunningServer, token: &str, device: &str) -> Ws {
    let (mut ws, _) = tokio::time::timeout(SOON, tokio_tungstenite::connect_async(srv.url()))
        .await
        .expect("connects in time")
        .expect("upgrade");
    let hello =
        serde_json::json!({"v": 1, "id": "h", "type": "hello", "device": device, "token": token});
    ws.send(Message::text(hello.to_string())).await.unwrap();
    ws
}

/// The next protocol message; `None` once the connection closed.
async fn next(ws: &mut Ws) -> Option<ServerMessage> {
    tokio::time::timeout(SOON, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    return Some(
                        ServerMessage::decode(t.as_str(), &DecodeLimits::default()).unwrap(),
                    );
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .expect("the server answers in time")
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(sub: &str, exp: u64) -> Claims {
    Claims {
        sub: sub.into(),
        name: sub.into(),
        exp,
        iat: u64::MAX,
        aud: "invitation".into(),
        iss: None,
        nbf: None,
    }
}

/// A validly signed token with `exp` = 2^63 (and a huge `iat`) panicked the
/// connection task and leaked its slot: four of them filled a cap of four.
/// Now each gets a welcome, and once closed their slots serve others.
#[tokio::test]
async fn huge_token_times_neither_panic_nor_leak_slots() {
    let srv = server(|c| c.max_connections = 4).await;
    let token = srv.authority.sign(&claims("alice", 1 << 63));
    for round in 0..3 {
        let mut open = Vec::new();
        for i in 0..4 {
            let device = format!("d{i}");
            let mut ws = hello(&srv, &token, &device).await;
            let welcome = next(&mut ws).await;
            assert!(
                matches!(
                    welcome.as_ref().map(|m| &m.body),
                    Some(ServerBody::Welcome { .. })
                ),
                "round {round}, device {i}: {welcome:?}"
            );
            open.push(ws);
        }
        // Close all four and wait until the server saw each close.
        for mut ws in open {
            ws.close(None).await.unwrap();
            while next(&mut ws).await.is_some() {}
        }
        // The slots come back as the tasks end: a fifth session gets in
        // (retried until the deadline; each refused try is a dropped socket).
        tokio::time::timeout(SOON, async {
            loop {
                let Ok((mut ws, _)) = tokio_tungstenite::connect_async(srv.url()).await else {
                    tokio::task::yield_now().await;
                    continue;
                };
                let hello = serde_json::json!({"v": 1, "id": "h", "type": "hello", "device": "x", "token": token});
                if ws.send(Message::text(hello.to_string())).await.is_ok()
                    && next(&mut ws).await.is_some()
                {
                    ws.close(None).await.ok();
                    while next(&mut ws).await.is_some() {}
                    return;
                }
            }
        })
        .await
        .expect("a slot was given back");
    }
    srv.stop().await;
}

/// Whatever is wrong with a token, the client hears `unauthorized`, not the
/// reason (an "expired" would prove the signature right).
#[tokio::test]
async fn refusals_do_not_say_why() {
    let srv = server(|_| {}).await;
    let expired = srv.authority.sign(&claims("alice", unix_now() - 10));
    let forged =
        invitation_server::Authority::new(b"another-secret-of-32-bytes-long!", "invitation", None)
            .sign(&claims("alice", unix_now() + 60));
    for token in [expired.as_str(), forged.as_str(), "not.a.token", ""] {
        let mut ws = hello(&srv, token, "d").await;
        match next(&mut ws).await.map(|m| m.body) {
            Some(ServerBody::Error(e)) => assert_eq!(e.message, "unauthorized", "{token}"),
            other => panic!("{token}: expected an error, got {other:?}"),
        }
    }
    srv.stop().await;
}

/// One device more than `max_devices_per_user` is told
/// `closing: too_many_devices`; the others keep working.
#[tokio::test]
async fn one_device_too_many_is_refused() {
    let srv = server(|c| c.max_devices_per_user = 2).await;
    let token = srv.authority.sign(&claims("alice", unix_now() + 3600));
    let mut first = hello(&srv, &token, "d1").await;
    let mut second = hello(&srv, &token, "d2").await;
    for ws in [&mut first, &mut second] {
        assert!(matches!(
            next(ws).await.map(|m| m.body),
            Some(ServerBody::Welcome { .. })
        ));
    }
    let mut third = hello(&srv, &token, "d3").await;
    let mut seen = Vec::new();
    while let Some(m) = next(&mut third).await {
        seen.push(m.body);
    }
    assert!(
        seen.contains(&ServerBody::Closing {
            reason: CloseReason::TooManyDevices
        }),
        "{seen:?}"
    );
    assert!(!seen.iter().any(|b| matches!(b, ServerBody::Welcome { .. })));
    first
        .send(Message::text(r#"{"v":1,"id":"p","type":"ping"}"#))
        .await
        .unwrap();
    loop {
        match next(&mut first).await.map(|m| m.body) {
            Some(ServerBody::Pong { .. }) => break,
            Some(_) => {}
            None => panic!("the first device was closed"),
        }
    }
    srv.stop().await;
}
