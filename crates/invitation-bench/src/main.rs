//! `invitation-bench`: measures a real `invitation-server` process over
//! loopback WebSockets, beside a bare tokio-tungstenite echo server (the
//! floor for our transport) and Kamailio (the peer), in the same run.
//!
//! ```text
//! invitation-bench suite                        # everything, a few minutes; table + JSON + SVG
//! invitation-bench calls --rate 1000 --secs 10  # open-loop 1:1 calls
//! invitation-bench calls --rate 200 --callees 9 # group calls
//! invitation-bench timeouts --pending 5000      # timeout storm: lateness
//! invitation-bench idle --clients 5000          # memory per idle connection, ours and the echo's
//! invitation-bench relay --secs 5               # messages/s, ours and the echo's
//! ```
//! The server is started as a child process (the binary next to this one),
//! pinned to CPU 0 with `taskset`; run the generator itself on CPU 1
//! (`taskset -c 1 invitation-bench ...`, as `just bench` does).

mod echo;
mod load;
mod report;
mod scrape;

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
    /// Run the bare tokio-tungstenite echo server (used by the others).
    EchoServer {
        /// Where to listen.
        #[arg(long)]
        listen: SocketAddr,
    },
}

/// A server child process.
pub(crate) struct ServerProc {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    pub(crate) pid: u32,
}

impl ServerProc {
    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
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

/// Starts `invitation-server` with the per-IP and per-user limits lifted
/// (all load comes from 127.0.0.1).
pub(crate) async fn start_server(server_bin: &Option<PathBuf>, cpu: &str) -> Result<ServerProc> {
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
    let port = free_port()?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let config = std::env::temp_dir().join(format!("invitation-bench-{port}.toml"));
    std::fs::write(
        &config,
        "conn_rate_per_ip = 1000000.0\nconn_burst_per_ip = 1000000.0\n\
         invite_rate_per_user = 1000000.0\ninvite_burst_per_user = 1000000.0\n\
         command_rate_per_user = 1000000.0\ncommand_burst_per_user = 1000000.0\n\
         command_rate_per_conn = 1000000.0\ncommand_burst_per_conn = 1000000.0\n\
         max_connections_per_ip = 1000000\n\
         outbound_queue = 4096\n",
    )?;
    let child = spawn(
        cpu,
        &bin,
        &["--listen".into(), addr.to_string()],
        &[
            ("INVITATION_SECRET", SECRET.to_owned()),
            ("INVITATION_CONFIG", config.display().to_string()),
            ("RUST_LOG", "error".to_owned()),
        ],
    )
    .await?;
    let pid = child.id().context("server pid")?;
    wait_listening(addr).await?;
    Ok(ServerProc { child, addr, pid })
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
    Ok(ServerProc { child, addr, pid })
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
            } => {
                let r = report::run_calls(
                    &cli.server_bin,
                    &cli.server_cpu,
                    *rate,
                    *secs,
                    *callees,
                    *receipts,
                )
                .await?;
                println!("{}", report::calls_line(&r));
                Ok(())
            }
            Cmd::Timeouts { pending, spread_ms } => {
                let server = start_server(&cli.server_bin, &cli.server_cpu).await?;
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
            Cmd::Relay { secs } => {
                let r = load::relay_both(&cli.server_bin, &cli.server_cpu, *secs).await?;
                println!("{}", report::relay_line(&r));
                Ok(())
            }
            Cmd::Suite {
                out,
                quick,
                no_kamailio,
            } => report::suite(&cli.server_bin, &cli.server_cpu, out, *quick, !*no_kamailio).await,
        }
    })
}
