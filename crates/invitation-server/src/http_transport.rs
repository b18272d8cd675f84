//! The HTTP transport: the same protocol v1 messages as the WebSocket, for
//! clients that cannot hold a WebSocket (proxies that block the upgrade,
//! short-lived backends). docs/protocol.md, "HTTP binding", is the wire
//! contract; this is the server side.
//!
//! Requests reach this module from the main port: the hand-written request
//! head reader ([`crate::http`]) routes `/sessions…` here with the bytes it
//! already read, and hyper serves that TCP connection from then on (bodies,
//! keep-alive, chunking: nothing is parsed by hand).
//!
//! An HTTP *session* is one device connection that outlives the requests
//! carrying it. It runs the very same shell as a WebSocket connection
//! ([`crate::conn::Session`] around the core's connection machine) over an
//! [`HttpLink`] instead of a WebSocket: messages a client POSTs are what the
//! WebSocket reads, and what the WebSocket would write is kept in the
//! session's frame buffer until a long poll takes it. So every connection
//! rule (hello timeout, tokens, in-flight limit, rate, protocol errors,
//! heartbeat and dead-peer deadline) and every call rule is the one
//! machine's.
//!
//! Bounds, as for a WebSocket connection:
//! * each session holds a connection slot ([`crate::slots`]: the overall
//!   and per-address caps) from creation to its end, and opening one counts
//!   against the per-address rate of new connections;
//! * the frames not yet acknowledged by a poll are capped in bytes
//!   (twice the configured kernel send buffer, what a WebSocket client that
//!   stops reading can make the kernel hold); a session whose client does
//!   not poll them away within the write timeout is dropped (`too_slow`),
//!   after the hub's own outbound queue cap;
//! * a session nobody polls is silent: the machine probes it (ending the
//!   held poll, so a live client polls again at once) and drops it after the
//!   dead-peer interval, which frees its slot;
//! * session ids are 128 random bits from the operating system.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use invitation_core::longpoll::{FrameLog, PollError};
use invitation_core::{CloseCause, ConnId};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, timeout, timeout_at};

use crate::conn::{Inbound, Link, Session, WriteFailed};
use crate::metrics::Refusal;
use crate::rate::KeyedLimiter;
use crate::server::Shared;
use crate::slots::{Admission, SlotGuard, Slots};

/// The longest a poll is held open when nothing arrives (a client asks for
/// less with `wait_ms`).
pub(crate) const MAX_POLL_WAIT: Duration = Duration::from_secs(30);

/// Messages posted and not yet read by the session (the machine's
/// in-flight limit applies behind it).
const INBOUND_QUEUE: usize = 4;

/// The HTTP sessions of one server, by id.
pub(crate) struct Sessions {
    slots: Arc<Slots>,
    /// New connections per address, shared with the accept loop: a new
    /// session counts as a new connection.
    per_ip: Arc<Mutex<KeyedLimiter<IpAddr>>>,
    map: Mutex<HashMap<String, Arc<Channel>>>,
    /// Connection ids, shared with the accept loop: never reused.
    next_key: AtomicU64,
    /// Sessions whose task still runs.
    live: watch::Sender<usize>,
    /// Bytes of frames a session keeps for its client.
    frame_cap: usize,
}

impl Sessions {
    /// Sessions taking their slots from `slots` and their creation rate
    /// from `per_ip`.
    pub(crate) fn new(
        slots: Arc<Slots>,
        per_ip: Arc<Mutex<KeyedLimiter<IpAddr>>>,
        config: &crate::Config,
    ) -> Arc<Self> {
        Arc::new(Self {
            slots,
            per_ip,
            map: Mutex::new(HashMap::new()),
            next_key: AtomicU64::new(1),
            live: watch::Sender::new(0),
            frame_cap: 2 * config.send_buffer_bytes.max(config.max_message_bytes),
        })
    }

    /// A connection id never used before (WebSocket connections and HTTP
    /// sessions draw from the same sequence).
    pub(crate) fn next_key(&self) -> ConnId {
        ConnId::new(self.next_key.fetch_add(1, Ordering::Relaxed))
    }

    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Channel>>> {
        // Nothing panics while holding the lock; a poisoned one is still
        // consistent.
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, id: &str) -> Option<Arc<Channel>> {
        self.map().get(id).cloned()
    }

    /// Waits until every session task has ended (after shutdown).
    pub(crate) async fn idle(&self) {
        let mut live = self.live.subscribe();
        let _ = live.wait_for(|n| *n == 0).await;
    }

    /// Opens a session for a client at `peer`: a slot, an id, and the
    /// session task. The answer is the HTTP response.
    fn create(
        self: &Arc<Self>,
        peer: SocketAddr,
        shared: &Arc<Shared>,
    ) -> Result<String, (StatusCode, &'static str)> {
        if *shared.shutdown.borrow() {
            return Err((StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"));
        }
        let now = Instant::now().into_std();
        let allowed = self
            .per_ip
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .check(&peer.ip(), now)
            .is_ok();
        if !allowed {
            shared.metrics.refused(Refusal::RateLimited);
            return Err((StatusCode::TOO_MANY_REQUESTS, "too many new sessions\n"));
        }
        let slot = match self.slots.admit(peer.ip()) {
            Admission::Serve(slot) => slot,
            Admission::ProbeOnly(_) | Admission::Full => {
                shared.metrics.refused(Refusal::Capacity);
                return Err((StatusCode::SERVICE_UNAVAILABLE, "server full\n"));
            }
            Admission::PerIp => {
                shared.metrics.refused(Refusal::PerIp);
                return Err((StatusCode::TOO_MANY_REQUESTS, "too many connections\n"));
            }
        };
        let id = session_id();
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        let channel = Arc::new(Channel {
            state: Mutex::new(State {
                log: FrameLog::new(self.frame_cap),
                ..State::default()
            }),
            changed: watch::Sender::new(0),
            inbound: tx,
        });
        self.map().insert(id.clone(), channel.clone());
        self.live.send_modify(|n| *n += 1);
        let link = HttpLink {
            channel,
            rx,
            shutdown: shared.shutdown.clone(),
        };
        let key = self.next_key();
        tokio::spawn(run_session(
            self.clone(),
            id.clone(),
            link,
            peer,
            shared.clone(),
            key,
            slot,
        ));
        Ok(id)
    }
}

/// 128 bits from the operating system's generator, as 32 hex digits.
fn session_id() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS has randomness");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One session's task: the shared shell over the HTTP link, then cleanup.
async fn run_session(
    sessions: Arc<Sessions>,
    id: String,
    link: HttpLink,
    peer: SocketAddr,
    shared: Arc<Shared>,
    key: ConnId,
    slot: SlotGuard,
) {
    let channel = link.channel.clone();
    // Whatever happens below (a panic included), the session leaves the
    // map, gives its slot back and counts as ended.
    struct End {
        sessions: Arc<Sessions>,
        id: String,
        channel: Arc<Channel>,
        slot: Option<SlotGuard>,
    }
    impl Drop for End {
        fn drop(&mut self) {
            self.sessions.map().remove(&self.id);
            drop(self.slot.take());
            self.channel.update(|s| {
                if s.closed.is_none() {
                    s.closed = Some(CloseCause::PeerGone);
                }
                s.ended = true;
            });
            self.sessions.live.send_modify(|n| *n -= 1);
        }
    }
    let _end = End {
        sessions,
        id,
        channel,
        slot: Some(slot),
    };
    let mut session = Session::new(link, peer, shared, key);
    Box::pin(session.run()).await;
}

/// What the request handlers and the session task share.
struct Channel {
    state: Mutex<State>,
    /// Bumped on every change of `state`: polls, the feeding session and a
    /// closing `DELETE` wait on it.
    changed: watch::Sender<u64>,
    /// Posted messages and signs of life, to the session.
    inbound: mpsc::Sender<Inbound<String>>,
}

#[derive(Default)]
struct State {
    /// The messages written for the client and not yet acknowledged.
    log: FrameLog,
    /// Probes so far: a held poll answers at the next one.
    probes: u64,
    /// Polls so far: a newer poll ends an older one.
    polls: u64,
    /// Polls being answered right now.
    held: usize,
    /// Why the session closed, once it has.
    closed: Option<CloseCause>,
    /// A poll took the last frames after the close.
    delivered: bool,
    /// The session task ended (its slot is free).
    ended: bool,
}

impl Channel {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the state and wakes everyone waiting on it.
    fn update<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let r = f(&mut self.state());
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        r
    }
}

/// The session's side of the HTTP transport (see the module docs).
pub(crate) struct HttpLink {
    channel: Arc<Channel>,
    rx: mpsc::Receiver<Inbound<String>>,
    /// Flips to `true` on shutdown.
    shutdown: watch::Receiver<bool>,
}

impl Link for HttpLink {
    type Text = String;

    async fn feed(&mut self, text: String) -> Result<(), WriteFailed> {
        let mut changed = self.channel.changed.subscribe();
        let mut text = text;
        loop {
            changed.borrow_and_update();
            {
                let mut s = self.channel.state();
                // Past the cap, wait for a poll to acknowledge some (under
                // the session's write deadline).
                match s.log.push(text) {
                    Ok(()) => return Ok(()),
                    Err(back) => text = back,
                }
                if s.log.has_unflushed() {
                    // What waits must be visible, or no poll can take it.
                    drop(s);
                    self.channel.update(|s| s.log.flush());
                    continue;
                }
            }
            if changed.changed().await.is_err() {
                return Err(WriteFailed);
            }
        }
    }

    async fn probe(&mut self) -> Result<(), WriteFailed> {
        self.channel.update(|s| s.probes += 1);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), WriteFailed> {
        self.channel.update(|s| s.log.flush());
        Ok(())
    }

    async fn next(&mut self) -> Inbound<String> {
        self.rx.recv().await.unwrap_or(Inbound::Closed)
    }

    async fn close(&mut self, cause: CloseCause) {
        let (waits, polled) = self.channel.update(|s| {
            s.log.flush();
            s.closed = Some(cause);
            (s.log.bytes() > 0, s.held > 0)
        });
        // The last frames (a `closing` message) wait for a poll, as a
        // WebSocket close waits for the socket (the session bounds this with
        // its write deadline); a client that left or went silent gets none,
        // and while the server stops only a poll under way gets them.
        let stopping = *self.shutdown.borrow();
        if !waits
            || matches!(cause, CloseCause::PeerGone | CloseCause::DeadPeer)
            || (stopping && !polled)
        {
            return;
        }
        let mut changed = self.channel.changed.subscribe();
        let delivered = changed.wait_for(|_| self.channel.state().delivered);
        if stopping {
            let _ = delivered.await;
        } else {
            let mut shutdown = self.shutdown.clone();
            tokio::select! {
                _ = delivered => {}
                _ = shutdown.wait_for(|s| *s) => {}
            }
        }
    }

    fn abandon(&mut self) {
        self.channel.update(|s| {
            s.closed = Some(CloseCause::TooSlow);
            s.log.clear();
        });
    }
}

type Body = Full<Bytes>;

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    r
}

/// Serves the HTTP transport's requests on one TCP connection (keep-alive)
/// until the client closes it, the server shuts down, or a request head
/// takes longer than the handshake timeout.
pub(crate) async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    shared: Arc<Shared>,
    sessions: Arc<Sessions>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let _ = Box::pin(serve_http(stream, peer, shared, sessions)).await;
}

async fn serve_http<S>(stream: S, peer: SocketAddr, shared: Arc<Shared>, sessions: Arc<Sessions>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let shared = shared.clone();
        hyper::service::service_fn(move |req| {
            let shared = shared.clone();
            let sessions = sessions.clone();
            async move { Ok::<_, Infallible>(handle(req, peer, &shared, &sessions).await) }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.handshake_timeout())
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let mut shutdown = shared.shutdown.clone();
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = shutdown.wait_for(|s| *s) => conn.as_mut().graceful_shutdown(),
    }
    // A held poll ends when its session closes (shutting down).
    let _ = timeout(shared.config.write_timeout(), conn).await;
}

/// The paths: `POST /sessions`, `POST|GET /sessions/{id}/messages`,
/// `DELETE /sessions/{id}`.
async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    sessions: &Arc<Sessions>,
) -> Response<Body> {
    let origin = req
        .headers()
        .get(hyper::header::ORIGIN)
        .and_then(|v| v.to_str().ok());
    if !crate::http::origin_allowed(origin, &shared.config.allowed_origins) {
        shared.metrics.refused(Refusal::Origin);
        return text(StatusCode::FORBIDDEN, "origin not allowed\n");
    }
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method(), parts.as_slice()) {
        (&Method::POST, ["sessions"]) => match sessions.create(peer, shared) {
            Ok(id) => {
                let body = serde_json::json!({ "session": id }).to_string();
                let mut r = Response::new(Full::new(Bytes::from(body)));
                *r.status_mut() = StatusCode::CREATED;
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/json"),
                );
                r
            }
            Err((status, body)) => text(status, body),
        },
        (method, ["sessions", id, "messages"]) => {
            let Some(channel) = sessions.get(id) else {
                return text(StatusCode::NOT_FOUND, "no such session\n");
            };
            match *method {
                Method::POST => post(req, &channel, shared).await,
                Method::GET => poll(req.uri().query(), &channel).await,
                _ => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
            }
        }
        (&Method::DELETE, ["sessions", id]) => {
            let Some(channel) = sessions.get(id) else {
                return text(StatusCode::NOT_FOUND, "no such session\n");
            };
            delete(&channel, shared).await
        }
        (_, ["sessions", ..]) => text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Hands `input` to the session, waiting while it does not read (its
/// in-flight limit): the client's request waits as a WebSocket client's
/// socket would, at most the write timeout.
async fn to_session(
    channel: &Channel,
    input: Inbound<String>,
    shared: &Shared,
) -> Result<(), StatusCode> {
    match timeout(shared.config.write_timeout(), channel.inbound.send(input)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(StatusCode::GONE),
        Err(_) => Err(StatusCode::SERVICE_UNAVAILABLE),
    }
}

/// `POST /sessions/{id}/messages`: one client message as the body.
async fn post(req: Request<Incoming>, channel: &Channel, shared: &Shared) -> Response<Body> {
    if channel.state().closed.is_some() {
        return text(StatusCode::GONE, "session closed\n");
    }
    let limit = shared.config.max_message_bytes;
    let body = Limited::new(req.into_body(), limit);
    // A started body must finish in time, like a started WebSocket frame.
    let read = timeout(shared.config.message_timeout(), body.collect()).await;
    let (input, answer) = match read {
        Err(_) => (
            Inbound::Failed(CloseCause::Stalled),
            text(
                StatusCode::REQUEST_TIMEOUT,
                "message not finished in time\n",
            ),
        ),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => (
            Inbound::Failed(CloseCause::TooLarge),
            text(StatusCode::PAYLOAD_TOO_LARGE, "message too large\n"),
        ),
        Ok(Err(_)) => return text(StatusCode::BAD_REQUEST, "broken body\n"),
        Ok(Ok(collected)) => match String::from_utf8(collected.to_bytes().to_vec()) {
            Ok(message) => (Inbound::Text(message), {
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::ACCEPTED;
                r
            }),
            Err(_) => (
                Inbound::Failed(CloseCause::InvalidUtf8),
                text(StatusCode::BAD_REQUEST, "message is not UTF-8\n"),
            ),
        },
    };
    match to_session(channel, input, shared).await {
        Ok(()) => answer,
        Err(StatusCode::GONE) => text(StatusCode::GONE, "session closed\n"),
        Err(status) => text(status, "session busy\n"),
    }
}

/// `DELETE /sessions/{id}`: the client leaves; answered once the session
/// has ended and freed its slot.
async fn delete(channel: &Channel, shared: &Shared) -> Response<Body> {
    let mut changed = channel.changed.subscribe();
    let _ = to_session(channel, Inbound::Closed, shared).await;
    let ended = timeout(
        shared.config.write_timeout(),
        changed.wait_for(|_| channel.state().ended),
    )
    .await;
    match ended {
        Ok(_) => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }
        Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "session busy\n"),
    }
}

/// The query of a poll: `from` (required), `wait_ms` (optional).
fn poll_query(query: Option<&str>) -> Option<(u64, Duration)> {
    let mut from = None;
    let mut wait = MAX_POLL_WAIT;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=')?;
        match k {
            "from" => from = Some(v.parse().ok()?),
            "wait_ms" => wait = Duration::from_millis(v.parse().ok()?).min(MAX_POLL_WAIT),
            _ => {}
        }
    }
    Some((from?, wait))
}

/// `GET /sessions/{id}/messages?from=N&wait_ms=M`: acknowledges the frames
/// before `N`, then answers the frames from `N` on as soon as there are any
/// (or the session closed, or the server probes, or a newer poll came),
/// else after the wait with none.
async fn poll(query: Option<&str>, channel: &Channel) -> Response<Body> {
    let Some((from, wait)) = poll_query(query) else {
        return text(StatusCode::BAD_REQUEST, "expected ?from=N[&wait_ms=M]\n");
    };
    // A poll is a sign of life (ignored if messages are queued: those are).
    let _ = channel.inbound.try_send(Inbound::Activity);
    let deadline = Instant::now() + wait;
    let mut changed = channel.changed.subscribe();
    let started = channel.update(|s| {
        s.log.ack(from)?;
        s.polls += 1;
        Ok((s.polls, s.probes))
    });
    let (me, probes) = match started {
        Ok(v) => v,
        Err(PollError::Acknowledged { .. }) => {
            return text(
                StatusCode::CONFLICT,
                "frames before `from` were acknowledged\n",
            );
        }
        Err(_) => return text(StatusCode::BAD_REQUEST, "`from` is past the last frame\n"),
    };
    // Counts this poll as under way until it returns (or is dropped).
    struct Held<'a>(&'a Channel);
    impl Drop for Held<'_> {
        fn drop(&mut self) {
            self.0.state().held -= 1;
        }
    }
    channel.state().held += 1;
    let _held = Held(channel);
    loop {
        changed.borrow_and_update();
        {
            let mut s = channel.state();
            let ready = s.log.flushed() > from;
            let closing = s.closed.is_some() && !s.log.has_unflushed();
            if ready || closing || s.probes != probes || s.polls != me {
                let frames: Vec<&str> = s.log.visible_from(from).collect();
                let body = frames.join("\n");
                let mut r = Response::new(Full::new(Bytes::from(body)));
                r.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/x-ndjson"),
                );
                if closing && s.polls == me {
                    let cause = s.closed.map_or("closed", CloseCause::as_str);
                    if let Ok(v) = hyper::header::HeaderValue::from_str(cause) {
                        r.headers_mut().insert("invitation-closed", v);
                    }
                    s.delivered = true;
                    drop(s);
                    channel.changed.send_modify(|n| *n = n.wrapping_add(1));
                }
                return r;
            }
        }
        if timeout_at(deadline, changed.changed()).await.is_err() {
            let mut r = Response::new(Full::new(Bytes::new()));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/x-ndjson"),
            );
            return r;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(cap: usize) -> (HttpLink, Arc<Channel>) {
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        let channel = Arc::new(Channel {
            state: Mutex::new(State {
                log: FrameLog::new(cap),
                ..State::default()
            }),
            changed: watch::Sender::new(0),
            inbound: tx,
        });
        (
            HttpLink {
                channel: channel.clone(),
                rx,
                shutdown: watch::channel(false).1,
            },
            channel,
        )
    }

    fn body_of(r: Response<Body>) -> String {
        let bytes = futures_util::FutureExt::now_or_never(r.into_body().collect())
            .expect("a full body is ready")
            .expect("infallible")
            .to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn session_ids_are_128_random_bits() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| session_id()).collect();
        assert_eq!(ids.len(), 1000, "no repeats");
        assert!(
            ids.iter()
                .all(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        );
    }

    #[test]
    fn poll_queries() {
        assert_eq!(poll_query(Some("from=3")), Some((3, MAX_POLL_WAIT)));
        assert_eq!(
            poll_query(Some("from=0&wait_ms=250")),
            Some((0, Duration::from_millis(250)))
        );
        assert_eq!(
            poll_query(Some("wait_ms=99999999&from=1")),
            Some((1, MAX_POLL_WAIT))
        );
        assert_eq!(poll_query(Some("wait_ms=5")), None);
        assert_eq!(poll_query(Some("from=x")), None);
        assert_eq!(poll_query(None), None);
    }

    /// The frames kept for a client are capped in bytes: a feed past the
    /// cap waits until a poll acknowledges frames (and the session's write
    /// deadline turns a wait too long into `too_slow`).
    #[tokio::test(start_paused = true)]
    async fn unacknowledged_frames_are_capped_in_bytes() {
        let (mut link, channel) = link(100);
        for i in 0..4 {
            assert!(link.feed(format!("{i}").repeat(25)).await.is_ok());
        }
        link.flush().await.ok();
        assert_eq!(channel.state().log.bytes(), 100);
        // A fifth frame does not fit: it waits.
        let blocked = timeout(Duration::from_secs(30), link.feed("4".repeat(25))).await;
        assert!(blocked.is_err(), "a feed past the cap waits");
        assert_eq!(channel.state().log.end(), 4);
        // A poll from 2 acknowledges frames 0 and 1 and answers 2 and 3.
        let r = poll(Some("from=2&wait_ms=0"), &channel).await;
        assert_eq!(
            body_of(r),
            format!("{}\n{}", "2".repeat(25), "3".repeat(25))
        );
        assert_eq!(channel.state().log.bytes(), 50);
        let fed = timeout(Duration::from_secs(1), link.feed("4".repeat(25))).await;
        assert!(matches!(fed, Ok(Ok(()))), "room again");
        // Acknowledged frames are gone: asking for them again is a conflict.
        let r = poll(Some("from=1&wait_ms=0"), &channel).await;
        assert_eq!(r.status(), StatusCode::CONFLICT);
        let r = poll(Some("from=9&wait_ms=0"), &channel).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    }

    /// A held poll answers as soon as frames are flushed, when the machine
    /// probes, and when a newer poll replaces it; otherwise empty after its
    /// wait. A close is told once the last frames are taken.
    #[tokio::test(start_paused = true)]
    async fn a_held_poll_answers_on_flush_probe_newer_poll_and_close() {
        let (mut link, channel) = link(1000);
        let start = Instant::now();
        let empty = poll(Some("from=0&wait_ms=2000"), &channel).await;
        assert_eq!(empty.status(), StatusCode::OK);
        assert_eq!(body_of(empty), "");
        assert_eq!(start.elapsed(), Duration::from_secs(2), "held for its wait");
        let start = Instant::now();
        // Flush.
        let held = tokio::spawn({
            let channel = channel.clone();
            async move { body_of(poll(Some("from=0&wait_ms=30000"), &channel).await) }
        });
        tokio::task::yield_now().await;
        link.feed("a".into()).await.ok();
        tokio::task::yield_now().await;
        assert!(!held.is_finished(), "fed but not flushed: not visible yet");
        link.flush().await.ok();
        assert_eq!(held.await.unwrap(), "a");
        // Probe.
        let held = tokio::spawn({
            let channel = channel.clone();
            async move { body_of(poll(Some("from=1&wait_ms=30000"), &channel).await) }
        });
        tokio::task::yield_now().await;
        link.probe().await.ok();
        assert_eq!(held.await.unwrap(), "");
        // A newer poll.
        let held = tokio::spawn({
            let channel = channel.clone();
            async move { body_of(poll(Some("from=1&wait_ms=30000"), &channel).await) }
        });
        tokio::task::yield_now().await;
        let newer = tokio::spawn({
            let channel = channel.clone();
            async move { poll(Some("from=1&wait_ms=30000"), &channel).await }
        });
        assert_eq!(held.await.unwrap(), "");
        assert_eq!(start.elapsed(), Duration::ZERO, "none waited for its wait");
        // Close with a last frame: the poll gets it and the close.
        link.feed("bye".into()).await.ok();
        let closing = tokio::spawn(async move { link.close(CloseCause::Replaced).await });
        let last = newer.await.unwrap();
        assert_eq!(
            last.headers().get("invitation-closed").unwrap(),
            "replaced by a newer connection"
        );
        assert_eq!(body_of(last), "bye");
        timeout(Duration::from_secs(1), closing)
            .await
            .expect("the close waited for the delivery only")
            .unwrap();
    }

    /// Posted messages and polls reach the session as text and signs of
    /// life, in order.
    #[tokio::test(start_paused = true)]
    async fn polls_are_signs_of_life() {
        let (mut link, channel) = link(1000);
        let _ = poll(Some("from=0&wait_ms=0"), &channel).await;
        channel
            .inbound
            .send(Inbound::Text("{}".into()))
            .await
            .unwrap();
        assert!(matches!(link.next().await, Inbound::Activity));
        assert!(matches!(link.next().await, Inbound::Text(t) if t == "{}"));
    }
}
