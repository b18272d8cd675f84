//! `invitation-bench`: measures a real `invitation-server` process over
//! loopback WebSockets.
//!
//! ```text
//! invitation-bench idle --clients 5000          # memory per idle authenticated connection
//! invitation-bench latency --rate 100 --calls 2000   # invite -> ring / accept latency, CPU per call
//! ```
//! The server binary is started as a child process (built next to this
//! one), optionally pinned with `--server-cpu N` / `--client-cpu N`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use invitation_core::protocol::{
    ClientMessage, Command, Event, InviteRequest, ServerBody, ServerMessage,
};
use invitation_core::{CallType, DecodeLimits, DeviceId, RequestId, UserId};
use invitation_server::Authority;
use tokio::net::TcpStream;
use tokio::process::{Child, Command as Proc};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const SECRET: &str = "bench-secret-0123456789abcdef";

#[derive(Parser)]
#[command(about = "Load generator and measurements for invitation-server")]
struct Cli {
    /// Path to the invitation-server binary (default: next to this one).
    #[arg(long, global = true)]
    server_bin: Option<PathBuf>,
    /// Pin the server to this CPU (taskset).
    #[arg(long, global = true)]
    server_cpu: Option<usize>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Memory per idle authenticated connection.
    Idle {
        /// Connections to open.
        #[arg(long, default_value_t = 5000)]
        clients: usize,
    },
    /// Open-loop 1:1 calls: invite -> ring -> accept -> hang up.
    Latency {
        /// Calls per second offered.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// Calls in total.
        #[arg(long, default_value_t = 2000)]
        calls: usize,
        /// Caller/callee pairs (each pair handles one call at a time).
        #[arg(long, default_value_t = 200)]
        pairs: usize,
    },
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct ServerProc {
    child: Child,
    addr: SocketAddr,
    pid: u32,
}

async fn start_server(cli: &Cli, extra_env: &[(&str, &str)]) -> Result<ServerProc> {
    let bin = match &cli.server_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("invitation-server"),
    };
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p invitation-server`",
            bin.display()
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut cmd = match cli.server_cpu {
        Some(cpu) => {
            let mut c = Proc::new("taskset");
            c.arg("-c").arg(cpu.to_string()).arg(&bin);
            c
        }
        None => Proc::new(&bin),
    };
    cmd.arg("--listen")
        .arg(addr.to_string())
        .env("INVITATION_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    // Lift the per-IP and per-user limits: every load comes from 127.0.0.1.
    let config = std::env::temp_dir().join(format!("invitation-bench-{port}.toml"));
    std::fs::write(
        &config,
        "conn_rate_per_ip = 1000000.0\nconn_burst_per_ip = 1000000.0\n\
         invite_rate_per_user = 1000000.0\ninvite_burst_per_user = 1000000.0\n",
    )?;
    cmd.env("INVITATION_CONFIG", &config);
    let child = cmd.spawn().context("starting the server")?;
    let pid = child.id().context("server pid")?;
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(ServerProc { child, addr, pid });
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("the server did not start listening on {addr}")
}

/// (RSS kB, PSS kB) of a process.
fn memory_kb(pid: u32) -> (u64, u64) {
    let field = |text: &str, key: &str| {
        text.lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    (field(&status, "VmRSS:"), field(&rollup, "Pss:"))
}

/// utime + stime of a process (all threads), in microseconds.
fn cpu_us(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // USER_HZ is 100 on Linux.
    ticks * 10_000
}

fn self_cpu_us() -> u64 {
    cpu_us(std::process::id())
}

async fn connect(addr: SocketAddr, authority: &Authority, user: &str, device: &str) -> Result<Ws> {
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/")).await?;
    let token = authority.mint(&UserId::new(user)?, user, Duration::from_secs(3600));
    let hello = ClientMessage::new(
        RequestId::new("h")?,
        Command::Hello {
            device: DeviceId::new(device)?,
            token: Some(token),
            last_seq: None,
        },
    );
    ws.send(Message::text(hello.encode())).await?;
    // welcome + sync
    for _ in 0..2 {
        next(&mut ws).await?;
    }
    Ok(ws)
}

async fn next(ws: &mut Ws) -> Result<ServerMessage> {
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

async fn idle(cli: &Cli, clients: usize) -> Result<()> {
    let authority = Authority::new(SECRET.as_bytes(), "invitation", None);
    let mut server = start_server(cli, &[]).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss0, pss0) = memory_kb(server.pid);
    let mut conns = Vec::with_capacity(clients);
    let started = Instant::now();
    for i in 0..clients {
        conns.push(connect(server.addr, &authority, &format!("idle{i}"), "d").await?);
    }
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss1, pss1) = memory_kb(server.pid);
    let per_rss = (rss1.saturating_sub(rss0) * 1024) as f64 / clients as f64;
    let per_pss = (pss1.saturating_sub(pss0) * 1024) as f64 / clients as f64;
    println!(
        "idle: {clients} authenticated WebSocket connections in {:.1} s",
        took.as_secs_f64()
    );
    println!(
        "idle: server RSS {rss0} kB -> {rss1} kB: {per_rss:.0} B per connection (PSS {per_pss:.0} B); kernel socket memory not included"
    );
    drop(conns);
    server.child.kill().await.ok();
    Ok(())
}

struct Pair {
    caller: Ws,
    callee: Ws,
    callee_id: UserId,
}

async fn latency(cli: &Cli, rate: f64, calls: usize, pairs: usize) -> Result<()> {
    let authority = Authority::new(SECRET.as_bytes(), "invitation", None);
    let mut server = start_server(cli, &[]).await?;
    let mut free = Vec::with_capacity(pairs);
    for i in 0..pairs {
        let caller = connect(server.addr, &authority, &format!("caller{i}"), "d").await?;
        let callee = connect(server.addr, &authority, &format!("callee{i}"), "d").await?;
        free.push(Pair {
            caller,
            callee,
            callee_id: UserId::new(format!("callee{i}"))?,
        });
    }
    let free = Arc::new(Mutex::new(free));
    let ring = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let accept = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?));
    let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cpu0 = cpu_us(server.pid);
    let me0 = self_cpu_us();
    let started = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate);
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..calls {
        // Open loop: the n-th call starts at its scheduled time, whatever
        // happened to earlier ones.
        tokio::time::sleep_until((started + interval * n as u32).into()).await;
        let Some(mut pair) = free.lock().await.pop() else {
            failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            continue;
        };
        let (free, ring, accept, failed) =
            (free.clone(), ring.clone(), accept.clone(), failed.clone());
        tasks.spawn(async move {
            match one_call(&mut pair, n).await {
                Ok((r, a)) => {
                    ring.lock().await.record(r.as_micros() as u64).ok();
                    accept.lock().await.record(a.as_micros() as u64).ok();
                }
                Err(e) => {
                    eprintln!("call {n} failed: {e}");
                    failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            free.lock().await.push(pair);
        });
    }
    while tasks.join_next().await.is_some() {}
    let wall = started.elapsed();
    let server_cpu = cpu_us(server.pid) - cpu0;
    let my_cpu = self_cpu_us() - me0;
    let (ring, accept) = (ring.lock().await, accept.lock().await);
    let done = ring.len() as f64;
    println!(
        "latency: {calls} calls offered at {rate}/s over {:.1} s; failed {}",
        wall.as_secs_f64(),
        failed.load(std::sync::atomic::Ordering::Relaxed)
    );
    println!(
        "latency: invite -> incoming at callee: p50 {} us, p99 {} us, p99.9 {} us, max {} us",
        ring.value_at_quantile(0.5),
        ring.value_at_quantile(0.99),
        ring.value_at_quantile(0.999),
        ring.max()
    );
    println!(
        "latency: invite -> accepted at caller: p50 {} us, p99 {} us, p99.9 {} us",
        accept.value_at_quantile(0.5),
        accept.value_at_quantile(0.99),
        accept.value_at_quantile(0.999)
    );
    println!(
        "cpu: server {:.0} us per completed call; load generator {:.0} us per call (CPU time from /proc, 10 ms ticks)",
        server_cpu as f64 / done,
        my_cpu as f64 / done
    );
    server.child.kill().await.ok();
    Ok(())
}

/// One call: invite, wait for the ring at the callee, accept, wait for the
/// acceptance at the caller, hang up. Returns (ring, accepted) latencies.
async fn one_call(pair: &mut Pair, n: usize) -> Result<(Duration, Duration)> {
    let t0 = Instant::now();
    let invite = ClientMessage::new(
        RequestId::new(format!("i{n}"))?,
        Command::Invite(InviteRequest {
            callees: vec![pair.callee_id.clone()],
            call_type: CallType::Voice,
            custom_data: None,
            timeout_s: None,
        }),
    );
    pair.caller.send(Message::text(invite.encode())).await?;
    let call_id = loop {
        if let ServerBody::Event {
            event: Event::IncomingCall { call_id, .. },
            ..
        } = next(&mut pair.callee).await?.body
        {
            break call_id;
        }
    };
    let ring = t0.elapsed();
    let accept = ClientMessage::new(
        RequestId::new(format!("a{n}"))?,
        Command::Accept {
            call_id: call_id.clone(),
        },
    );
    pair.callee.send(Message::text(accept.encode())).await?;
    loop {
        if let ServerBody::Event {
            event: Event::CalleeOutcome { .. },
            ..
        } = next(&mut pair.caller).await?.body
        {
            break;
        }
    }
    let accepted = t0.elapsed();
    let hang = ClientMessage::new(
        RequestId::new(format!("h{n}"))?,
        Command::HangUp { call_id },
    );
    pair.caller.send(Message::text(hang.encode())).await?;
    // Drain both sides until the call is over for each.
    for ws in [&mut pair.caller, &mut pair.callee] {
        loop {
            if let ServerBody::Event {
                event: Event::CallEnded { .. },
                ..
            } = next(ws).await?.body
            {
                break;
            }
        }
    }
    Ok((ring, accepted))
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Idle { clients } => idle(&cli, clients).await,
        Cmd::Latency { rate, calls, pairs } => latency(&cli, rate, calls, pairs).await,
    }
}
