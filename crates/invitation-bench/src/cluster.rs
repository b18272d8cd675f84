//! Several nodes on NATS JetStream: what the cluster costs against one
//! node, and how long a failover takes.
//!
//! Every node and the NATS server run pinned to the server's vCPU, as one
//! node alone does: on a 2-vCPU machine (one for the generator) more nodes
//! share the same CPU, so calls/s with 2 and 3 nodes show the cluster's
//! overhead, not added capacity.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use invitation_core::protocol::{ClientMessage, Command, Event, InviteRequest, ServerBody};
use invitation_core::{CallId, CallType, ErrorCode, UserId};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

use crate::load::{self, CallsResult, Placement, Via, Ws, connect_from, next, rid};
use crate::report::run_calls;
use crate::scrape;
use crate::sections::{Ctx, alternate, knee_ladder, machine, spread_of};
use crate::{ServerProc, Store};

/// Light load for the latency comparison (calls/s), as in the suite's
/// first table.
const LATENCY_RATE: f64 = 500.0;
/// The knee ladder: lower steps than the single node's, a cluster node
/// journals every answer to JetStream first.
const CLUSTER_RATES: [f64; 9] = [
    250.0, 500.0, 1000.0, 1500.0, 2000.0, 3000.0, 4000.0, 6000.0, 8000.0,
];
/// Calls ringing when the leader is killed.
const FAILOVER_CALLS: usize = 100;
/// The extra cost the issue allows across nodes, on top of one NATS
/// round trip.
const ALLOWED_EXTRA_US: f64 = 30.0;

/// `invitation-bench cluster`: the suite's cluster section on its own.
pub(crate) async fn run(
    server_bin: &Option<PathBuf>,
    cpu: &str,
    runs: usize,
    secs: f64,
) -> Result<()> {
    let mut ctx = Ctx {
        server_bin,
        cpu,
        secs,
        quick: false,
        runs: runs.max(1),
        with_kamailio: false,
        table: String::new(),
        json: serde_json::Map::new(),
        points: Vec::new(),
    };
    section(&mut ctx).await
}

/// The suite's "several nodes" section: latency, calls/s, failover; skipped
/// (saying so) without `nats-server`.
pub(crate) async fn section(ctx: &mut Ctx<'_>) -> Result<()> {
    if std::process::Command::new("nats-server")
        .arg("--version")
        .output()
        .is_err()
    {
        let _ = writeln!(
            ctx.table,
            "\nseveral nodes (NATS): SKIPPED, nats-server is not on the PATH (apt-get install nats-server)"
        );
        ctx.json
            .insert("cluster".into(), serde_json::json!({"skipped": true}));
        ctx.flush();
        return Ok(());
    }
    let latency = latency(ctx).await?;
    let throughput = throughput(ctx).await?;
    let failover = failovers(ctx).await?;
    ctx.json.insert(
        "cluster".into(),
        serde_json::json!({"latency": latency, "throughput": throughput, "failover": failover}),
    );
    ctx.flush();
    Ok(())
}

/// A `nats-server -js` pinned to `cpu`, logging to a file in its store
/// (removed by [`ServerProc::stop`]).
async fn start_nats(cpu: &str) -> Result<ServerProc> {
    let port = crate::free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let dir = std::env::temp_dir().join(format!("invitation-bench-nats-{port}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let args: Vec<String> = vec![
        "-js".into(),
        "-a".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port.to_string(),
        "-sd".into(),
        dir.display().to_string(),
        "-l".into(),
        dir.join("nats.log").display().to_string(),
    ];
    let child = crate::spawn(cpu, "nats-server".as_ref(), &args, &[]).await?;
    let pid = child.id().context("nats-server pid")?;
    // It opens the client port once JetStream is up.
    crate::wait_listening(addr).await?;
    Ok(ServerProc {
        child,
        addr,
        pid,
        data_dir: Some(dir),
        store: Store::Memory,
        tls: false,
    })
}

/// A NATS server and `n` in-memory nodes on it, every node knowing the
/// leader.
struct Cluster {
    nats: ServerProc,
    nodes: Vec<ServerProc>,
}

impl Cluster {
    async fn start(
        server_bin: &Option<PathBuf>,
        cpu: &str,
        n: usize,
        lease_ms: u64,
    ) -> Result<Self> {
        let nats = start_nats(cpu).await?;
        let mut nodes = Vec::with_capacity(n);
        for i in 0..n {
            let env = [
                ("INVITATION_NATS_URL", format!("nats://{}", nats.addr)),
                ("INVITATION_CLUSTER_NAME", "bench".to_owned()),
                ("INVITATION_NODE_NAME", format!("n{i}")),
                ("INVITATION_CLUSTER_LEASE_MS", lease_ms.to_string()),
            ];
            nodes
                .push(crate::start_server_with(server_bin, cpu, Store::Memory, false, &env).await?);
        }
        let cluster = Self { nats, nodes };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if cluster.settled().await {
                return Ok(cluster);
            }
            if Instant::now() > deadline {
                cluster.stop().await;
                bail!("the cluster found no leader within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Every node knows the leader.
    async fn settled(&self) -> bool {
        for node in &self.nodes {
            match scrape::metrics(node.addr).await {
                Ok(text) if gauge(&text, "invitation_cluster_leader_known") => {}
                _ => return false,
            }
        }
        true
    }

    /// The node that leads.
    async fn leader(&self) -> Result<usize> {
        for (i, node) in self.nodes.iter().enumerate() {
            if gauge(&scrape::metrics(node.addr).await?, LEADING) {
                return Ok(i);
            }
        }
        bail!("no node leads")
    }

    /// The runs' clients placed by `place` (group -> caller's node,
    /// callee's node); NATS's CPU counts as the server's.
    async fn calls(
        &self,
        place: &dyn Fn(usize) -> (usize, usize),
        secs: f64,
        rate: f64,
    ) -> Result<CallsResult> {
        let nodes: Vec<&ServerProc> = self.nodes.iter().collect();
        let placement = Placement {
            nodes: &nodes,
            place,
            helpers: &[self.nats.pid],
        };
        load::calls_placed(&placement, rate, secs, 1, false, true, Via::WebSocket).await
    }

    async fn stop(self) {
        for node in self.nodes {
            node.stop().await;
        }
        self.nats.stop().await;
    }
}

const LEADING: &str = "invitation_cluster_leading";

/// A 0/1 gauge is 1.
fn gauge(text: &str, name: &str) -> bool {
    scrape::counter(text, name) == Some(1)
}

/// Where the latency comparison puts a call's two clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// One node, no NATS (the state in memory).
    Single,
    /// Both on the leader of two nodes.
    Leader,
    /// Both on the other node.
    Follower,
    /// The caller on the follower, the callee on the leader.
    Across,
    /// No call: a core NATS request/reply, at the calls' pace.
    NatsRoundTrip,
    /// The same, back to back: no process sleeps between two.
    NatsBackToBack,
    /// No call: a JetStream append (publish, wait for the ack), what the
    /// leader does before any answer leaves.
    JetStreamAppend,
}

impl Setup {
    fn label(self) -> &'static str {
        match self {
            Setup::Single => "one node, no NATS",
            Setup::Leader => "2 nodes, both on the leader",
            Setup::Follower => "2 nodes, both on the follower",
            Setup::Across => "2 nodes, across (follower -> leader)",
            Setup::NatsRoundTrip => "NATS round trip (request/reply)",
            Setup::NatsBackToBack => "NATS round trip, back to back",
            Setup::JetStreamAppend => "JetStream append (publish, ack)",
        }
    }
}

/// One latency run: the median and p99 (µs), calls that did not ring.
struct Sample {
    p50: f64,
    p99: f64,
    lost: u64,
    /// Server CPU per call, µs (NaN for the round trip).
    cpu_us: f64,
}

impl Sample {
    fn of_calls(r: &CallsResult) -> Self {
        Self {
            p50: r.ring.value_at_quantile(0.5) as f64,
            p99: r.ring.value_at_quantile(0.99) as f64,
            lost: r.failed + r.shed,
            cpu_us: r.server_cpu_us_per_call,
        }
    }
}

async fn sample(
    server_bin: &Option<PathBuf>,
    cpu: &str,
    setup: Setup,
    secs: f64,
) -> Result<Sample> {
    if setup == Setup::Single {
        let r = run_calls(server_bin, cpu, LATENCY_RATE, secs, 1, false, Store::Memory).await?;
        return Ok(Sample::of_calls(&r));
    }
    if matches!(
        setup,
        Setup::NatsRoundTrip | Setup::NatsBackToBack | Setup::JetStreamAppend
    ) {
        let nats = start_nats(cpu).await?;
        let h = nats_timing(nats.addr, setup, secs).await;
        nats.stop().await;
        let h = h?;
        return Ok(Sample {
            p50: h.value_at_quantile(0.5) as f64,
            p99: h.value_at_quantile(0.99) as f64,
            lost: 0,
            cpu_us: f64::NAN,
        });
    }
    let cluster = Cluster::start(server_bin, cpu, 2, 3000).await?;
    let r = match cluster.leader().await {
        Ok(leader) => {
            let follower = 1 - leader;
            let (at, to) = match setup {
                Setup::Leader => (leader, leader),
                Setup::Follower => (follower, follower),
                _ => (follower, leader),
            };
            cluster.calls(&|_| (at, to), secs, LATENCY_RATE).await
        }
        Err(e) => Err(e),
    };
    cluster.stop().await;
    Ok(Sample::of_calls(&r?))
}

/// 200-byte messages (about an invite) for `secs`, one at a time, each
/// timed to its answer, at the calls' pace (each process sleeps between
/// two, as in a call) or back to back: JetStream appends to a file-backed
/// stream (as the leader's journal), or requests to a responder that
/// echoes them, client -> NATS -> responder -> NATS -> client, the path of
/// an edge's input and the leader's answer. Both ends are in this process
/// (the generator's vCPU), NATS on the server's.
async fn nats_timing(addr: SocketAddr, setup: Setup, secs: f64) -> Result<Histogram<u64>> {
    let append = setup == Setup::JetStreamAppend;
    let url = format!("nats://{addr}");
    let client = async_nats::connect(&url).await?;
    let js = async_nats::jetstream::new(client.clone());
    let mut echo = None;
    if append {
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: "BENCH".into(),
            subjects: vec!["bench.log".into()],
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    } else {
        let responder = async_nats::connect(&url).await?;
        let mut requests = responder.subscribe("bench.rtt").await?;
        responder.flush().await?;
        echo = Some(tokio::spawn(async move {
            while let Some(m) = requests.next().await {
                if let Some(reply) = m.reply {
                    let _ = responder.publish(reply, m.payload).await;
                }
            }
        }));
    }
    let payload = vec![b'x'; 200];
    let mut h = Histogram::new_with_bounds(1, 60_000_000, 3)?;
    let interval = Duration::from_secs_f64(1.0 / LATENCY_RATE);
    let start = tokio::time::Instant::now();
    // The first 200 warm the connections up.
    for i in 0..200 + (LATENCY_RATE * secs) as u32 {
        if setup != Setup::NatsBackToBack {
            tokio::time::sleep_until(start + interval * i).await;
        }
        let t0 = Instant::now();
        let answered = async {
            if append {
                js.publish("bench.log", payload.clone().into())
                    .await?
                    .await?;
            } else {
                client.request("bench.rtt", payload.clone().into()).await?;
            }
            anyhow::Ok(())
        };
        let answered = answered.await;
        // During the warm-up the responder's subscription may not have
        // reached NATS yet ("no responders").
        if i >= 200 {
            answered?;
            h.record(t0.elapsed().as_micros() as u64)?;
        }
    }
    if let Some(echo) = echo {
        echo.abort();
    }
    Ok(h)
}

/// Invite -> ring at light load: one node without NATS, two nodes with
/// the clients on one node or across, and the NATS round trip, alternating.
async fn latency(ctx: &mut Ctx<'_>) -> Result<serde_json::Value> {
    let runs = ctx.runs;
    let _ = writeln!(
        ctx.table,
        "\nseveral nodes (NATS): invite -> ring at {LATENCY_RATE}/s, {runs} alternating rounds, median (min-max); every node and NATS on the server's vCPU"
    );
    let setups = [
        Setup::Single,
        Setup::Leader,
        Setup::Follower,
        Setup::Across,
        Setup::NatsRoundTrip,
        Setup::NatsBackToBack,
        Setup::JetStreamAppend,
    ];
    let (server_bin, cpu, secs) = (ctx.server_bin, ctx.cpu, ctx.short());
    let by = alternate(
        runs,
        &setups,
        &mut ctx.table,
        |_| None,
        |setup| sample(server_bin, cpu, setup, secs),
    )
    .await?;
    let _ = writeln!(
        ctx.table,
        "  {:<38} {:>16} {:>18} {:>6} {:>16}  machine",
        "", "p50 us", "p99 us", "lost", "server us/call"
    );
    let mut json = serde_json::Map::new();
    for (setup, r) in setups.iter().zip(&by) {
        let (p50, p99) = (
            spread_of(&r.results, |s| s.p50),
            spread_of(&r.results, |s| s.p99),
        );
        let cpu_us = spread_of(&r.results, |s| s.cpu_us);
        let _ = writeln!(
            ctx.table,
            "  {:<38} {:>16} {:>18} {:>6} {:>16}  {}",
            setup.label(),
            p50.show(0),
            p99.show(0),
            r.results.iter().map(|s| s.lost).sum::<u64>(),
            cpu_us.show(0),
            machine(&r.notes)
        );
        json.insert(
            setup.label().into(),
            serde_json::json!({"p50_us": p50.json(), "p99_us": p99.json(), "server_cpu_us_per_call": cpu_us.json(),
                "lost": r.results.iter().map(|s| s.lost).sum::<u64>(), "machines": r.machines}),
        );
    }
    // The target, on medians: across nodes costs at most one NATS round
    // trip + 30 µs more than one node at p50.
    let p50 = |s: Setup| {
        spread_of(
            &by[setups.iter().position(|x| *x == s).expect("measured")].results,
            |x| x.p50,
        )
        .median
    };
    // The verdict against the round trip at the calls' pace, and against
    // the back-to-back one (without the sleeping processes' wake-ups).
    let single = p50(Setup::Single);
    let allowed = p50(Setup::NatsRoundTrip) + ALLOWED_EXTRA_US;
    let strict = p50(Setup::NatsBackToBack) + ALLOWED_EXTRA_US;
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    for setup in [Setup::Leader, Setup::Follower, Setup::Across] {
        let extra = p50(setup) - single;
        let _ = writeln!(
            ctx.table,
            "  extra at p50, {}: {extra:.0} us; target <= one NATS round trip + {ALLOWED_EXTRA_US} us: {} (paced, {allowed:.0} us), {} (back to back, {strict:.0} us)",
            setup.label(),
            verdict(extra <= allowed),
            verdict(extra <= strict),
        );
        json.insert(
            format!("extra_p50_us {}", setup.label()),
            serde_json::json!({"extra_us": extra, "allowed_us": allowed, "met": extra <= allowed,
                "allowed_back_to_back_us": strict, "met_back_to_back": extra <= strict}),
        );
    }
    // What the path holds: an edge's input and the leader's answer cross
    // NATS (one round trip), and the leader appends to JetStream first.
    let append = p50(Setup::JetStreamAppend);
    let _ = writeln!(
        ctx.table,
        "  for scale: one NATS round trip + one JetStream append = {:.0} us at p50",
        p50(Setup::NatsRoundTrip) + append
    );
    ctx.flush();
    Ok(json.into())
}

/// The knee (the suite's criterion) of one node without NATS and of 1, 2
/// and 3 nodes, the clients spread evenly: group `g`'s caller on node
/// `g mod n`, its callee on node `(g div n) mod n` (1 in n calls within a
/// node, as with random placement).
async fn throughput(ctx: &mut Ctx<'_>) -> Result<serde_json::Value> {
    let (server_bin, cpu, secs) = (ctx.server_bin, ctx.cpu, ctx.short());
    let _ = writeln!(
        ctx.table,
        "\nseveral nodes (NATS): sustained calls/s (the knee: no failed or shed call, ring and accept p99 <= 10 ms; {secs} s per rate); every node and NATS share the server's one vCPU, so more nodes cannot add capacity here"
    );
    let mut json = Vec::new();
    let mut notes = Vec::new();
    let mut knees = Vec::new();
    for n in [0usize, 1, 2, 3] {
        let label = match n {
            0 => "one node, no NATS".to_owned(),
            n => format!("{n} node(s) on NATS"),
        };
        let table = &mut ctx.table;
        let ((knee, rates, _), machine_json) = crate::sections::watched(
            &label,
            &[],
            &mut notes,
            knee_ladder(table, &label, &CLUSTER_RATES, |rate| async move {
                if n == 0 {
                    return run_calls(server_bin, cpu, rate, secs, 1, false, Store::Memory).await;
                }
                let cluster = Cluster::start(server_bin, cpu, n, 3000).await?;
                let r = cluster.calls(&|g| (g % n, (g / n) % n), secs, rate).await;
                cluster.stop().await;
                r
            }),
        )
        .await?;
        knees.push((label.clone(), knee));
        json.push(serde_json::json!({"nodes": n, "label": label, "knee": knee, "rates": rates, "machine": machine_json}));
        ctx.flush();
    }
    let _ = writeln!(
        ctx.table,
        "  knees: {}; {}",
        knees
            .iter()
            .map(|(l, k)| format!("{l} {k} calls/s"))
            .collect::<Vec<_>>()
            .join(", "),
        machine(&notes)
    );
    ctx.flush();
    Ok(json.into())
}

/// Failover of one cluster: times from the leader's SIGKILL.
struct Failover {
    lease_ms: u64,
    /// Another node says it leads.
    leading: Duration,
    /// A new call from a client of the killed node to one of another node
    /// rang.
    first_ring: Option<Duration>,
    /// The last client of the killed node had its `welcome` again, and the
    /// last of the other nodes'.
    reconnected_killed: Option<Duration>,
    reconnected_others: Option<Duration>,
    /// Every call ringing at the kill was accepted (the callee's `accept`
    /// answered), and how many were.
    accepted: Option<Duration>,
    accepted_calls: usize,
}

fn ms(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_owned(), |d| format!("{}", d.as_millis()))
}

fn failover_line(f: &Failover) -> String {
    format!(
        "lease {} ms: leader elected after {} ms; first new call rang after {} ms; clients back (welcome) after {} ms (the killed node's) and {} ms (the others'); {}/{FAILOVER_CALLS} ringing calls accepted, the last after {} ms",
        f.lease_ms,
        f.leading.as_millis(),
        ms(f.first_ring),
        ms(f.reconnected_killed),
        ms(f.reconnected_others),
        f.accepted_calls,
        ms(f.accepted)
    )
}

/// Failovers with a 1 s and the default 3 s lease, alternating.
async fn failovers(ctx: &mut Ctx<'_>) -> Result<serde_json::Value> {
    let runs = ctx.runs;
    let _ = writeln!(
        ctx.table,
        "\nseveral nodes (NATS): failover, 3 nodes, {FAILOVER_CALLS} calls ringing across them, the leader killed (SIGKILL); clients retry every {} ms; {runs} alternating rounds",
        RETRY.as_millis()
    );
    let leases = [1000u64, 3000];
    let (server_bin, cpu) = (ctx.server_bin, ctx.cpu);
    let by = alternate(
        runs,
        &leases,
        &mut ctx.table,
        |f| Some(failover_line(f)),
        |lease| failover(server_bin, cpu, lease),
    )
    .await?;
    let mut json = Vec::new();
    for (lease, r) in leases.iter().zip(&by) {
        let d = |f: fn(&Failover) -> Option<Duration>| {
            spread_of(&r.results, move |x| {
                f(x).map_or(f64::NAN, |d| d.as_millis() as f64)
            })
        };
        let leading = d(|f| Some(f.leading));
        let ring = d(|f| f.first_ring);
        let killed = d(|f| f.reconnected_killed);
        let others = d(|f| f.reconnected_others);
        let accepted = d(|f| f.accepted);
        let _ = writeln!(
            ctx.table,
            "  lease {lease} ms, {} runs: leader elected {} ms; first new call rang {} ms; clients back {} ms (killed node's), {} ms (others'); all ringing calls accepted {} ms; {}",
            r.results.len(),
            leading.show(0),
            ring.show(0),
            killed.show(0),
            others.show(0),
            accepted.show(0),
            machine(&r.notes)
        );
        json.push(serde_json::json!({
            "lease_ms": lease, "leading_ms": leading.json(), "first_ring_ms": ring.json(),
            "reconnected_killed_ms": killed.json(), "reconnected_others_ms": others.json(),
            "all_accepted_ms": accepted.json(),
            "accepted_calls": r.results.iter().map(|f| f.accepted_calls).collect::<Vec<_>>(),
            "machines": r.machines,
        }));
    }
    ctx.flush();
    Ok(json.into())
}

/// How long a client waits before it dials again.
const RETRY: Duration = Duration::from_millis(20);

/// The kill's time (set once it happened), when to give up, and when the
/// measurement is over (callers hang on until then).
#[derive(Clone)]
struct Clock {
    killed: watch::Receiver<Option<Instant>>,
    deadline: Instant,
    done: watch::Receiver<bool>,
}

/// What one client saw after the kill.
#[derive(Default)]
struct Seen {
    on_killed: bool,
    reconnected: Option<Duration>,
    accepted: Option<Duration>,
    rang: Option<Duration>,
}

/// A client's part in the failover.
enum Role {
    Caller,
    /// Accepts this call once back.
    Callee(CallId),
    /// Invites this user once back and once the callee is back too.
    Prober(UserId, watch::Receiver<bool>),
    /// Says it is back, then waits for the prober's call.
    Probed(watch::Sender<bool>),
}

/// One client after the kill: waits for its connection to close, dials
/// the surviving nodes in turn (its own first) until it is welcomed, then
/// plays its role, dialling again whenever it is closed on.
async fn client(
    mut ws: Ws,
    user: String,
    nodes: Vec<SocketAddr>,
    mut role: Role,
    clock: Clock,
) -> Seen {
    let mut seen = Seen::default();
    // Until the kill and the close that follows, everything is old news.
    while next(&mut ws)
        .await
        .is_ok_and(|m| !matches!(m.body, ServerBody::Closing { .. }))
    {}
    drop(ws);
    let Some(t0) = *clock.killed.borrow() else {
        return seen;
    };
    let auth = load::authority();
    let mut sent = false;
    let mut turn = 0;
    while Instant::now() < clock.deadline {
        let addr = nodes[turn % nodes.len()];
        let left = clock.deadline.saturating_duration_since(Instant::now());
        let Ok(Ok(mut ws)) = tokio::time::timeout(left, connect_from(addr, &auth, &user, 1)).await
        else {
            turn += 1;
            tokio::time::sleep(RETRY).await;
            continue;
        };
        seen.reconnected.get_or_insert(t0.elapsed());
        let mut done = clock.done.clone();
        if act(&mut ws, &mut role, &mut sent, &mut seen, t0, &mut done)
            .await
            .is_ok()
        {
            return seen;
        }
    }
    seen
}

/// Sends `command` with request id `id`.
async fn send(ws: &mut Ws, id: &str, command: Command) -> Result<()> {
    let text = ClientMessage::new(rid(id.to_owned()), command).encode();
    ws.send(Message::text(text)).await?;
    Ok(())
}

/// A client's role on a live connection; `Err` when the connection closed
/// first (the client dials again).
async fn act(
    ws: &mut Ws,
    role: &mut Role,
    sent: &mut bool,
    seen: &mut Seen,
    t0: Instant,
    done: &mut watch::Receiver<bool>,
) -> Result<()> {
    match role {
        // Stays, as a client would, until the measurement ends.
        Role::Caller => loop {
            tokio::select! {
                _ = done.wait_for(|d| *d) => return Ok(()),
                m = next(ws) => if matches!(m?.body, ServerBody::Closing { .. }) {
                    bail!("closed");
                },
            }
        },
        Role::Callee(call_id) => {
            send(ws, "accept", Command::accept(call_id.clone())).await?;
            loop {
                match next(ws).await?.body {
                    b if b.success().is_some() => {
                        seen.accepted = Some(t0.elapsed());
                        return Ok(());
                    }
                    ServerBody::Error(e) if e.code == ErrorCode::Unavailable => {
                        tokio::time::sleep(RETRY).await;
                        send(ws, "accept", Command::accept(call_id.clone())).await?;
                    }
                    // Refused for good (the call is gone): not accepted.
                    ServerBody::Error(e) if e.re.is_some() => return Ok(()),
                    ServerBody::Closing { .. } => bail!("closed"),
                    _ => {}
                }
            }
        }
        Role::Prober(callee, back) => {
            if !*sent {
                let _ = back.wait_for(|b| *b).await;
                *sent = true;
            }
            // The same request id every time: the switchboard answers it once.
            let invite = InviteRequest::new(vec![callee.clone()], CallType::Voice);
            send(ws, "probe", Command::Invite(invite)).await?;
            loop {
                match next(ws).await?.body {
                    b if b.success().is_some() => return Ok(()),
                    ServerBody::Error(e) if e.re.is_some() => bail!("invite refused: {:?}", e.code),
                    ServerBody::Closing { .. } => bail!("closed"),
                    _ => {}
                }
            }
        }
        Role::Probed(back) => {
            let _ = back.send(true);
            loop {
                match next(ws).await?.body {
                    ServerBody::Event {
                        event: Event::IncomingCall { .. },
                        ..
                    } => {
                        seen.rang = Some(t0.elapsed());
                        return Ok(());
                    }
                    ServerBody::Closing { .. } => bail!("closed"),
                    _ => {}
                }
            }
        }
    }
}

/// Three nodes with `lease_ms`; [`FAILOVER_CALLS`] calls ringing, caller
/// on node `i mod 3`, callee on the next; a prober on the leader and its
/// callee on a follower. Kills the leader and times the way back.
async fn failover(server_bin: &Option<PathBuf>, cpu: &str, lease_ms: u64) -> Result<Failover> {
    let mut cluster = Cluster::start(server_bin, cpu, 3, lease_ms).await?;
    let got = failover_on(&mut cluster, lease_ms).await;
    cluster.stop().await;
    got
}

async fn failover_on(cluster: &mut Cluster, lease_ms: u64) -> Result<Failover> {
    let auth = load::authority();
    let leader = cluster.leader().await?;
    let addrs: Vec<SocketAddr> = cluster.nodes.iter().map(|n| n.addr).collect();
    // Each client dials its own node first when it survived.
    let order = |home: usize| -> Vec<SocketAddr> {
        (0..3)
            .map(|k| (home + k) % 3)
            .filter(|&i| i != leader)
            .map(|i| addrs[i])
            .collect()
    };
    let mut clients = Vec::new();
    for i in 0..FAILOVER_CALLS {
        let (a, b) = (i % 3, (i + 1) % 3);
        let (caller, callee) = (format!("fc{i}"), format!("fe{i}"));
        let mut c = connect_from(addrs[a], &auth, &caller, 1).await?;
        let mut e = connect_from(addrs[b], &auth, &callee, 1).await?;
        let invite = InviteRequest::new(vec![UserId::new(&callee)?], CallType::Voice)
            .with_timeout_s(Some(600));
        send(&mut c, &format!("i{i}"), Command::Invite(invite)).await?;
        let call_id = loop {
            if let ServerBody::Event {
                event: Event::IncomingCall { call_id, .. },
                ..
            } = next(&mut e).await?.body
            {
                break call_id;
            }
        };
        clients.push((c, caller, a, Role::Caller));
        clients.push((e, callee, b, Role::Callee(call_id)));
    }
    let follower = (leader + 1) % 3;
    let (back_tx, back_rx) = watch::channel(false);
    let (x, y) = ("fx".to_owned(), "fy".to_owned());
    clients.push((
        connect_from(addrs[leader], &auth, &x, 1).await?,
        x,
        leader,
        Role::Prober(UserId::new("fy")?, back_rx),
    ));
    clients.push((
        connect_from(addrs[follower], &auth, &y, 1).await?,
        y,
        follower,
        Role::Probed(back_tx),
    ));

    let (killed_tx, killed) = watch::channel(None);
    let (done_tx, done) = watch::channel(false);
    let deadline = Instant::now() + Duration::from_millis(lease_ms) + Duration::from_secs(20);
    let clock = Clock {
        killed,
        deadline,
        done,
    };
    // Callers apart: they hang on until the others are through.
    let (mut callers, mut tasks) = (tokio::task::JoinSet::new(), tokio::task::JoinSet::new());
    for (ws, user, home, role) in clients {
        let set = if matches!(role, Role::Caller) {
            &mut callers
        } else {
            &mut tasks
        };
        let (nodes, clock) = (order(home), clock.clone());
        set.spawn(async move {
            let mut seen = client(ws, user, nodes, role, clock).await;
            seen.on_killed = home == leader;
            seen
        });
    }
    // SIGKILL, then watch the survivors for a new leader.
    let t0 = Instant::now();
    killed_tx.send_replace(Some(t0));
    cluster.nodes[leader].child.start_kill()?;
    let survivors: Vec<SocketAddr> = order(leader);
    let leading = 'found: loop {
        for addr in &survivors {
            if scrape::metrics(*addr)
                .await
                .is_ok_and(|t| gauge(&t, LEADING))
            {
                break 'found t0.elapsed();
            }
        }
        if Instant::now() > deadline {
            bail!(
                "no new leader within {} ms",
                deadline.duration_since(t0).as_millis()
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let mut seen = Vec::new();
    while let Some(s) = tasks.join_next().await {
        seen.push(s?);
    }
    done_tx.send_replace(true);
    while let Some(s) = callers.join_next().await {
        seen.push(s?);
    }
    // The last of each kind, when all of them got there.
    let last = |f: &dyn Fn(&Seen) -> Option<Option<Duration>>| -> Option<Duration> {
        let all: Vec<Option<Duration>> = seen.iter().filter_map(f).collect();
        all.iter()
            .copied()
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .max()
    };
    let accepted_calls = seen.iter().filter(|s| s.accepted.is_some()).count();
    Ok(Failover {
        lease_ms,
        leading,
        first_ring: seen.iter().find_map(|s| s.rang),
        reconnected_killed: last(&|s| s.on_killed.then_some(s.reconnected)),
        reconnected_others: last(&|s| (!s.on_killed).then_some(s.reconnected)),
        accepted: if accepted_calls == FAILOVER_CALLS {
            seen.iter().filter_map(|s| s.accepted).max()
        } else {
            None
        },
        accepted_calls,
    })
}
