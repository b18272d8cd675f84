//! A client against a real `invitation-server` on 127.0.0.1:0 when the token
//! is refused, expires or is renewed, and when a second connection with the
//! same user and device replaces it: failures are typed, reported once, and
//! never turn into a reconnect loop.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use futures_util::{SinkExt, StreamExt};
use invitation::prelude::*;
use invitation::transport::ws::WsTransport;
use invitation::{ClientBuilder, ConnectionState, StopReason};
use invitation_server::{Authority, Claims, RunningServer};
use tokio::sync::broadcast;
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;

/// A client of `user` on `device` with a recording handler, connected.
struct Dev {
    client: Client,
    rec: invitation::testing::Recorder,
}

async fn dev(srv: &RunningServer, user: &str, device: &str) -> Dev {
    let rec = invitation::testing::Recorder::with_deadline(SOON);
    let client = Client::builder()
        .user(User::named(user, &user.to_uppercase()))
        .device(device)
        .token(srv.token(user, &user.to_uppercase()))
        .transport(WsTransport::new(srv.url()))
        .handler(rec.clone())
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .build()
        .unwrap();
    client.connect().await.unwrap();
    Dev { client, rec }
}

/// How long "no further attempt" is watched: a client still reconnecting
/// with its 20 ms backoff would have made several attempts by then.
const QUIET: Duration = Duration::from_millis(600);

fn builder(
    srv: &RunningServer,
    user: &str,
    device: &str,
) -> ClientBuilder<invitation::WithTransport> {
    Client::builder()
        .user(User::named(user, &user.to_uppercase()))
        .device(device)
        .transport(WsTransport::new(srv.url()))
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
}

fn accepted(srv: &RunningServer) -> u64 {
    srv.metrics.accepted_total.load(Ordering::Relaxed)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token for `user` valid for `ttl` (whole seconds, like every JWT).
fn short_token(srv: &RunningServer, user: &str, ttl: Duration) -> String {
    srv.authority
        .mint(&UserId::new(user).unwrap(), &user.to_uppercase(), ttl)
}

/// The next connection-state event.
async fn next_connection_event(rx: &mut broadcast::Receiver<AppEvent>) -> ConnectionState {
    let mut seen = Vec::new();
    timeout(SOON, async {
        loop {
            let e = rx.recv().await.expect("event stream open");
            if let AppEvent::Connection(state) = e {
                return state;
            }
            seen.push(e);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no connection event in time; saw {seen:?}"))
}

/// `connect()` fails with `Unauthorized` in time, the event stream says
/// `Stopped { Unauthorized }` (and nothing about reconnecting), no second
/// connection is made, and later commands fail with the same error.
async fn refused_once(srv: &RunningServer, token: String) {
    let client = builder(srv, "alice", "phone").token(token).build().unwrap();
    let mut events = client.events();
    let err = timeout(SOON, client.connect())
        .await
        .expect("connect() returns in time")
        .expect_err("the token is refused");
    assert!(matches!(err, ClientError::Unauthorized(_)), "{err:?}");
    assert_eq!(
        next_connection_event(&mut events).await,
        ConnectionState::Stopped {
            reason: StopReason::Unauthorized
        }
    );
    tokio::time::sleep(QUIET).await; // watching for attempts that must not come
    assert_eq!(accepted(srv), 1, "one attempt, no reconnects");
    let later = client.invite(["bob"], CallType::Voice, None).await;
    assert!(
        matches!(later, Err(ClientError::Unauthorized(_))),
        "{later:?}"
    );
    assert!(client.stopped().is_some());
}

#[tokio::test]
async fn garbage_token_fails_connect_once() {
    let srv = server(|_| {}).await;
    refused_once(&srv, "not-a-token".into()).await;
}

#[tokio::test]
async fn wrong_secret_token_fails_connect_once() {
    let srv = server(|_| {}).await;
    let other = Authority::new(b"another-secret-0123456789abcdef", "invitation", None);
    let token = other.mint(
        &UserId::new("alice").unwrap(),
        "ALICE",
        Duration::from_secs(3600),
    );
    refused_once(&srv, token).await;
}

#[tokio::test]
async fn expired_token_fails_connect_once() {
    let srv = server(|_| {}).await;
    let token = srv.authority.sign(&Claims {
        sub: "alice".into(),
        name: "ALICE".into(),
        exp: unix_now() - 10,
        iat: unix_now() - 3610,
        aud: "invitation".into(),
        iss: None,
        nbf: None,
    });
    refused_once(&srv, token).await;
}

/// Counts calls; returns `token(n)` for the n-th call (from 1).
fn counting_provider(
    calls: &Arc<AtomicUsize>,
    token: impl Fn(usize) -> String + Send + Sync + 'static,
) -> impl Fn() -> std::future::Ready<Result<String, std::convert::Infallible>> + Send + Sync + 'static
{
    let calls = calls.clone();
    move || {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        std::future::ready(Ok(token(n)))
    }
}

#[tokio::test]
async fn refused_token_is_replaced_once_by_the_provider() {
    let srv = server(|_| {}).await;
    let good = srv.token("alice", "ALICE");
    let calls = Arc::new(AtomicUsize::new(0));
    let client = builder(&srv, "alice", "phone")
        .token("stale-garbage")
        .token_provider(counting_provider(&calls, move |_| good.clone()))
        .build()
        .unwrap();
    timeout(SOON, client.connect())
        .await
        .expect("in time")
        .expect("the fresh token is accepted");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(accepted(&srv), 2);
}

#[tokio::test]
async fn provider_is_asked_once_after_a_refusal_then_the_client_gives_up() {
    let srv = server(|_| {}).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let client = builder(&srv, "alice", "phone")
        .token_provider(counting_provider(&calls, |n| format!("garbage-{n}")))
        .build()
        .unwrap();
    let err = timeout(SOON, client.connect())
        .await
        .expect("in time")
        .expect_err("every token is refused");
    assert!(matches!(err, ClientError::Unauthorized(_)), "{err:?}");
    tokio::time::sleep(QUIET).await; // watching for attempts that must not come
    // One token for the first hello, one fresh one after the refusal.
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(accepted(&srv), 2);
}

#[tokio::test]
async fn provider_renews_before_expiry_without_reconnecting() {
    let srv = server(|_| {}).await;
    let authority = srv.authority.clone();
    let mint = move || {
        authority.mint(
            &UserId::new("alice").unwrap(),
            "ALICE",
            Duration::from_secs(2),
        )
    };
    let first = mint();
    let calls = Arc::new(AtomicUsize::new(0));
    let client = builder(&srv, "alice", "phone")
        .token(first)
        .token_provider(counting_provider(&calls, move |_| mint()))
        .build()
        .unwrap();
    let mut events = client.events();
    client.connect().await.unwrap();
    assert!(matches!(
        next_connection_event(&mut events).await,
        ConnectionState::Connected { .. }
    ));
    // The second renewal comes after the first token expired: the
    // connection lived past it on a token renewed in band.
    let deadline = Instant::now() + SOON;
    while calls.load(Ordering::SeqCst) < 2 {
        assert!(
            Instant::now() < deadline,
            "the provider was not asked twice in time"
        );
        assert!(client.is_connected(), "dropped: {:?}", client.stopped());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Still the first connection, nothing about the link in between.
    let bob = dev(&srv, "bob", "phone").await;
    let call = client.invite(["bob"], CallType::Voice, None).await.unwrap();
    bob.rec.wait_for(Callback::IncomingCallReceived, 1).await;
    client.cancel(&call.call_id).await.unwrap();
    while let Ok(e) = events.try_recv() {
        assert!(!matches!(e, AppEvent::Connection(_)), "unexpected {e:?}");
    }
    assert_eq!(accepted(&srv), 2, "alice's one connection, and bob's");
}

#[tokio::test]
async fn expired_token_without_provider_stops_the_live_client() {
    let srv = server(|_| {}).await;
    let client = builder(&srv, "alice", "phone")
        .token(short_token(&srv, "alice", Duration::from_secs(2)))
        .build()
        .unwrap();
    let mut events = client.events();
    client.connect().await.unwrap();
    assert!(matches!(
        next_connection_event(&mut events).await,
        ConnectionState::Connected { .. }
    ));
    assert_eq!(
        next_connection_event(&mut events).await,
        ConnectionState::Stopped {
            reason: StopReason::TokenExpired
        }
    );
    tokio::time::sleep(QUIET).await; // watching for attempts that must not come
    assert_eq!(accepted(&srv), 1, "no reconnect with a dead token");
    let later = client.invite(["bob"], CallType::Voice, None).await;
    assert!(matches!(later, Err(ClientError::TokenExpired)), "{later:?}");
}

#[tokio::test]
async fn replaced_connection_stops_instead_of_fighting() {
    let srv = server(|_| {}).await;
    let first = dev(&srv, "alice", "phone").await;
    let mut first_events = first.client.events();
    let second = dev(&srv, "alice", "phone").await;
    assert_eq!(
        next_connection_event(&mut first_events).await,
        ConnectionState::Stopped {
            reason: StopReason::Replaced
        }
    );
    tokio::time::sleep(QUIET).await; // watching for attempts that must not come
    assert_eq!(accepted(&srv), 2, "the replaced client did not come back");
    assert!(second.client.is_connected());
    assert!(matches!(
        first.client.connect().await,
        Err(ClientError::Replaced)
    ));
    // Calls reach the survivor, and only it.
    let bob = dev(&srv, "bob", "phone").await;
    bob.client
        .invite(["alice"], CallType::Voice, None)
        .await
        .unwrap();
    second.rec.wait_for(Callback::IncomingCallReceived, 1).await;
    assert_eq!(first.rec.count(Callback::IncomingCallReceived), 0);
}

/// A scripted server that accepts every WebSocket, answers the hello with
/// `unavailable` (a refusal worth retrying) and closes; it records when
/// each connection arrived.
async fn turning_away_server() -> (String, Arc<std::sync::Mutex<Vec<Instant>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let arrivals = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = arrivals.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            log.lock().unwrap().push(Instant::now());
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                while let Some(Ok(frame)) = ws.next().await {
                    if let Message::Text(text) = frame {
                        let hello: serde_json::Value = serde_json::from_str(text.as_str()).unwrap();
                        let answer = serde_json::json!({
                            "v": 1, "type": "error", "re": hello["id"],
                            "code": "unavailable", "message": "try later",
                        });
                        let _ = ws.send(Message::text(answer.to_string())).await;
                        let _ = ws.close(None).await;
                        return;
                    }
                }
            });
        }
    });
    (url, arrivals)
}

#[tokio::test]
async fn backoff_grows_on_attempts_the_server_turned_away() {
    let (url, arrivals) = turning_away_server().await;
    let client = Client::builder()
        .user(User::named("alice", "ALICE"))
        .token("t")
        .transport(WsTransport::new(url))
        .backoff(Duration::from_millis(10), Duration::from_secs(10))
        .jitter_seed(7)
        .build()
        .unwrap();
    let connecting = tokio::spawn({
        let client = client.clone();
        async move { client.connect().await }
    });
    let deadline = Instant::now() + SOON;
    while arrivals.lock().unwrap().len() < 6 {
        assert!(
            Instant::now() < deadline,
            "only {:?} attempts",
            arrivals.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let at = arrivals.lock().unwrap().clone();
    let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
    // The n-th wait is 10 ms x 2^n with jitter in [half, full]: two steps
    // on, a wait is always longer; the fifth is at least 160 ms.
    for i in 0..gaps.len() - 2 {
        assert!(gaps[i + 2] > gaps[i], "not growing: {gaps:?}");
    }
    assert!(gaps[4] >= Duration::from_millis(160), "{gaps:?}");
    client.close().await;
    let _ = timeout(SOON, connecting)
        .await
        .expect("connect() returns after close");
}
