//! `invitation-server`: run the signaling server, or mint a token.
//!
//! ```text
//! invitation-server                      # serve on 127.0.0.1:7600, state in ~/.local/state/invitation-server
//! invitation-server --in-memory          # keep nothing on disk
//! invitation-server --config server.toml --listen 0.0.0.0:7600
//! invitation-server token --user alice --name Alice --ttl 1h
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use invitation_core::UserId;
use invitation_server::auth::parse_ttl;
use invitation_server::config::{check_secret, unknown_env_vars};
use invitation_server::{Authority, Config, LogFormat, Server, secret_file};

#[derive(Parser, Debug)]
#[command(
    name = "invitation-server",
    version,
    about = "Self-hostable signaling server for call invitations"
)]
struct Cli {
    /// TOML settings file (flags and environment variables override it).
    #[arg(long, env = "INVITATION_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Listen address.
    #[arg(long, env = "INVITATION_LISTEN")]
    listen: Option<SocketAddr>,
    /// HS256 token secret (at least 16 bytes). Unset, a durable server
    /// generates one once and keeps it in an owner-only file in its data
    /// directory (`token` reads it from there); an `--in-memory` server
    /// generates one per start and writes it to an owner-only file whose
    /// path it prints (setting `secret_file`, default
    /// $XDG_RUNTIME_DIR/invitation-server-<port>.secret), and its tokens die
    /// with the process.
    #[arg(long, env = "INVITATION_SECRET", hide_env_values = true, global = true)]
    secret: Option<String>,
    /// Required token audience.
    #[arg(long, env = "INVITATION_AUDIENCE", global = true)]
    audience: Option<String>,
    /// Allowed browser Origins (repeat, or comma-separated; `*` for any).
    #[arg(long, env = "INVITATION_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origin: Vec<String>,
    /// Log format.
    #[arg(long, env = "INVITATION_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Default ring timeout, seconds (1-600).
    #[arg(long, env = "INVITATION_RING_TIMEOUT_S")]
    ring_timeout_s: Option<u32>,
    /// Most open connections.
    #[arg(long, env = "INVITATION_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Where calls, event logs, call records (and a generated secret) are
    /// kept across restarts. Default: $XDG_STATE_HOME/invitation-server
    /// (~/.local/state/invitation-server).
    #[arg(long, env = "INVITATION_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Keep nothing on disk: a restart loses live calls and event logs.
    #[arg(long, env = "INVITATION_IN_MEMORY")]
    in_memory: bool,
    /// TLS certificate chain (PEM). With --tls-key, the server serves
    /// `wss://` and `https://` itself; without, plain TCP for a proxy.
    #[arg(long, env = "INVITATION_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "INVITATION_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// DEVELOPMENT ONLY: serve the demo page at /demo/ and a token endpoint
    /// that signs tokens for any user name (never in production).
    #[arg(long, env = "INVITATION_DEV_DEMO")]
    dev_demo: bool,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Mint a token for a user (prints it on stdout).
    Token {
        /// User id (the token's `sub`).
        #[arg(long)]
        user: String,
        /// Display name.
        #[arg(long, default_value = "")]
        name: String,
        /// Lifetime, e.g. 90s, 15m, 1h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_ttl)]
        ttl: Duration,
    },
}

fn load(cli: &Cli) -> Result<Config> {
    // File, then INVITATION_<KEY> variables for every key, then flags.
    let mut config = Config::load(cli.config.as_deref(), std::env::vars())?;
    if let Some(v) = cli.listen {
        config.listen = v;
    }
    if let Some(v) = &cli.secret {
        config.secret = Some(v.clone());
    }
    if let Some(v) = &cli.audience {
        config.audience = v.clone();
    }
    if !cli.allowed_origin.is_empty() {
        config.allowed_origins = cli.allowed_origin.clone();
    }
    if let Some(v) = cli.log_format {
        config.log_format = v;
    }
    if let Some(v) = cli.ring_timeout_s {
        config.ring_timeout_s = v;
    }
    if let Some(v) = cli.max_connections {
        config.max_connections = v;
    }
    if let Some(v) = &cli.data_dir {
        config.data_dir = Some(v.clone());
    }
    if let Some(v) = &cli.tls_cert {
        config.tls_cert = Some(v.clone());
    }
    if let Some(v) = &cli.tls_key {
        config.tls_key = Some(v.clone());
    }
    if cli.in_memory {
        config.in_memory = true;
    }
    if cli.dev_demo {
        config.dev_demo = true;
    }
    if !config.in_memory && config.data_dir.is_none() {
        config.data_dir = Some(default_data_dir());
    }
    Ok(config)
}

/// `$XDG_STATE_HOME/invitation-server`, else `~/.local/state/invitation-server`,
/// else `invitation-data` in the working directory.
fn default_data_dir() -> PathBuf {
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    if let Some(state) = std::env::var_os("XDG_STATE_HOME").and_then(absolute) {
        return state.join("invitation-server");
    }
    if let Some(home) = std::env::var_os("HOME").and_then(absolute) {
        return home.join(".local/state/invitation-server");
    }
    PathBuf::from("invitation-data")
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// Tells the operator where the generated secret is (never the secret).
fn announce_secret_file(path: &std::path::Path, format: LogFormat) {
    let shown = path.display();
    match format {
        LogFormat::Json => tracing::warn!(
            secret_file = %shown,
            "no secret configured: generated one for this run (tokens die with the process), saved owner-only in secret_file"
        ),
        LogFormat::Text => eprintln!(
            "\nNo secret configured: generated one for this run (tokens die with the process),\n\
             saved readable by you only in:\n\n  {shown}\n\n\
             Mint a token in another terminal with:\n\n  \
             INVITATION_SECRET=$(cat {shown}) invitation-server token --user alice --name Alice --ttl 1h\n\n\
             Set INVITATION_SECRET (or --secret, or `secret` in the config file) to keep tokens valid across restarts.\n"
        ),
    }
}

/// Tells the operator where the kept secret is (never the secret).
fn announce_kept_secret(path: &std::path::Path, made: bool, format: LogFormat) {
    let shown = path.display();
    match format {
        LogFormat::Json => tracing::info!(
            secret_file = %shown, generated = made,
            "no secret configured: using the one kept owner-only in the data directory"
        ),
        LogFormat::Text if made => eprintln!(
            "\nNo secret configured: generated one and kept it, readable by you only, in:\n\n  {shown}\n\n\
             Tokens stay valid across restarts. Mint one in another terminal with:\n\n  \
             INVITATION_SECRET=$(cat {shown}) invitation-server token --user alice --name Alice --ttl 1h\n"
        ),
        LogFormat::Text => eprintln!("No secret configured: using the one kept in {shown}"),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let config = load(&cli)?;
    let unknown = unknown_env_vars(std::env::vars());
    // One thread: a current-thread runtime (no cross-thread wake-ups); more:
    // the work-stealing runtime with that many workers.
    let runtime = match config.threads() {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    runtime.block_on(serve(cli, config, unknown))
}

async fn serve(cli: Cli, config: Config, unknown_env: Vec<String>) -> Result<()> {
    if let Some(Sub::Token { user, name, ttl }) = &cli.command {
        if !unknown_env.is_empty() {
            eprintln!(
                "warning: ignoring unknown environment variables (no such setting): {}",
                unknown_env.join(", ")
            );
        }
        // A durable server started without a secret keeps the one it
        // generated in its data directory: mint with that one.
        let kept = config
            .store_options()
            .map(|store| store.dir.join("secret"))
            .filter(|_| config.secret.is_none())
            .and_then(|path| std::fs::read_to_string(path).ok())
            .map(|text| text.trim_end().to_owned());
        let Some(secret) = config.secret.as_ref().or(kept.as_ref()) else {
            bail!(
                "minting needs the server's secret: pass --secret or set INVITATION_SECRET \
                 (a server started without one wrote its generated secret to the file it printed)"
            );
        };
        // The same check as the server's: never mint with a secret the
        // server would refuse to start with.
        check_secret(secret)?;
        let user = UserId::new(user).context("invalid user id")?;
        let authority = Authority::new(
            secret.as_bytes(),
            &config.audience,
            config.issuer.as_deref(),
        );
        println!("{}", authority.mint(&user, name, *ttl));
        return Ok(());
    }
    init_logs(config.log_format);
    if !unknown_env.is_empty() {
        tracing::warn!(
            variables = %unknown_env.join(", "),
            "ignoring unknown INVITATION_* environment variables (no such setting)"
        );
    }
    let log_format = config.log_format;
    let mut config = config;
    match config.store_options() {
        Some(store) => {
            tracing::info!(data_dir = %store.dir.display(), durability = ?store.durability,
                "durable: calls, event logs and records survive restarts (--in-memory keeps nothing)");
            if config.secret.is_none() {
                // A durable server keeps its generated secret too: the
                // tokens clients hold stay valid across restarts.
                std::fs::create_dir_all(&store.dir).with_context(|| {
                    format!("cannot make the data directory {}", store.dir.display())
                })?;
                let path = store.dir.join("secret");
                let (secret, made) =
                    secret_file::load_or_create(&path, invitation_server::auth::random_secret)
                        .with_context(|| {
                            format!("cannot keep the generated secret in {}", path.display())
                        })?;
                check_secret(&secret)
                    .with_context(|| format!("the secret kept in {}", path.display()))?;
                config.secret = Some(secret);
                announce_kept_secret(&path, made, log_format);
            }
        }
        None => {
            tracing::warn!("in memory: a restart loses live calls, event logs and call records")
        }
    }
    let configured_file = config.secret_file.clone();
    let dev_demo = config.dev_demo;
    let server = Server::bind(config).await?;
    let addr = server.local_addr();
    let tls = server.serves_tls();
    if tls {
        tracing::info!(%addr, "listening with TLS (wss://{addr}/, https /healthz, /metrics)");
    } else {
        tracing::info!(%addr, "listening (ws://{addr}/, /healthz, /metrics)");
    }
    if dev_demo {
        let scheme = if tls { "https" } else { "http" };
        tracing::warn!("development demo: open {scheme}://{addr}/demo/ in two browser windows");
    }
    // A generated secret goes to an owner-only file, never to the terminal
    // or the log: only its path is shown.
    let written = match server.generated_secret() {
        Some(secret) => {
            let runtime_dir = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from);
            let path = secret_file::write(
                secret,
                configured_file.as_deref(),
                runtime_dir.as_deref(),
                addr.port(),
            )
            .context("no secret configured, and the generated one could not be saved (set INVITATION_SECRET or secret_file)")?;
            announce_secret_file(&path, log_format);
            Some(path)
        }
        None => None,
    };
    // Err (exit 1) when the hub task died: better than a live-looking zombie.
    let ran = server.run(shutdown_signal()).await;
    if let Some(path) = written {
        // The secret dies with the process; so does its file.
        let _ = std::fs::remove_file(path);
    }
    ran?;
    Ok(())
}
