//! `invitation-bench`: measures a real `invitation-server` process over
//! loopback WebSockets, beside a bare tokio-tungstenite echo server (the
//! floor for our transport) and Kamailio (the peer), in the same run.
//!
//! ```text
//! invitation-bench suite                        # everything, a few minutes; table + JSON + SVG
//! invitation-bench calls --rate 1000 --secs 10  # open-loop 1:1 calls
//! invitation-bench calls --rate 200 --callees 9 # group calls
//! invitation-bench calls --rate 500 --http      # 1:1 calls, clients on the HTTP transport
//! invitation-bench timeouts --pending 5000      # timeout storm: lateness
//! invitation-bench idle --clients 5000          # memory per idle connection, ours and the echo's
//! invitation-bench relay --secs 5               # messages/s, ours and the echo's
//! invitation-bench --durable calls --rate 2000   # the same with the state on disk
//! invitation-bench recovery --pending 100000     # restart time with that many invitations held
//! invitation-bench cluster                        # several nodes on NATS: latency, calls/s, failover
//! ```
//! The server is started as a child process (the binary next to this one),
//! pinned to CPU 0 with `taskset`; run the generator itself on CPU 1
//! (`taskset -c 1 invitation-bench ...`, as `just bench` does).

mod cluster;
mod disturb;
mod echo;
mod load;
mod pki;
mod report;
mod scrape;
mod sections;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use tokio::net::TcpStream;
use tokio::process::{Child, Command as Proc};

pub(crate) const SECRET: &str = "bench-secret-0123456789abcdef";

#[derive(Parser)]
#[command(about = "Load generator and measurements for invitation-server")]
struct Cli {
    /// Path to the invitation-server binary (default: next to this one).
    #[arg(long, global = true)]
    server_bin: Option<PathBuf>,
    /// Pin the servers (ours, the echo) to this CPU; `none` to not pin.
    #[arg(long, global = true, default_value = "0")]
    server_cpu: String,
    /// Run the server durable, on a fresh data directory (default: in
    /// memory).
    #[arg(long, global = true)]
    durable: bool,
    /// With `--durable`: when journal writes reach the disk.
    #[arg(long, global = true, value_enum, default_value = "write")]
    durability: Durability,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Everything, in bounded time: prints the table, writes JSON and SVG.
    Suite {
        /// Where to write `bench.json` and `latency.svg`.
        #[arg(long, default_value = "target/bench")]
        out: PathBuf,
        /// Shorter phases (for a smoke run).
        #[arg(long)]
        quick: bool,
        /// Skip the Kamailio comparison.
        #[arg(long)]
        no_kamailio: bool,
        /// Alternating runs of ours and the peer per compared figure (the
        /// median and range are printed).
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Open-loop calls: invite -> ring -> accept (first callee) -> hang up.
    Calls {
        /// Calls per second offered.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Seconds of load.
        #[arg(long, default_value_t = 10.0)]
        secs: f64,
        /// Callees per call (the first accepts, the others decline).
        #[arg(long, default_value_t = 1)]
        callees: usize,
        /// Callees acknowledge each ring with a `received` receipt before
        /// answering, as the SDK does (the caller then also gets
        /// `callee_delivered`).
        #[arg(long)]
        receipts: bool,
        /// The clients use the HTTP transport (requests and long polls)
        /// instead of WebSockets.
        #[arg(long)]
        http: bool,
        /// Over TLS (`wss://`, or `https://` with `--http`): the server
        /// terminates TLS itself with a certificate made for the run.
        #[arg(long)]
        tls: bool,
    },
    /// Many invitations expiring: how late do the timeouts arrive?
    Timeouts {
        /// Invitations pending at once (one caller connection each).
        #[arg(long, default_value_t = 5000)]
        pending: usize,
        /// Send the invitations evenly over this many ms (0: all at once).
        #[arg(long, default_value_t = 0)]
        spread_ms: u64,
    },
    /// Memory per idle connection, ours and the bare echo's.
    Idle {
        /// Connections to open.
        #[arg(long, default_value_t = 5000)]
        clients: usize,
        /// Hold them in this many child processes (one holds at most
        /// ~19.9k sockets).
        #[arg(long, default_value_t = 1)]
        procs: usize,
    },
    /// (Internal) hold idle connections for `idle --procs`.
    #[command(hide = true)]
    IdleHold {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, value_enum)]
        kind: load::IdleKind,
        #[arg(long)]
        from: usize,
        #[arg(long)]
        count: usize,
    },
    /// Request/response messages per second, ours (ping/pong through the
    /// hub) and the bare echo's.
    Relay {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
    },
    /// The latency floor: open-loop messages from one client through a
    /// bare WebSocket relay to another, at `rate` for `secs`.
    Floor {
        /// Messages per second offered.
        #[arg(long, default_value_t = 1000.0)]
        rate: f64,
        /// Seconds of load.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
    },
    /// A durable server holding `pending` invitations is killed (SIGKILL)
    /// and restarted: how long until it serves again, and how many bytes
    /// it keeps.
    Recovery {
        /// Invitations held (callees offline, callers gone but within
        /// their grace).
        #[arg(long, default_value_t = 100_000)]
        pending: usize,
        /// The server's `snapshot_after_mb` (default: the server's, 64): a
        /// small one makes the restart read a snapshot and a short journal.
        #[arg(long)]
        snapshot_after_mb: Option<u64>,
    },
    /// Several nodes on NATS JetStream: invite -> ring across nodes
    /// against one node, calls/s with 1, 2 and 3 nodes, failover time.
    /// Needs `nats-server` on the PATH.
    Cluster {
        /// Alternating rounds of the latency comparison, and failovers per
        /// lease.
        #[arg(long, default_value_t = 2)]
        runs: usize,
        /// Seconds per load run.
        #[arg(long, default_value_t = 4.0)]
        secs: f64,
    },
    /// Run the bare tokio-tungstenite echo server (used by the others).
    EchoServer {
        /// Where to listen.
        #[arg(long)]
        listen: SocketAddr,
    },
}

/// When a durable server's journal writes reach the disk (the server's
/// `durability` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Durability {
    /// `write(2)` per turn, `fdatasync` every second.
    Write,
    /// `fdatasync` per turn.
    Fsync,
}

/// Where the server keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Store {
    /// `--in-memory`.
    Memory,
    /// A fresh data directory, removed when the server stops.
    Durable(Durability),
}

impl Store {
    fn from_cli(cli: &Cli) -> Self {
        if cli.durable {
            Store::Durable(cli.durability)
        } else {
            Store::Memory
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Store::Memory => "in memory",
            Store::Durable(Durability::Write) => "durable (write)",
            Store::Durable(Durability::Fsync) => "durable (fsync)",
        }
    }
}

/// A server child process.
pub(crate) struct ServerProc {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) pid: u32,
    /// Its data directory (durable), removed by [`ServerProc::stop`].
    pub(crate) data_dir: Option<PathBuf>,
    /// Where it keeps its state.
    pub(crate) store: Store,
    /// It serves TLS only (the benchmark's certificate).
    pub(crate) tls: bool,
}

impl ServerProc {
    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
        if let Some(dir) = self.data_dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Bytes in the files under `dir`.
pub(crate) fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn spawn(
    cpu: &str,
    bin: &std::path::Path,
    args: &[String],
    env: &[(&str, String)],
) -> Result<Child> {
    let mut cmd = if cpu == "none" {
        Proc::new(bin)
    } else {
        let mut c = Proc::new("taskset");
        c.arg("-c").arg(cpu).arg(bin);
        c
    };
    cmd.args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

async fn wait_listening(addr: SocketAddr) -> Result<()> {
    for _ in 0..400 {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    bail!("nothing listening on {addr}")
}

/// The server binary to run.
pub(crate) fn server_binary(server_bin: &Option<PathBuf>) -> Result<PathBuf> {
    let bin = match server_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("invitation-server"),
    };
    if !bin.exists() {
        bail!(
            "{} not found: `cargo build --release -p invitation-server`",
            bin.display()
        );
    }
    Ok(bin)
}

/// The settings file of a bench server: the per-IP and per-user limits
/// lifted (all load comes from 127.0.0.1), plus `extra` lines.
pub(crate) fn bench_config(port: u16, extra: &str) -> Result<PathBuf> {
    let config = std::env::temp_dir().join(format!("invitation-bench-{port}.toml"));
    std::fs::write(
        &config,
        format!(
            "conn_rate_per_ip = 1000000.0\nconn_burst_per_ip = 1000000.0\n\
             invite_rate_per_user = 1000000.0\ninvite_burst_per_user = 1000000.0\n\
             command_rate_per_user = 1000000.0\ncommand_burst_per_user = 1000000.0\n\
             command_rate_per_conn = 1000000.0\ncommand_burst_per_conn = 1000000.0\n\
             max_connections_per_ip = 1000000\n\
             outbound_queue = 4096\n{extra}"
        ),
    )?;
    Ok(config)
}

/// A fresh data directory for a durable bench server.
pub(crate) fn fresh_data_dir(port: u16) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("invitation-bench-data-{port}"));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The store arguments of the server command line.
pub(crate) fn store_args(store: Store, dir: &std::path::Path) -> Vec<String> {
    match store {
        Store::Memory => vec!["--in-memory".into()],
        Store::Durable(_) => vec!["--data-dir".into(), dir.display().to_string()],
    }
}

/// The `durability` environment setting of a durable server.
pub(crate) fn durability_env(store: Store) -> Vec<(&'static str, String)> {
    match store {
        Store::Durable(Durability::Fsync) => vec![("INVITATION_DURABILITY", "fsync".into())],
        Store::Durable(Durability::Write) => vec![("INVITATION_DURABILITY", "write".into())],
        Store::Memory => Vec::new(),
    }
}

/// Starts `invitation-server` with the per-IP and per-user limits lifted
/// (all load comes from 127.0.0.1), keeping its state as `store` says.
pub(crate) async fn start_server(
    server_bin: &Option<PathBuf>,
    cpu: &str,
    store: Store,
) -> Result<ServerProc> {
    start_server_tls(server_bin, cpu, store, false).await
}

/// [`start_server`], serving TLS itself when `tls` (the benchmark's
/// certificate, [`pki`]).
pub(crate) async fn start_server_tls(
    server_bin: &Option<PathBuf>,
    cpu: &str,
    store: Store,
    tls: bool,
) -> Result<ServerProc> {
    start_server_with(server_bin, cpu, store, tls, &[]).await
}

/// [`start_server_tls`] with more `INVITATION_*` settings in `extra_env`
/// (a cluster node's).
pub(crate) async fn start_server_with(
    server_bin: &Option<PathBuf>,
    cpu: &str,
    store: Store,
    tls: bool,
    extra_env: &[(&'static str, String)],
) -> Result<ServerProc> {
    let bin = server_binary(server_bin)?;
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let config = bench_config(port, "")?;
    let dir = fresh_data_dir(port);
    let mut args = vec!["--listen".into(), addr.to_string()];
    args.extend(store_args(store, &dir));
    let mut env = vec![
        ("INVITATION_SECRET", SECRET.to_owned()),
        ("INVITATION_CONFIG", config.display().to_string()),
        ("RUST_LOG", "error".to_owned()),
    ];
    env.extend(durability_env(store));
    env.extend(extra_env.iter().cloned());
    if tls {
        let pki = pki::get()?;
        env.push(("INVITATION_TLS_CERT", pki.cert.display().to_string()));
        env.push(("INVITATION_TLS_KEY", pki.key.display().to_string()));
    }
    let child = spawn(cpu, &bin, &args, &env).await?;
    let pid = child.id().context("server pid")?;
    wait_listening(addr).await?;
    Ok(ServerProc {
        child,
        addr,
        pid,
        data_dir: (store != Store::Memory).then_some(dir),
        store,
        tls,
    })
}

/// Starts the bare echo server (this binary, `echo-server`).
pub(crate) async fn start_echo(cpu: &str) -> Result<ServerProc> {
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let me = std::env::current_exe()?;
    let child = spawn(
        cpu,
        &me,
        &["echo-server".into(), "--listen".into(), addr.to_string()],
        &[],
    )
    .await?;
    let pid = child.id().context("echo pid")?;
    wait_listening(addr).await?;
    Ok(ServerProc {
        child,
        addr,
        pid,
        data_dir: None,
        store: Store::Memory,
        tls: false,
    })
}

/// (RSS kB, PSS kB) of a process.
pub(crate) fn memory_kb(pid: u32) -> (u64, u64) {
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
pub(crate) fn cpu_us(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks * 10_000 // USER_HZ = 100
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let store = Store::from_cli(&cli);
    // Single-threaded, like the server on one vCPU: the generator (and the
    // bare echo, which runs through here too) pays no cross-thread wake-ups.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match &cli.cmd {
            Cmd::EchoServer { listen } => echo::serve(*listen).await,
            Cmd::Calls {
                rate,
                secs,
                callees,
                receipts,
                http,
                tls,
            } => {
                let via = match (*http, *tls) {
                    (false, false) => load::Via::WebSocket,
                    (true, false) => load::Via::Http,
                    (false, true) => load::Via::Wss,
                    (true, true) => load::Via::Https,
                };
                let r = report::run_calls_via(
                    &cli.server_bin,
                    &cli.server_cpu,
                    *rate,
                    *secs,
                    *callees,
                    *receipts,
                    store,
                    via,
                )
                .await?;
                println!("{}", report::calls_line(&r));
                Ok(())
            }
            Cmd::Timeouts { pending, spread_ms } => {
                let server = start_server(&cli.server_bin, &cli.server_cpu, store).await?;
                let spread = std::time::Duration::from_millis(*spread_ms);
                let r = load::timeout_storm(&server, *pending, spread).await?;
                server.stop().await;
                println!("{}", report::timeouts_line(&r));
                Ok(())
            }
            Cmd::IdleHold {
                addr,
                kind,
                from,
                count,
            } => load::idle_hold(*kind, *addr, *from, *count).await,
            Cmd::Idle { clients, procs } => {
                let r = load::idle_both(&cli.server_bin, &cli.server_cpu, *clients, *procs).await?;
                println!("{}", report::idle_line(&r));
                Ok(())
            }
            Cmd::Floor { rate, secs } => {
                let relay = start_echo(&cli.server_cpu).await?;
                let floor = load::relay_floor(&relay, *rate, *secs).await;
                relay.stop().await;
                let (h, lost) = floor?;
                println!(
                    "relay floor at {rate}/s: {} forwarded, {lost} lost, p50 {} us, p99 {} us, p99.9 {} us",
                    h.len(),
                    h.value_at_quantile(0.5),
                    h.value_at_quantile(0.99),
                    h.value_at_quantile(0.999)
                );
                Ok(())
            }
            Cmd::Relay { secs } => {
                let r = load::relay_both(&cli.server_bin, &cli.server_cpu, *secs).await?;
                println!("{}", report::relay_line(&r));
                Ok(())
            }
            Cmd::Recovery {
                pending,
                snapshot_after_mb,
            } => {
                let durability = match store {
                    Store::Durable(d) => d,
                    Store::Memory => cli.durability,
                };
                let r = load::recovery(
                    &cli.server_bin,
                    &cli.server_cpu,
                    durability,
                    *pending,
                    *snapshot_after_mb,
                )
                .await?;
                println!("{}", report::recovery_line(&r));
                Ok(())
            }
            Cmd::Cluster { runs, secs } => {
                cluster::run(&cli.server_bin, &cli.server_cpu, *runs, *secs).await
            }
            Cmd::Suite {
                out,
                quick,
                no_kamailio,
                runs,
            } => {
                report::suite(
                    &cli.server_bin,
                    &cli.server_cpu,
                    out,
                    *quick,
                    !*no_kamailio,
                    *runs,
                )
                .await
            }
        }
    })
}
