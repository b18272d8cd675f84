//! The end-to-end flows (tests/suite), each run against both fixtures: the
//! in-process memory hub with the clock paused (`memory::*`) and this server
//! over WebSocket on 127.0.0.1:0 (`websocket::*`) and over the HTTP
//! transport (`http::*`: requests and long polls), the same server keeping
//! its state in a data directory (`durable::*`: every turn journaled before
//! its messages leave), and the server terminating TLS itself, its clients
//! dialing `wss://` (`wss::*`), and three nodes of a cluster on a real
//! NATS, each device on the next node (`cluster::*`; skipped, saying so,
//! without nats-server). Then what only makes
//! sense on the server: in-band token renewal. (A connection replaced by a
//! second one of the same device stays down: tests/client_auth.rs.)

mod common;
mod suite;

use invitation::prelude::*;
use suite::Fixture;

/// One test per flow and fixture.
macro_rules! flows {
    ($($flow:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(start_paused = true)]
                async fn $flow() {
                    crate::suite::$flow(&crate::suite::Memory::new()).await;
                }
            )*
        }
        mod websocket {
            $(
                #[tokio::test]
                async fn $flow() {
                    let fixture = crate::suite::Server::start().await;
                    crate::suite::$flow(&fixture).await;
                    fixture.stop().await;
                }
            )*
        }
        mod wss {
            $(
                #[tokio::test]
                async fn $flow() {
                    let fixture = crate::suite::Server::start_tls().await;
                    crate::suite::$flow(&fixture).await;
                    fixture.stop().await;
                }
            )*
        }
        mod http {
            $(
                #[tokio::test]
                async fn $flow() {
                    let fixture = crate::suite::Server::start_http().await;
                    crate::suite::$flow(&fixture).await;
                    fixture.stop().await;
                }
            )*
        }
        mod https {
            $(
                #[tokio::test]
                async fn $flow() {
                    let fixture = crate::suite::Server::start_https().await;
                    crate::suite::$flow(&fixture).await;
                    fixture.stop().await;
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test]
                async fn $flow() {
                    let Some(fixture) = crate::suite::Cluster::start(concat!("flows-", stringify!($flow))).await else {
                        return;
                    };
                    crate::suite::$flow(&fixture).await;
                    fixture.stop().await;
                }
            )*
        }
        mod durable {
            $(
                #[tokio::test]
                async fn $flow() {
                    let fixture = crate::suite::Server::start_durable().await;
                    crate::suite::$flow(&fixture).await;
                    fixture.stop().await;
                }
            )*
        }
    };
}

flows!(
    accept,
    cancel,
    timeout,
    decline,
    busy,
    answered_elsewhere,
    offline_callee,
    group_call,
    caller_gone,
    reconnect_while_ringing,
    act_from_a_callback,
    typed_command_results,
);

#[tokio::test]
async fn ws_client_renews_its_token_in_band() {
    let f = suite::Server::start().await;
    let alice = f.device("alice", "phone").await;
    alice
        .client
        .renew_token(f.0.token("alice", "ALICE"))
        .await
        .unwrap();
    let wrong = alice.client.renew_token(f.0.token("mallory", "M")).await;
    assert!(matches!(
        wrong,
        Err(ClientError::Command(CommandError::Rejected {
            code: invitation_core::ErrorCode::Unauthorized,
            ..
        }))
    ));
    // Still connected and working.
    let bob = f.device("bob", "phone").await;
    let call = suite::invite(&alice, &["bob"], 60).await.call_id;
    let r = bob.rec.wait_for(Callback::IncomingCallReceived, 1).await;
    assert_eq!(r.call_id, call);
    f.stop().await;
}

/// A TCP proxy whose connections the test can cut (both sockets dropped,
/// as a network path that fails).
struct Cutter {
    addr: std::net::SocketAddr,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Cutter {
    async fn to(upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let accept = tokio::spawn({
            let conns = conns.clone();
            async move {
                while let Ok((mut down, _)) = listener.accept().await {
                    let task = tokio::spawn(async move {
                        if let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await {
                            let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                        }
                    });
                    conns.lock().unwrap().push(task);
                }
            }
        });
        Self {
            addr,
            conns,
            accept,
        }
    }

    /// Cuts every connection open now; returns how many there were.
    fn cut(&self) -> usize {
        let conns = std::mem::take(&mut *self.conns.lock().unwrap());
        let open = conns.iter().filter(|t| !t.is_finished()).count();
        for t in conns {
            t.abort();
        }
        open
    }
}

/// Over HTTP, bob's long poll is cut while a call rings him, and alice
/// cancels while he is away: his client notices, opens a new session,
/// resumes from the last sequence number, and hears the ring once and the
/// cancel once, in that order.
#[tokio::test]
async fn http_poll_cut_mid_ring_loses_and_repeats_nothing() {
    use invitation::Callback::*;
    use invitation::ConnectionState;
    use invitation::transport::http::HttpTransport;
    let f = suite::Server::start_http().await;
    let path = Cutter::to(f.0.addr).await;
    let alice = f.device("alice", "phone").await;
    let bob = f
        .device_through(
            "bob",
            "phone",
            std::sync::Arc::new(HttpTransport::new(format!("http://{}/", path.addr))),
        )
        .await;
    let call = suite::invite(&alice, &["bob"], 60).await.call_id;
    bob.rec.wait_for(IncomingCallReceived, 1).await;
    let mut bob_events = bob.client.events();
    let cut = path.cut();
    assert!(cut >= 1, "bob's poll was in flight through the path");
    alice.client.cancel(&call).await.unwrap();
    let back = suite::next_event(&f, &mut bob_events, "a reconnect", |e| {
        matches!(e, AppEvent::Connection(ConnectionState::Connected { .. }))
    })
    .await;
    assert!(
        matches!(
            back,
            AppEvent::Connection(ConnectionState::Connected { resumed: true, .. })
        ),
        "resumed from the last sequence number: {back:?}"
    );
    bob.rec.wait_for(IncomingCallCanceled, 1).await;
    suite::assert_callbacks(
        &bob,
        &[(IncomingCallReceived, &call), (IncomingCallCanceled, &call)],
    );
    path.accept.abort();
    f.stop().await;
}
