//! The load patterns: open-loop calls (1:1 and group), a timeout storm,
//! idle connections, request/response relay. Each measures latencies with
//! HDR histograms and CPU from /proc (server and generator).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use invitation_core::protocol::{
    ClientMessage, Command, Control, Event, InviteRequest, ServerBody, ServerMessage,
};
use invitation_core::{CallType, DecodeLimits, DeviceId, ErrorCode, Reason, RequestId, UserId};
use invitation_server::Authority;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::scrape::{self, Buckets};
use crate::{Durability, SECRET, ServerProc, Store, cpu_us, memory_kb, start_echo, start_server};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How the call generator's clients reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// One WebSocket per client (the raw generator).
    WebSocket,
    /// The HTTP transport: `invitation_transport::http`, requests and long
    /// polls.
    Http,
    /// WebSocket over TLS (`wss://`, the transport's client; the server
    /// terminates TLS itself).
    Wss,
    /// The HTTP transport over TLS (`https://`).
    Https,
}

impl Via {
    /// Whether the server must serve TLS.
    pub(crate) fn tls(self) -> bool {
        matches!(self, Via::Wss | Via::Https)
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Via::WebSocket => "ws",
            Via::Http => "http",
            Via::Wss => "wss",
            Via::Https => "https",
        }
    }
}

/// A generator client over either transport.
enum Conn {
    Ws(Box<Ws>),
    /// Any other transport's client (http, wss, https).
    Transport(invitation_transport::BoxConnection),
}

impl Conn {
    async fn send(&mut self, m: &ClientMessage) -> Result<()> {
        match self {
            Conn::Ws(ws) => ws.send(Message::text(m.encode())).await?,
            Conn::Transport(c) => c.send(m.clone()).await?,
        }
        Ok(())
    }

    /// The next message as text (the HTTP client hands it over decoded:
    /// encoded again, the filter below is the same for both).
    async fn next_text(&mut self) -> Result<Utf8Bytes> {
        match self {
            Conn::Ws(ws) => loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => return Ok(t),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return Err(e.into()),
                    None => bail!("closed"),
                }
            },
            Conn::Transport(c) => Ok(c.recv().await?.encode().into()),
        }
    }
}

/// The `hello` of a generator client: a fresh token for `user`, device `d`.
fn hello(auth: &Authority, user: &str) -> Result<ClientMessage> {
    let token = auth.mint(&UserId::new(user)?, user, Duration::from_secs(3600));
    Ok(ClientMessage::new(
        rid("h".into()),
        Control::Hello {
            device: DeviceId::new("d")?,
            token: Some(token),
            last_seq: None,
        },
    ))
}

/// Connects a generator client over `via` and authenticates; reads the
/// welcome and the sync.
async fn connect_via(addr: SocketAddr, auth: &Authority, user: &str, via: Via) -> Result<Conn> {
    use invitation_transport::Transport as _;
    let conn = match via {
        Via::WebSocket => return Ok(Conn::Ws(Box::new(connect(addr, auth, user).await?))),
        Via::Http => invitation_transport::http::HttpTransport::new(format!("http://{addr}/"))
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        Via::Wss => invitation_transport::ws::WsTransport::new(format!("wss://{addr}/"))
            .tls(crate::pki::get()?.client.clone())
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        Via::Https => invitation_transport::http::HttpTransport::new(format!("https://{addr}/"))
            .tls(crate::pki::get()?.client.clone())
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    };
    let mut conn = Conn::Transport(conn);
    let hello = hello(auth, user)?;
    conn.send(&hello).await?;
    for _ in 0..2 {
        conn.next_text().await?;
    }
    Ok(conn)
}

pub(crate) fn authority() -> Authority {
    Authority::new(SECRET.as_bytes(), "invitation", None)
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("valid bounds")
}

pub(crate) fn rid(s: String) -> RequestId {
    RequestId::new(s).expect("valid request id")
}

/// Opens a TCP connection from 127.0.0.`source` (several source
/// addresses: one address runs out of ephemeral ports near 28k
/// connections) and upgrades it.
async fn dial(addr: SocketAddr, source: u8) -> Result<Ws> {
    dial_path(addr, source, "/").await
}

/// [`dial`] to `path`.
async fn dial_path(addr: SocketAddr, source: u8, path: &str) -> Result<Ws> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from(([127, 0, 0, source.max(1)], 0)))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    // tungstenite zero-fills its whole read buffer before every read: with
    // the 128 KiB default the generator spent a fifth of its CPU in memset.
    // Same 4 KiB as the server.
    let config = WebSocketConfig::default().read_buffer_size(4 * 1024);
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        format!("ws://{addr}{path}"),
        MaybeTlsStream::Plain(stream),
        Some(config),
    )
    .await?;
    Ok(ws)
}

/// Connects and authenticates; reads the welcome and the sync.
async fn connect(addr: SocketAddr, auth: &Authority, user: &str) -> Result<Ws> {
    connect_from(addr, auth, user, 1).await
}

pub(crate) async fn connect_from(
    addr: SocketAddr,
    auth: &Authority,
    user: &str,
    source: u8,
) -> Result<Ws> {
    let mut ws = dial(addr, source).await?;
    let hello = hello(auth, user)?;
    ws.send(Message::text(hello.encode())).await?;
    for _ in 0..2 {
        next(&mut ws).await?;
    }
    Ok(ws)
}

pub(crate) async fn next(ws: &mut Ws) -> Result<ServerMessage> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => {
                return Ok(ServerMessage::decode(t.as_str(), &DecodeLimits::default())?);
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("closed"),
        }
    }
}

/// The next message of one of the wire `types` for which `f` holds. Other
/// messages are skipped without being decoded: the generator must stay
/// cheaper than the server it measures.
async fn until(
    conn: &mut Conn,
    types: &[&str],
    f: impl Fn(&ServerBody) -> bool,
) -> Result<ServerMessage> {
    loop {
        let text = conn.next_text().await?;
        let wanted = types.iter().any(|t| {
            text.as_str()
                .match_indices(t)
                .any(|(i, _)| text.as_str()[..i].ends_with("\"type\":\""))
        });
        if !wanted {
            continue;
        }
        let m = ServerMessage::decode(text.as_str(), &DecodeLimits::default())?;
        if f(&m.body) {
            return Ok(m);
        }
    }
}

fn any(_: &ServerBody) -> bool {
    true
}

fn progress(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    pb.set_prefix(what.to_owned());
    pb
}

/// Results of an open-loop call run.
#[derive(Debug, Clone)]
pub(crate) struct CallsResult {
    pub(crate) rate: f64,
    pub(crate) callees: usize,
    pub(crate) offered: u64,
    pub(crate) completed: u64,
    pub(crate) failed: u64,
    /// Invitations the server refused with `unavailable` (load shedding).
    pub(crate) shed: u64,
    pub(crate) ring: Histogram<u64>,
    /// The server's share of invite -> ring: invite read -> incoming_call
    /// written (its own histogram; bucket bounds).
    pub(crate) server_ring: Buckets,
    pub(crate) accepted: Histogram<u64>,
    pub(crate) server_cpu_us_per_call: f64,
    pub(crate) generator_cpu_us_per_call: f64,
    /// Where the server kept its state.
    pub(crate) store: Store,
    /// Journal bytes written during the run (durable servers).
    pub(crate) journal_bytes: u64,
    /// Journal entries written during the run (durable servers).
    pub(crate) journal_entries: u64,
}

struct Group {
    caller: Conn,
    callees: Vec<(UserId, Conn)>,
}

/// Open-loop calls at `rate` for `secs`: each call is invite -> ring at
/// every callee -> the first accepts, the others decline -> the caller
/// hangs up; the clients use `via`.
pub(crate) async fn calls(
    server: &ServerProc,
    rate: f64,
    secs: f64,
    callees: usize,
    receipts: bool,
    show: bool,
    via: Via,
) -> Result<CallsResult> {
    let placement = Placement {
        nodes: &[server],
        place: &|_| (0, 0),
        helpers: &[],
    };
    calls_placed(&placement, rate, secs, callees, receipts, show, via).await
}

/// Which server each of a call run's clients talks to, for several nodes
/// of a cluster.
pub(crate) struct Placement<'a> {
    /// The nodes; the first one's `/metrics` gives the server's share of
    /// invite -> ring and the journal counters.
    pub(crate) nodes: &'a [&'a ServerProc],
    /// Group `g`'s (caller's node, callees' node), indices into `nodes`.
    pub(crate) place: &'a dyn Fn(usize) -> (usize, usize),
    /// Other processes whose CPU counts as the server's (the NATS server).
    pub(crate) helpers: &'a [u32],
}

impl Placement<'_> {
    /// CPU of the nodes and the helpers, µs.
    fn cpu_us(&self) -> u64 {
        let pids = self.nodes.iter().map(|n| n.pid);
        pids.chain(self.helpers.iter().copied()).map(cpu_us).sum()
    }
}

/// [`calls`], the clients placed on the nodes as `placement` says.
pub(crate) async fn calls_placed(
    placement: &Placement<'_>,
    rate: f64,
    secs: f64,
    callees: usize,
    receipts: bool,
    show: bool,
    via: Via,
) -> Result<CallsResult> {
    let server = placement.nodes[0];
    let auth = authority();
    let offered = (rate * secs).round().max(1.0) as u64;
    // Enough groups for every call in flight, also when an overloaded
    // server takes ~250 ms per call: a generator out of connections would
    // report its own limit as failed calls.
    let groups = ((rate * 0.25) as usize)
        .clamp(20, 3000)
        .min(18_000 / (callees + 1));
    let tag = format!("{}x{}", rate as u64, callees);
    let mut free = Vec::with_capacity(groups);
    for g in 0..groups {
        let (at, to) = (placement.place)(g);
        let (at, to) = (placement.nodes[at].addr, placement.nodes[to].addr);
        let caller = connect_via(at, &auth, &format!("c{tag}-{g}"), via).await?;
        let mut cs = Vec::new();
        for k in 0..callees {
            let id = format!("e{tag}-{g}-{k}");
            cs.push((UserId::new(&id)?, connect_via(to, &auth, &id, via).await?));
        }
        free.push(Group {
            caller,
            callees: cs,
        });
    }
    let free = Arc::new(Mutex::new(free));
    let ring = Arc::new(Mutex::new(hist()));
    let accepted = Arc::new(Mutex::new(hist()));
    let failed = Arc::new(AtomicU64::new(0));
    let shed = Arc::new(AtomicU64::new(0));
    let pb = if show {
        progress(offered, &format!("{rate}/s x{callees}"))
    } else {
        ProgressBar::hidden()
    };
    let text0 = scrape::metrics_of(server).await?;
    let ring0 = Buckets::parse(&text0, RING);
    let journal0 = (
        scrape::counter(&text0, JOURNAL_BYTES).unwrap_or(0),
        scrape::counter(&text0, JOURNAL_ENTRIES).unwrap_or(0),
    );
    let (cpu0, me0) = (placement.cpu_us(), cpu_us(std::process::id()));
    let start = tokio::time::Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..offered {
        // Open loop: the n-th call starts on schedule, whatever happened to
        // the earlier ones.
        tokio::time::sleep_until(start + interval.mul_f64(n as f64)).await;
        let Some(mut group) = free.lock().await.pop() else {
            failed.fetch_add(1, Ordering::Relaxed);
            pb.inc(1);
            continue;
        };
        let (free, ring, accepted, failed, shed, pb) = (
            free.clone(),
            ring.clone(),
            accepted.clone(),
            failed.clone(),
            shed.clone(),
            pb.clone(),
        );
        tasks.spawn(async move {
            match tokio::time::timeout(Duration::from_secs(10), one_call(&mut group, n, receipts))
                .await
            {
                Ok(Ok(Some((r, a)))) => {
                    ring.lock().await.record(r.as_micros() as u64).ok();
                    accepted.lock().await.record(a.as_micros() as u64).ok();
                    free.lock().await.push(group);
                }
                Ok(Ok(None)) => {
                    shed.fetch_add(1, Ordering::Relaxed);
                    free.lock().await.push(group);
                }
                _ => {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            pb.inc(1);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    pb.finish_and_clear();
    let (server_cpu, my_cpu) = (placement.cpu_us() - cpu0, cpu_us(std::process::id()) - me0);
    let text1 = scrape::metrics_of(server).await?;
    let server_ring = Buckets::parse(&text1, RING).since(&ring0);
    let journal_bytes = scrape::counter(&text1, JOURNAL_BYTES).unwrap_or(0) - journal0.0;
    let journal_entries = scrape::counter(&text1, JOURNAL_ENTRIES).unwrap_or(0) - journal0.1;
    let ring = ring.lock().await.clone();
    let accepted = accepted.lock().await.clone();
    let completed = ring.len();
    Ok(CallsResult {
        rate,
        callees,
        offered,
        completed,
        failed: failed.load(Ordering::Relaxed),
        shed: shed.load(Ordering::Relaxed),
        server_cpu_us_per_call: server_cpu as f64 / completed.max(1) as f64,
        generator_cpu_us_per_call: my_cpu as f64 / completed.max(1) as f64,
        ring,
        server_ring,
        accepted,
        store: server.store,
        journal_bytes,
        journal_entries,
    })
}

const RING: &str = "invitation_invite_to_ring_seconds";
const JOURNAL_BYTES: &str = "invitation_journal_bytes_total";
const JOURNAL_ENTRIES: &str = "invitation_journal_entries_total";

fn is_ring(b: &ServerBody) -> bool {
    matches!(
        b,
        ServerBody::Event {
            event: Event::IncomingCall { .. },
            ..
        }
    )
}

/// One call; `None` when the server shed the invitation (`unavailable`).
async fn one_call(g: &mut Group, n: u64, receipts: bool) -> Result<Option<(Duration, Duration)>> {
    let t0 = Instant::now();
    let invite = ClientMessage::new(
        rid(format!("i{n}")),
        Command::Invite(InviteRequest::new(
            g.callees.iter().map(|(u, _)| u.clone()).collect(),
            CallType::Voice,
        )),
    );
    g.caller.send(&invite).await?;
    // The caller's answer races the first ring: an overloaded server
    // answers `unavailable` and nobody rings.
    let mut first_ring = None;
    {
        let (caller, first) = (&mut g.caller, &mut g.callees[0].1);
        // The answer rides on the `outgoing_call` event the invite caused.
        let answered = |b: &ServerBody| b.success().is_some() || matches!(b, ServerBody::Error(_));
        tokio::select! {
            biased;
            m = until(first, &["incoming_call\""], is_ring) => first_ring = Some(m?),
            m = until(caller, &["outgoing_call\"", "reply\"", "error\""], answered) => {
                if let ServerBody::Error(e) = m?.body {
                    if e.code == ErrorCode::Unavailable {
                        return Ok(None);
                    }
                    bail!("invite refused: {:?} {}", e.code, e.message);
                }
            }
        }
    }
    let mut ring = Duration::ZERO;
    let mut call = None;
    for (k, (_, ws)) in g.callees.iter_mut().enumerate() {
        let m = match first_ring.take() {
            Some(m) => m,
            None => until(ws, &["incoming_call\""], is_ring).await?,
        };
        if let ServerBody::Event {
            event: Event::IncomingCall { call_id, .. },
            ..
        } = m.body
        {
            if k == 0 {
                ring = t0.elapsed();
            }
            if receipts {
                let receipt = ClientMessage::new(
                    rid(format!("r{n}")),
                    Command::Received {
                        call_id: call_id.clone(),
                    },
                );
                ws.send(&receipt).await?;
            }
            let cmd = if k == 0 {
                Command::Accept {
                    call_id: call_id.clone(),
                    custom_data: None,
                }
            } else {
                Command::Decline {
                    call_id: call_id.clone(),
                    busy: false,
                    custom_data: None,
                }
            };
            ws.send(&ClientMessage::new(rid(format!("a{n}")), cmd))
                .await?;
            call = Some(call_id);
        }
    }
    let call_id = call.expect("at least one callee");
    let mut outcomes = 0;
    let mut accepted = Duration::ZERO;
    while outcomes < g.callees.len() {
        let m = until(&mut g.caller, &["callee_outcome\""], any).await?;
        if let ServerBody::Event {
            event:
                Event::CalleeOutcome {
                    reason: Reason::Accepted,
                    ..
                },
            ..
        } = m.body
        {
            accepted = t0.elapsed();
        }
        outcomes += 1;
    }
    let hang = ClientMessage::new(
        rid(format!("h{n}")),
        Command::HangUp {
            call_id,
            custom_data: None,
        },
    );
    g.caller.send(&hang).await?;
    until(&mut g.caller, &["call_ended\""], any).await?;
    for (k, (_, ws)) in g.callees.iter_mut().enumerate() {
        let end = if k == 0 {
            "call_ended\""
        } else {
            "incoming_ended\""
        };
        until(ws, &[end], any).await?;
    }
    Ok(Some((ring, accepted)))
}

/// Results of a timeout storm.
#[derive(Debug, Clone)]
pub(crate) struct TimeoutsResult {
    pub(crate) pending: usize,
    pub(crate) spread: Duration,
    /// At the generator: outcome received - (invite sent + ring). An upper
    /// bound: it includes the invite's own queueing and the generator.
    pub(crate) lateness: Histogram<u64>,
    /// At the server: deadline -> events written (bucket bounds).
    pub(crate) server_lateness: Buckets,
    pub(crate) missing: usize,
    /// Invitations refused with `unavailable` first (then resent).
    pub(crate) shed: u64,
    pub(crate) server_rss_per_pending: f64,
}

/// `pending` invitations from as many callers to offline callees (held
/// until the ring timeout), sent evenly over `spread` (zero: all at once),
/// then measures how late each timeout is: at the server (its histogram) and
/// at the caller. With `spread` = 5 s and a 10 s ring, all are pending
/// together for a moment (the memory figure) and expire at the rate they
/// were created, as in a steady state.
pub(crate) async fn timeout_storm(
    server: &ServerProc,
    pending: usize,
    spread: Duration,
) -> Result<TimeoutsResult> {
    let auth = authority();
    let pb = progress(pending as u64, "connecting");
    let mut callers = Vec::with_capacity(pending);
    for i in 0..pending {
        callers.push(connect_from(server.addr, &auth, &format!("tc{i}"), source_of(i)).await?);
        pb.inc(1);
    }
    pb.finish_and_clear();
    let before = Buckets::parse(&scrape::metrics_of(server).await?, LATENESS);
    let (rss0, _) = memory_kb(server.pid);
    let ring = Duration::from_secs(10);
    let start = tokio::time::Instant::now();
    let gap = spread.div_f64(pending as f64);
    let mut sent = Vec::with_capacity(pending);
    for (i, ws) in callers.iter_mut().enumerate() {
        let invite = ClientMessage::new(
            rid(format!("t{i}")),
            Command::Invite(
                InviteRequest::new(vec![UserId::new(format!("offline{i}"))?], CallType::Voice)
                    .with_timeout_s(Some(ring.as_secs() as u32)),
            ),
        )
        .encode();
        tokio::time::sleep_until(start + gap * i as u32).await;
        sent.push((invite.clone(), Instant::now()));
        ws.send(Message::text(invite)).await?;
    }
    // All are pending now (the first expires `ring - spread` later).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (rss1, _) = memory_kb(server.pid);
    let lateness = Arc::new(Mutex::new(hist()));
    let shed = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (ws, (invite, at)) in callers.into_iter().zip(sent) {
        let (lateness, shed) = (lateness.clone(), shed.clone());
        tasks.spawn(async move {
            let mut ws = ws;
            let mut at = at;
            let outcome = async {
                loop {
                    let m = next(&mut ws).await?;
                    match m.body {
                        // Shed by an overloaded server: wait as told, resend.
                        ServerBody::Error(e) if e.code == ErrorCode::Unavailable => {
                            shed.fetch_add(1, Ordering::Relaxed);
                            let wait = e.retry_after_ms.unwrap_or(1000);
                            tokio::time::sleep(Duration::from_millis(wait)).await;
                            at = Instant::now();
                            ws.send(Message::text(invite.clone())).await?;
                        }
                        ServerBody::Event {
                            event:
                                Event::CalleeOutcome {
                                    reason: Reason::Timeout,
                                    ..
                                },
                            ..
                        } => return anyhow::Ok(Instant::now()),
                        _ => {}
                    }
                }
            };
            match tokio::time::timeout(ring * 2 + Duration::from_secs(30), outcome).await {
                Ok(Ok(got)) => {
                    let late = got.saturating_duration_since(at + ring);
                    lateness.lock().await.record(late.as_micros() as u64).ok();
                    true
                }
                _ => false,
            }
        });
    }
    let mut missing = 0;
    while let Some(r) = tasks.join_next().await {
        if !matches!(r, Ok(true)) {
            missing += 1;
        }
    }
    let after = Buckets::parse(&scrape::metrics_of(server).await?, LATENESS);
    let lateness = lateness.lock().await.clone();
    Ok(TimeoutsResult {
        pending,
        spread,
        lateness,
        server_lateness: after.since(&before),
        missing,
        shed: shed.load(Ordering::Relaxed),
        server_rss_per_pending: (rss1.saturating_sub(rss0) * 1024) as f64 / pending as f64,
    })
}

const LATENESS: &str = "invitation_timer_lateness_seconds";

/// Memory per idle connection, ours and the echo's.
#[derive(Debug, Clone)]
pub(crate) struct IdleResult {
    pub(crate) clients: usize,
    pub(crate) ours_bytes: f64,
    pub(crate) echo_bytes: f64,
}

/// Whose idle connections: ours (authenticated with `hello`) or the bare
/// echo's (one message exchanged, as ours exchange `hello`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum IdleKind {
    Ours,
    Echo,
}

/// Opens idle connection number `i` (its source address follows from `i`).
async fn open_idle(kind: IdleKind, addr: SocketAddr, auth: &Authority, i: usize) -> Result<Ws> {
    match kind {
        IdleKind::Ours => connect_from(addr, auth, &format!("idle{i}"), source_of(i)).await,
        IdleKind::Echo => {
            let mut ws = dial(addr, source_of(i)).await?;
            ws.send(Message::text("hello")).await?;
            ws.next().await;
            Ok(ws)
        }
    }
}

/// `invitation-bench idle-hold`: opens connections `from..from + count`,
/// prints `ready`, and holds them until its stdin closes (the parent's
/// end of the pipe). One process holds at most ~19.9k sockets, so larger
/// idle runs are split over several.
pub(crate) async fn idle_hold(
    kind: IdleKind,
    addr: SocketAddr,
    from: usize,
    count: usize,
) -> Result<()> {
    let auth = authority();
    let mut conns = Vec::with_capacity(count);
    for i in from..from + count {
        conns.push(open_idle(kind, addr, &auth, i).await?);
    }
    println!("ready");
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while tokio::io::AsyncReadExt::read(&mut stdin, &mut buf).await? > 0 {}
    drop(conns);
    Ok(())
}

/// Server RSS growth per connection while `clients` idle connections of
/// `kind` are open, held by this process or split over `procs` child
/// processes (needed past ~19k: one process has 20,000 files at most).
async fn idle_bytes(
    server: ServerProc,
    clients: usize,
    procs: usize,
    kind: IdleKind,
) -> Result<f64> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss0, _) = memory_kb(server.pid);
    let mut held = Vec::new();
    let mut children = Vec::new();
    if procs <= 1 {
        let auth = authority();
        let pb = progress(clients as u64, &format!("idle ({kind:?})"));
        for i in 0..clients {
            held.push(open_idle(kind, server.addr, &auth, i).await?);
            pb.inc(1);
        }
        pb.finish_and_clear();
    } else {
        let me = std::env::current_exe()?;
        let share = clients.div_ceil(procs);
        for p in 0..procs {
            let from = p * share;
            let count = share.min(clients.saturating_sub(from));
            if count == 0 {
                break;
            }
            let mut child = tokio::process::Command::new(&me)
                .args(["idle-hold", "--addr", &server.addr.to_string()])
                .args([
                    "--kind",
                    if kind == IdleKind::Ours {
                        "ours"
                    } else {
                        "echo"
                    },
                ])
                .args(["--from", &from.to_string(), "--count", &count.to_string()])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let stdout = child.stdout.take().context("child stdout")?;
            children.push((child, stdout));
        }
        for (_, stdout) in &mut children {
            let mut line = String::new();
            tokio::io::AsyncBufReadExt::read_line(
                &mut tokio::io::BufReader::new(stdout),
                &mut line,
            )
            .await?;
            if line.trim() != "ready" {
                bail!("an idle-hold process failed");
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss1, _) = memory_kb(server.pid);
    drop(held);
    for (mut child, _) in children {
        drop(child.stdin.take()); // EOF: the child lets go and exits
        let _ = child.wait().await;
    }
    server.stop().await;
    Ok((rss1.saturating_sub(rss0) * 1024) as f64 / clients as f64)
}

/// A new 127.0.0.x source address every 10,000 connections.
fn source_of(i: usize) -> u8 {
    1 + (i / 10_000) as u8
}

pub(crate) async fn idle_both(
    server_bin: &Option<PathBuf>,
    cpu: &str,
    clients: usize,
    procs: usize,
) -> Result<IdleResult> {
    let server = start_server(server_bin, cpu, Store::Memory).await?;
    let ours = idle_bytes(server, clients, procs, IdleKind::Ours).await?;
    let echo = idle_bytes(start_echo(cpu).await?, clients, procs, IdleKind::Echo).await?;
    Ok(IdleResult {
        clients,
        ours_bytes: ours,
        echo_bytes: echo,
    })
}

/// Request/response throughput, ours and the echo's.
#[derive(Debug, Clone)]
pub(crate) struct RelayResult {
    pub(crate) ours_per_s: f64,
    pub(crate) echo_per_s: f64,
    pub(crate) ours_cpu_us_per_msg: f64,
    pub(crate) echo_cpu_us_per_msg: f64,
}

const RELAY_CONNS: usize = 32;
const RELAY_WINDOW: usize = 8;

async fn pump(
    mut ws: Ws,
    deadline: tokio::time::Instant,
    make: impl Fn(u64) -> String,
) -> Result<u64> {
    let mut sent = 0u64;
    let mut got = 0u64;
    for _ in 0..RELAY_WINDOW {
        ws.send(Message::text(make(sent))).await?;
        sent += 1;
    }
    while tokio::time::Instant::now() < deadline {
        match ws.next().await {
            Some(Ok(Message::Text(_))) => {
                got += 1;
                ws.send(Message::text(make(sent))).await?;
                sent += 1;
            }
            Some(Ok(_)) => {}
            _ => break,
        }
    }
    Ok(got)
}

/// Pumps pings through `conns` for `secs`; (messages/s, server CPU µs per message).
async fn measure_relay(server: ServerProc, conns: Vec<Ws>, secs: f64) -> Result<(f64, f64)> {
    let c0 = cpu_us(server.pid);
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
    let mut tasks = tokio::task::JoinSet::new();
    for ws in conns {
        tasks.spawn(pump(ws, deadline, |n| {
            format!(r#"{{"v":1,"id":"p{n}","type":"ping"}}"#)
        }));
    }
    let mut total = 0;
    while let Some(r) = tasks.join_next().await {
        total += r??;
    }
    let c = cpu_us(server.pid) - c0;
    server.stop().await;
    Ok((total as f64 / secs, c as f64 / total.max(1) as f64))
}

pub(crate) async fn relay_both(
    server_bin: &Option<PathBuf>,
    cpu: &str,
    secs: f64,
) -> Result<RelayResult> {
    let auth = authority();
    let server = start_server(server_bin, cpu, Store::Memory).await?;
    let mut conns = Vec::new();
    for i in 0..RELAY_CONNS {
        conns.push(connect(server.addr, &auth, &format!("relay{i}")).await?);
    }
    let (ours, ours_cpu) = measure_relay(server, conns, secs).await?;
    // The echo answers the same text frames: the floor for the transport.
    let server = start_echo(cpu).await?;
    let mut conns = Vec::new();
    for _ in 0..RELAY_CONNS {
        conns.push(dial(server.addr, 1).await?);
    }
    let (echo, echo_cpu) = measure_relay(server, conns, secs).await?;
    Ok(RelayResult {
        ours_per_s: ours,
        echo_per_s: echo,
        ours_cpu_us_per_msg: ours_cpu,
        echo_cpu_us_per_msg: echo_cpu,
    })
}

/// The latency floor: open-loop messages at `rate` for `secs`, each from
/// one client through the bare relay to its partner (the relay pinned like
/// our server); the forward latency of each, µs, and how many were lost.
pub(crate) async fn relay_floor(
    relay: &ServerProc,
    rate: f64,
    secs: f64,
) -> Result<(Histogram<u64>, u64)> {
    let offered = (rate * secs).round().max(1.0) as u64;
    let pairs = ((rate * 0.25) as usize).clamp(20, 3000);
    let mut free = Vec::with_capacity(pairs);
    for i in 0..pairs {
        let path = format!("/relay/p{i}");
        let a = dial_path(relay.addr, 1, &path).await?;
        let b = dial_path(relay.addr, 1, &path).await?;
        free.push((a, b));
    }
    let free = Arc::new(Mutex::new(free));
    let latency = Arc::new(Mutex::new(hist()));
    let lost = Arc::new(AtomicU64::new(0));
    // About the size of an invite: the relay's cost grows with the bytes.
    let filler = "x".repeat(200);
    let start = tokio::time::Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..offered {
        tokio::time::sleep_until(start + interval.mul_f64(n as f64)).await;
        let Some((mut a, mut b)) = free.lock().await.pop() else {
            lost.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let (free, latency, lost) = (free.clone(), latency.clone(), lost.clone());
        let text = format!(r#"{{"n":{n},"pad":"{filler}"}}"#);
        tasks.spawn(async move {
            let sent = tokio::time::Instant::now();
            let forwarded = async {
                a.send(Message::text(text)).await?;
                loop {
                    match b.next().await {
                        Some(Ok(Message::Text(_))) => return anyhow::Ok(()),
                        Some(Ok(_)) => continue,
                        _ => anyhow::bail!("the relay closed"),
                    }
                }
            };
            match tokio::time::timeout(Duration::from_secs(10), forwarded).await {
                Ok(Ok(())) => {
                    latency
                        .lock()
                        .await
                        .record(sent.elapsed().as_micros() as u64)
                        .ok();
                    free.lock().await.push((a, b));
                }
                _ => {
                    lost.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let latency = latency.lock().await.clone();
    Ok((latency, lost.load(Ordering::Relaxed)))
}

/// What `recovery` measured.
pub(crate) struct RecoveryResult {
    pub(crate) pending: usize,
    pub(crate) durability: Durability,
    /// Seconds to make the invitations (connect, hello, invite, close).
    pub(crate) fill_secs: f64,
    /// Invites shed (`unavailable`) and sent again while filling.
    pub(crate) shed: u64,
    /// Journal bytes written while filling, and entries.
    pub(crate) journal_bytes: u64,
    pub(crate) journal_entries: u64,
    /// Bytes in the data directory at the kill.
    pub(crate) dir_bytes: u64,
    /// From spawning the restarted process to its port accepting.
    pub(crate) restart: Duration,
    /// The server's own account: (elapsed ms, entries replayed, ringing).
    pub(crate) recovered: Option<(u64, u64, u64)>,
    /// The restarted server's resident memory, kB.
    pub(crate) rss_kb: u64,
    /// The files the restart read: (snapshots, snapshot bytes, journals).
    pub(crate) files: (usize, u64, usize),
}

/// Fills a durable server with `pending` held invitations (each caller
/// connects, invites an offline callee with a 600 s ring, and goes: its
/// grace is a day), kills it with SIGKILL, restarts it on the same data
/// directory and times the start.
pub(crate) async fn recovery(
    server_bin: &Option<PathBuf>,
    cpu: &str,
    durability: Durability,
    pending: usize,
    snapshot_after_mb: Option<u64>,
) -> Result<RecoveryResult> {
    use tokio::io::AsyncBufReadExt;

    let bin = crate::server_binary(server_bin)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let extra = match snapshot_after_mb {
        Some(mb) => format!("caller_gone_grace_s = 86400\nsnapshot_after_mb = {mb}\n"),
        None => "caller_gone_grace_s = 86400\n".to_owned(),
    };
    let config = crate::bench_config(port, &extra)?;
    let dir = crate::fresh_data_dir(port);
    let store = Store::Durable(durability);
    let start = |log: bool| {
        let mut cmd = if cpu == "none" {
            tokio::process::Command::new(&bin)
        } else {
            let mut c = tokio::process::Command::new("taskset");
            c.arg("-c").arg(cpu).arg(&bin);
            c
        };
        cmd.args(["--listen", &addr.to_string()])
            .args(crate::store_args(store, &dir))
            .envs(crate::durability_env(store))
            .env("INVITATION_SECRET", SECRET)
            .env("INVITATION_CONFIG", &config)
            .env("INVITATION_LOG_FORMAT", "json")
            .env("RUST_LOG", if log { "info" } else { "error" })
            .stdout(if log {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        cmd.spawn()
    };
    let mut first = start(false)?;
    wait_up(addr).await?;
    let auth = authority();
    let pb = progress(pending as u64, "holding invitations");
    let filled = Instant::now();
    let taken = Arc::new(AtomicU64::new(0));
    let shed = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let (taken, auth, pb, shed) = (taken.clone(), auth.clone(), pb.clone(), shed.clone());
        workers.spawn(async move {
            loop {
                let i = taken.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= pending {
                    return anyhow::Ok(());
                }
                let mut ws =
                    connect_from(addr, &auth, &format!("rc{i}"), 1 + (i % 250) as u8).await?;
                let invite = ClientMessage::new(
                    rid(format!("r{i}")),
                    Command::Invite(
                        InviteRequest::new(vec![UserId::new(format!("ro{i}"))?], CallType::Voice)
                            .with_timeout_s(Some(600)),
                    ),
                );
                ws.send(Message::text(invite.encode())).await?;
                loop {
                    let m = next(&mut ws).await?;
                    if m.body.success().is_some() {
                        break;
                    }
                    match m.body {
                        // Shed while the server was busy: wait as told, resend.
                        ServerBody::Error(e) if e.code == ErrorCode::Unavailable => {
                            shed.fetch_add(1, Ordering::Relaxed);
                            let wait = e.retry_after_ms.unwrap_or(1000);
                            tokio::time::sleep(Duration::from_millis(wait)).await;
                            ws.send(Message::text(invite.encode())).await?;
                        }
                        ServerBody::Error(e) => bail!("invite refused: {:?} {}", e.code, e.message),
                        _ => {}
                    }
                }
                let _ = ws.close(None).await;
                pb.inc(1);
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    pb.finish_and_clear();
    let fill_secs = filled.elapsed().as_secs_f64();
    // Every close reached the hub (the journal stops growing).
    let mut last = 0;
    let text = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let text = scrape::metrics(addr).await?;
        let now = scrape::counter(&text, JOURNAL_ENTRIES).unwrap_or(0);
        if now == last {
            break text;
        }
        last = now;
    };
    let journal_bytes = scrape::counter(&text, JOURNAL_BYTES).unwrap_or(0);
    let journal_entries = scrape::counter(&text, JOURNAL_ENTRIES).unwrap_or(0);
    let dir_bytes = crate::dir_bytes(&dir);
    let mut files = (0, 0, 0);
    for entry in std::fs::read_dir(&dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("snapshot-") {
            files.0 += 1;
            files.1 += entry.metadata().map_or(0, |m| m.len());
        } else if name.starts_with("journal-") {
            files.2 += 1;
        }
    }
    first.kill().await?; // SIGKILL
    first.wait().await?;

    let spawned = Instant::now();
    let mut second = start(true)?;
    let second_pid = second.id().context("server pid")?;
    let stdout = second.stdout.take().context("stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let reader = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let f = &v["fields"];
            if f["message"] == "state recovered" {
                let text = f["recovered"].as_str().unwrap_or_default().to_owned();
                let num = |key: &str| {
                    text.split(&format!("{key}: "))
                        .nth(1)
                        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                        .and_then(|n| n.parse::<u64>().ok())
                        .unwrap_or(0)
                };
                return Some((
                    f["elapsed_ms"].as_u64().unwrap_or(0),
                    num("entries"),
                    num("ringing"),
                ));
            }
        }
        None
    });
    wait_up(addr).await?;
    let restart = spawned.elapsed();
    let recovered = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .ok()
        .and_then(Result::ok)
        .flatten();
    match recovered {
        Some((_, _, ringing)) if ringing == pending as u64 => {}
        other => bail!(
            "expected all {pending} invitations ringing after the restart, the server said {other:?}"
        ),
    }
    let (rss_kb, _) = memory_kb(second_pid);
    second.kill().await?;
    second.wait().await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(RecoveryResult {
        pending,
        durability,
        fill_secs,
        shed: shed.load(Ordering::Relaxed),
        journal_bytes,
        journal_entries,
        dir_bytes,
        restart,
        recovered,
        rss_kb,
        files,
    })
}

/// Waits until the server at `addr` answers `/healthz` (it binds its port
/// before it recovers, so a TCP connection alone proves nothing; the
/// request waits in the backlog until it serves). 5 ms steps while nothing
/// listens, at most a minute in all.
async fn wait_up(addr: SocketAddr) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(addr).await {
            let asked = s
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
                .await;
            let mut answer = String::new();
            let read = tokio::time::timeout_at(deadline, s.read_to_string(&mut answer)).await;
            if asked.is_ok() && matches!(read, Ok(Ok(_))) && answer.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bail!("nothing serving on {addr}")
}
