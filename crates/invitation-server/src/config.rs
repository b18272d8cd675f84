//! Server settings: defaults that are safe on a laptop, overridable by a
//! TOML file, environment variables and flags (in that order of strength:
//! flags win).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use invitation_core::{BusyPolicy, EndPolicy, OfflinePolicy, SwitchboardConfig};
use serde::Deserialize;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The TOML keys, which are also the `INVITATION_<KEY>` environment variables.
pub const KEYS: &[&str] = &[
    "listen",
    "secret",
    "audience",
    "issuer",
    "allowed_origins",
    "max_message_bytes",
    "read_buffer_bytes",
    "handshake_timeout_s",
    "auth_timeout_s",
    "ping_every_s",
    "dead_after_s",
    "outbound_queue",
    "max_connections",
    "conn_rate_per_ip",
    "conn_burst_per_ip",
    "invite_rate_per_user",
    "invite_burst_per_user",
    "command_rate_per_user",
    "command_burst_per_user",
    "command_rate_per_conn",
    "command_burst_per_conn",
    "max_devices_per_user",
    "max_connections_per_ip",
    "secret_file",
    "hide_callee_status",
    "max_protocol_errors",
    "shutdown_grace_s",
    "max_callees",
    "ring_timeout_s",
    "max_custom_data",
    "busy_policy",
    "end_policy",
    "offline_policy",
    "caller_gone_grace_s",
    "log_format",
    "worker_threads",
    "shed_invites_after_ms",
    "write_timeout_s",
    "message_timeout_s",
    "send_buffer_bytes",
    "data_dir",
    "in_memory",
    "durability",
    "fsync_interval_ms",
    "snapshot_after_mb",
    "record_retention_days",
    "api_listen",
    "api_keys",
    "api_rate_per_key",
    "api_burst_per_key",
    "api_max_body_bytes",
    "webhook_urls",
    "webhook_secrets",
    "webhook_max_age_s",
    "webhook_timeout_ms",
    "push_gateway_url",
    "push_secrets",
    "push_timeout_ms",
    "max_push_devices",
    "tls_cert",
    "tls_key",
    "outbound_ca_file",
    "dev_demo",
    "nats_url",
    "cluster_name",
    "node_name",
    "cluster_lease_ms",
];

/// Keys whose environment values are always text.
const TEXT_KEYS: &[&str] = &[
    "secret",
    "audience",
    "issuer",
    "secret_file",
    "data_dir",
    "busy_policy",
    "offline_policy",
    "end_policy",
    "durability",
    "push_gateway_url",
    "tls_cert",
    "tls_key",
    "outbound_ca_file",
    "nats_url",
    "cluster_name",
    "node_name",
];

/// Every server setting. Field names are the TOML keys.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where to listen (default 127.0.0.1:7600: loopback only).
    pub listen: SocketAddr,
    /// HS256 secret for tokens. Unset: a random one is generated at start
    /// (tokens then die with the process).
    pub secret: Option<String>,
    /// Required `aud` claim.
    pub audience: String,
    /// Required `iss` claim, if set.
    pub issuer: Option<String>,
    /// Browser Origins allowed to connect (`*` allows any). Requests without
    /// an Origin header (native apps) are always allowed.
    pub allowed_origins: Vec<String>,
    /// Largest WebSocket message and frame, bytes (16 KiB: the largest v1
    /// message is an invite with 8 KiB of custom data; JSON escaping of
    /// control characters in custom data can need more, raise it then).
    pub max_message_bytes: usize,
    /// Read buffer per connection, bytes (4 KiB; tungstenite's default is 128 KiB).
    pub read_buffer_bytes: usize,
    /// Time allowed for the HTTP upgrade, seconds (10).
    pub handshake_timeout_s: u64,
    /// Time allowed between the upgrade and a valid `hello`, seconds (5).
    pub auth_timeout_s: u64,
    /// Ping a silent client after this many seconds (25).
    pub ping_every_s: u64,
    /// Drop a client silent for this many seconds (60).
    pub dead_after_s: u64,
    /// Messages queued for one connection before it is dropped as too slow (256).
    pub outbound_queue: usize,
    /// Most open connections (19,000: below the 20,000 open-file limit).
    pub max_connections: usize,
    /// New connections per second allowed from one IP address (20).
    pub conn_rate_per_ip: f64,
    /// Burst of new connections from one IP address (50).
    pub conn_burst_per_ip: f64,
    /// Invitations per second allowed per user (2).
    pub invite_rate_per_user: f64,
    /// Burst of invitations per user (10).
    pub invite_burst_per_user: f64,
    /// Commands of any kind per second allowed per user, all devices
    /// together (20). Excess: `rate_limited` with `retry_after_ms`.
    pub command_rate_per_user: f64,
    /// Burst of commands per user (40).
    pub command_burst_per_user: f64,
    /// Commands of any kind per second allowed per connection (10).
    pub command_rate_per_conn: f64,
    /// Burst of commands per connection (20).
    pub command_burst_per_conn: f64,
    /// Devices one user may have online at once (10); one more is refused
    /// with `closing: too_many_devices`. The same device reconnecting
    /// always gets in (it replaces itself).
    pub max_devices_per_user: usize,
    /// Connections open at once from one source address (200). Behind a
    /// proxy every client shares its address: raise it.
    pub max_connections_per_ip: usize,
    /// Where a secret generated at start (no `secret` set) is written, owner
    /// read/write only (0600). Unset: `$XDG_RUNTIME_DIR/invitation-server-<port>.secret`,
    /// or without `XDG_RUNTIME_DIR` a new private (0700) directory under the
    /// system temporary directory.
    pub secret_file: Option<std::path::PathBuf>,
    /// Hide callees' presence from callers (false): every callee is
    /// `ringing` in the invite's reply and no `callee_ringing` receipt is
    /// sent, so an invite cannot probe who is online. Pair with
    /// `busy_policy = "ring_anyway"` and `offline_policy = "hold"` to hide
    /// busy and offline outcomes too.
    pub hide_callee_status: bool,
    /// Protocol errors tolerated on one connection before it is closed (10).
    pub max_protocol_errors: u32,
    /// Seconds allowed for graceful shutdown (5).
    pub shutdown_grace_s: u64,
    /// Most callees per invitation (9).
    pub max_callees: usize,
    /// Default ring timeout, seconds (60).
    pub ring_timeout_s: u32,
    /// Largest custom data, bytes (8192).
    pub max_custom_data: usize,
    /// `reject_busy` (default) or `ring_anyway`.
    pub busy_policy: String,
    /// `hold` (default) or `reject`.
    pub offline_policy: String,
    /// Who may end a call for everyone: `caller` (default) or
    /// `any_participant`.
    pub end_policy: String,
    /// Seconds a ringing call survives its caller's device vanishing (15).
    pub caller_gone_grace_s: u64,
    /// Log format.
    pub log_format: LogFormat,
    /// Runtime threads (0: one per CPU the process may run on). With one,
    /// the server runs on a single-threaded runtime: no cross-thread wake-ups
    /// or work stealing, measurably cheaper per call when pinned to one CPU.
    pub worker_threads: usize,
    /// Load shedding: a new invitation that waited longer than this in the
    /// server's queue is refused with `unavailable` and `retry_after_ms`
    /// (50 ms; 0 turns shedding off). Calls already set up are never shed.
    pub shed_invites_after_ms: u64,
    /// Seconds a write, flush or close to one client may take before the
    /// client is dropped as not reading (10).
    pub write_timeout_s: u64,
    /// Seconds a client may take to finish a message it started (10).
    pub message_timeout_s: u64,
    /// Kernel send buffer per connection, bytes (64 KiB; Linux doubles it):
    /// what a client that stops reading can make the kernel hold.
    pub send_buffer_bytes: usize,
    /// Where calls, event logs and call records are kept across restarts
    /// (docs/operations.md, "The data directory"). Unset in the library:
    /// in memory. The `invitation-server` binary picks
    /// `$XDG_STATE_HOME/invitation-server` (or `~/.local/state/...`) when
    /// neither this nor `in_memory` is set, and says so at start.
    pub data_dir: Option<std::path::PathBuf>,
    /// Keep nothing on disk (false): a restart loses live calls, event logs
    /// and call records. Wins over `data_dir`.
    pub in_memory: bool,
    /// When journal writes reach the disk: `write` (default; a crashed
    /// process loses nothing, a power cut at most `fsync_interval_ms`) or
    /// `fsync` (every turn synced before its answers go out).
    pub durability: crate::store::Durability,
    /// Longest wait before written data is synced in `write` mode, ms (1000).
    pub fsync_interval_ms: u64,
    /// Journal size after which a snapshot starts a new one, MiB (64): bounds
    /// the disk used and the replay at start-up.
    pub snapshot_after_mb: u64,
    /// How long ended-call records are kept, days (30).
    pub record_retention_days: u64,
    /// NATS server (with JetStream) of a cluster, e.g.
    /// `nats://127.0.0.1:4222`. Set: this node is one of several serving
    /// one deployment, its state and call records are kept in JetStream
    /// (not in `data_dir`; docs/operations.md, "Several nodes on NATS").
    /// Unset (the default): a single node.
    pub nats_url: Option<String>,
    /// The deployment's name on NATS: nodes with the same name serve the
    /// same users (letters, digits, `-`, `_`; default `main`).
    pub cluster_name: String,
    /// This node's name in logs and on NATS (letters, digits, `-`, `_`);
    /// a random suffix is added per start. Default: `node`.
    pub node_name: Option<String>,
    /// The leader's lease, ms (3000): a dead leader is replaced within
    /// about this long; shorter makes failover faster and NATS hiccups
    /// costlier (500-60000).
    pub cluster_lease_ms: u64,
    /// Where the HTTP API listens (default 127.0.0.1:7601), a port of its
    /// own so the WebSocket path stays as lean as it is
    /// (docs/http-api.md). Only used when `api_keys` is set.
    pub api_listen: SocketAddr,
    /// Keys a backend presents to the HTTP API (`Authorization: Bearer
    /// <key>`), each at least [`MIN_API_KEY_BYTES`] bytes. Several at once
    /// for rotation. Empty (the default): the API is off.
    pub api_keys: Vec<String>,
    /// API requests per second allowed per key (50).
    pub api_rate_per_key: f64,
    /// Burst of API requests per key (100).
    pub api_burst_per_key: f64,
    /// Largest API request body, bytes (64 KiB).
    pub api_max_body_bytes: usize,
    /// Endpoints that receive every call event as a signed JSON `POST`
    /// (docs/http-api.md, "Webhooks"), `http://` or `https://` URLs (the
    /// system's roots, or `outbound_ca_file`). Empty (the default): no
    /// webhooks.
    pub webhook_urls: Vec<String>,
    /// Secrets webhook bodies are signed with, each at least
    /// [`MIN_WEBHOOK_SECRET_BYTES`] bytes; required with `webhook_urls`.
    /// Every request carries one signature per secret, the first secret's
    /// first, so a receiver can move from one secret to the next.
    pub webhook_secrets: Vec<String>,
    /// An event not delivered after this many seconds is dropped with a
    /// warning (86,400: a day of retries).
    pub webhook_max_age_s: u64,
    /// Time allowed for one delivery attempt, ms (5,000).
    pub webhook_timeout_ms: u64,
    /// The push gateway (docs/push.md): an `http://` or `https://` URL (the
    /// roots of `outbound_ca_file`, else the system's) that receives a
    /// signed JSON `POST` per device to wake (a `ring`) or to quieten (a
    /// `stop`). Unset (the default): no push; registrations are still kept.
    pub push_gateway_url: Option<String>,
    /// Secrets push requests are signed with (as webhooks are), each at
    /// least [`MIN_WEBHOOK_SECRET_BYTES`] bytes; required with
    /// `push_gateway_url`.
    pub push_secrets: Vec<String>,
    /// Time allowed for one push request, ms (5,000).
    pub push_timeout_ms: u64,
    /// Devices with push credentials kept per user (10): one more forgets
    /// the user's oldest registration.
    pub max_push_devices: usize,
    /// The server's TLS certificate chain (PEM, its own certificate first).
    /// With `tls_key`, both ports serve TLS only (`wss://`, `https://`);
    /// unset (the default), plain TCP, for a TLS proxy in front.
    pub tls_cert: Option<std::path::PathBuf>,
    /// The private key of `tls_cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub tls_key: Option<std::path::PathBuf>,
    /// CA certificates (PEM) trusted for the server's own outbound `https://`
    /// requests (webhooks) instead of the system's roots: for receivers
    /// with a private CA.
    pub outbound_ca_file: Option<std::path::PathBuf>,
    /// DEVELOPMENT ONLY (false): serve the demo page at `/demo/`, with a
    /// token endpoint that signs a token for any user name it is asked for
    /// and a list of the demo's users; also lets the page's own origin
    /// connect. Anyone who can reach the port can then act as anyone: never
    /// on in production (docs/operations.md, "The development demo").
    pub dev_demo: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7600)),
            secret: None,
            audience: "invitation".to_owned(),
            issuer: None,
            allowed_origins: Vec::new(),
            max_message_bytes: 16 * 1024,
            read_buffer_bytes: 4 * 1024,
            handshake_timeout_s: 10,
            auth_timeout_s: 5,
            ping_every_s: 25,
            dead_after_s: 60,
            outbound_queue: 256,
            max_connections: 19_000,
            conn_rate_per_ip: 20.0,
            conn_burst_per_ip: 50.0,
            invite_rate_per_user: 2.0,
            invite_burst_per_user: 10.0,
            command_rate_per_user: 20.0,
            command_burst_per_user: 40.0,
            command_rate_per_conn: 10.0,
            command_burst_per_conn: 20.0,
            max_devices_per_user: 10,
            max_connections_per_ip: 200,
            secret_file: None,
            hide_callee_status: false,
            max_protocol_errors: 10,
            shutdown_grace_s: 5,
            max_callees: 9,
            ring_timeout_s: 60,
            max_custom_data: 8 * 1024,
            busy_policy: "reject_busy".to_owned(),
            offline_policy: "hold".to_owned(),
            end_policy: "caller".to_owned(),
            caller_gone_grace_s: 15,
            log_format: LogFormat::Text,
            worker_threads: 0,
            shed_invites_after_ms: 50,
            write_timeout_s: 10,
            message_timeout_s: 10,
            send_buffer_bytes: 64 * 1024,
            data_dir: None,
            in_memory: false,
            durability: crate::store::Durability::Write,
            fsync_interval_ms: 1000,
            snapshot_after_mb: 64,
            record_retention_days: 30,
            nats_url: None,
            cluster_name: "main".to_owned(),
            node_name: None,
            cluster_lease_ms: 3000,
            api_listen: SocketAddr::from(([127, 0, 0, 1], 7601)),
            api_keys: Vec::new(),
            api_rate_per_key: 50.0,
            api_burst_per_key: 100.0,
            api_max_body_bytes: 64 * 1024,
            webhook_urls: Vec::new(),
            webhook_secrets: Vec::new(),
            webhook_max_age_s: 86_400,
            webhook_timeout_ms: 5_000,
            push_gateway_url: None,
            push_secrets: Vec::new(),
            push_timeout_ms: 5_000,
            max_push_devices: 10,
            tls_cert: None,
            tls_key: None,
            outbound_ca_file: None,
            dev_demo: false,
        }
    }
}

/// The shortest secret accepted, bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// The shortest HTTP API key accepted, bytes.
pub const MIN_API_KEY_BYTES: usize = 32;

/// Most HTTP API keys configured at once.
pub const MAX_API_KEYS: usize = 16;

/// The shortest webhook secret accepted, bytes.
pub const MIN_WEBHOOK_SECRET_BYTES: usize = 32;

/// Most webhook endpoints, and most webhook secrets, configured at once.
pub const MAX_WEBHOOKS: usize = 16;

/// Refuses a secret the server would refuse to start with (shorter than
/// [`MIN_SECRET_BYTES`]); used by the server and by `token`.
pub fn check_secret(secret: &str) -> Result<(), ConfigError> {
    if secret.len() < MIN_SECRET_BYTES {
        return Err(ConfigError::Invalid {
            key: "secret",
            detail: format!(
                "{} bytes is too short: use at least {MIN_SECRET_BYTES} (e.g. `openssl rand -hex 32`)",
                secret.len()
            ),
        });
    }
    Ok(())
}

/// `INVITATION_*` variables in `env` that name no setting (typos such as
/// `INVITATION_MAX_CONECTIONS`), sorted. `INVITATION_CONFIG` is known.
pub fn unknown_env_vars(env: impl Iterator<Item = (String, String)>) -> Vec<String> {
    let mut unknown: Vec<String> = env
        .filter_map(|(name, _)| {
            let key = name.strip_prefix("INVITATION_")?.to_ascii_lowercase();
            (key != "config" && !KEYS.contains(&key.as_str())).then_some(name)
        })
        .collect();
    unknown.sort();
    unknown
}

/// A setting that cannot work.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The TOML file could not be read or parsed.
    #[error("config file {path}: {detail}")]
    File {
        /// Which file.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// A value is out of its bounds.
    #[error("{key}: {detail}")]
    Invalid {
        /// Which setting.
        key: &'static str,
        /// Why.
        detail: String,
    },
}

impl Config {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        Self::load(Some(path), std::iter::empty())
    }

    /// Defaults, then the TOML file (if any), then `INVITATION_<KEY>`
    /// environment variables for any key of the file (`INVITATION_OUTBOUND_QUEUE=512`,
    /// `INVITATION_ALLOWED_ORIGINS=https://a,https://b`). Values parse as
    /// TOML scalars (number, boolean) or else as strings.
    pub fn load(
        path: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let origin = path.map_or_else(|| "environment".to_owned(), |p| p.display().to_string());
        let mut table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError::File {
                    path: origin.clone(),
                    detail: e.to_string(),
                })?;
                text.parse::<toml::Table>().map_err(|e| ConfigError::File {
                    path: origin.clone(),
                    detail: e.to_string(),
                })?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            let Some(key) = name.strip_prefix("INVITATION_") else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            if key == "config" || !KEYS.contains(&key.as_str()) {
                continue;
            }
            let value = if matches!(
                key.as_str(),
                "allowed_origins"
                    | "api_keys"
                    | "webhook_urls"
                    | "webhook_secrets"
                    | "push_secrets"
            ) {
                toml::Value::Array(
                    value
                        .split(',')
                        .map(|s| toml::Value::String(s.trim().to_owned()))
                        .collect(),
                )
            } else if TEXT_KEYS.contains(&key.as_str()) {
                // Never a number: a numeric secret or directory name stays text.
                toml::Value::String(value)
            } else if let Ok(i) = value.parse::<i64>() {
                toml::Value::Integer(i)
            } else if let Ok(f) = value.parse::<f64>() {
                toml::Value::Float(f)
            } else if let Ok(b) = value.parse::<bool>() {
                toml::Value::Boolean(b)
            } else {
                toml::Value::String(value)
            };
            table.insert(key, value);
        }
        table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::File {
                path: origin,
                detail: e.to_string(),
            })
    }

    /// Checks every value's range (and that rates are finite numbers) and
    /// builds the switchboard settings. The error names the key.
    pub fn validate(&self) -> Result<SwitchboardConfig, ConfigError> {
        fn within<T: PartialOrd + std::fmt::Display>(
            key: &'static str,
            v: T,
            min: T,
            max: T,
        ) -> Result<(), ConfigError> {
            if v >= min && v <= max {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    key,
                    detail: format!("{v} is out of range: must be {min} to {max}"),
                })
            }
        }
        fn rate(key: &'static str, v: f64, min: f64) -> Result<(), ConfigError> {
            // NaN fails both comparisons.
            if v.is_finite() && v >= min && v <= 1e9 {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    key,
                    detail: format!("{v} is out of range: must be a number from {min} to 1e9"),
                })
            }
        }
        const DAY_S: u64 = 86_400;
        within("max_message_bytes", self.max_message_bytes, 1024, 16 << 20)?;
        within("read_buffer_bytes", self.read_buffer_bytes, 1024, 1 << 20)?;
        within("write_timeout_s", self.write_timeout_s, 1, 600)?;
        within("message_timeout_s", self.message_timeout_s, 1, 600)?;
        within("send_buffer_bytes", self.send_buffer_bytes, 4096, 64 << 20)?;
        within("handshake_timeout_s", self.handshake_timeout_s, 1, 3600)?;
        within("auth_timeout_s", self.auth_timeout_s, 1, 3600)?;
        within("ping_every_s", self.ping_every_s, 1, 3600)?;
        within("dead_after_s", self.dead_after_s, 2, 2 * 3600)?;
        if self.dead_after_s <= self.ping_every_s {
            return Err(ConfigError::Invalid {
                key: "dead_after_s",
                detail: format!(
                    "{} must exceed ping_every_s ({})",
                    self.dead_after_s, self.ping_every_s
                ),
            });
        }
        within("outbound_queue", self.outbound_queue, 1, 1 << 16)?;
        within("max_connections", self.max_connections, 1, 10_000_000)?;
        within(
            "max_connections_per_ip",
            self.max_connections_per_ip,
            1,
            10_000_000,
        )?;
        within("max_devices_per_user", self.max_devices_per_user, 1, 1000)?;
        // Rates: at least one per 1000 s (a slower bucket never refills in
        // practice; 1e-300 made a retry wait overflow), bursts of at least 1.
        rate("conn_rate_per_ip", self.conn_rate_per_ip, 0.001)?;
        rate("conn_burst_per_ip", self.conn_burst_per_ip, 1.0)?;
        rate("invite_rate_per_user", self.invite_rate_per_user, 0.001)?;
        rate("invite_burst_per_user", self.invite_burst_per_user, 1.0)?;
        rate("command_rate_per_user", self.command_rate_per_user, 0.001)?;
        rate("command_burst_per_user", self.command_burst_per_user, 1.0)?;
        rate("command_rate_per_conn", self.command_rate_per_conn, 0.001)?;
        rate("command_burst_per_conn", self.command_burst_per_conn, 1.0)?;
        within("shutdown_grace_s", self.shutdown_grace_s, 0, 3600)?;
        within("max_callees", self.max_callees, 1, 100)?;
        let ring = invitation_core::RING_TIMEOUT_BOUNDS_S;
        within(
            "ring_timeout_s",
            self.ring_timeout_s,
            *ring.start(),
            *ring.end(),
        )?;
        within("max_custom_data", self.max_custom_data, 0, 1 << 20)?;
        within("caller_gone_grace_s", self.caller_gone_grace_s, 0, DAY_S)?;
        within(
            "shed_invites_after_ms",
            self.shed_invites_after_ms,
            0,
            60_000,
        )?;
        within("worker_threads", self.worker_threads, 0, 1024)?;
        within("fsync_interval_ms", self.fsync_interval_ms, 1, 60_000)?;
        within("snapshot_after_mb", self.snapshot_after_mb, 1, 1 << 20)?;
        within(
            "record_retention_days",
            self.record_retention_days,
            1,
            36_500,
        )?;
        if let Some(secret) = &self.secret {
            check_secret(secret)?;
        }
        within("cluster_lease_ms", self.cluster_lease_ms, 500, 60_000)?;
        self.check_cluster()?;
        rate("api_rate_per_key", self.api_rate_per_key, 0.001)?;
        rate("api_burst_per_key", self.api_burst_per_key, 1.0)?;
        within("api_max_body_bytes", self.api_max_body_bytes, 1024, 1 << 20)?;
        within("api_keys", self.api_keys.len(), 0, MAX_API_KEYS)?;
        if let Some((i, key)) = self
            .api_keys
            .iter()
            .enumerate()
            .find(|(_, k)| k.len() < MIN_API_KEY_BYTES)
        {
            return Err(ConfigError::Invalid {
                key: "api_keys",
                detail: format!(
                    "key {} is {} bytes: use at least {MIN_API_KEY_BYTES} (e.g. `openssl rand -hex 32`)",
                    i + 1,
                    key.len()
                ),
            });
        }
        self.check_webhooks()?;
        self.check_push()?;
        let mut sb = SwitchboardConfig::default();
        sb.push = self.push_gateway_url.is_some();
        sb.max_push_devices = self.max_push_devices;
        sb.max_callees = self.max_callees;
        sb.default_ring_timeout_s = self.ring_timeout_s;
        sb.max_custom_data = self.max_custom_data;
        sb.caller_gone_grace = Duration::from_secs(self.caller_gone_grace_s);
        sb.hide_callee_status = self.hide_callee_status;
        // One receipt per device a callee may have online.
        sb.max_receipts_per_callee = self.max_devices_per_user;
        sb.busy_policy = match self.busy_policy.as_str() {
            "reject_busy" => BusyPolicy::RejectBusy,
            "ring_anyway" => BusyPolicy::RingAnyway,
            _ => {
                return Err(ConfigError::Invalid {
                    key: "busy_policy",
                    detail: "reject_busy or ring_anyway".into(),
                });
            }
        };
        sb.end_policy = match self.end_policy.as_str() {
            "caller" => EndPolicy::CallerOnly,
            "any_participant" => EndPolicy::AnyParticipant,
            _ => {
                return Err(ConfigError::Invalid {
                    key: "end_policy",
                    detail: "caller or any_participant".into(),
                });
            }
        };
        sb.offline_policy = match self.offline_policy.as_str() {
            "hold" => OfflinePolicy::Hold,
            "reject" => OfflinePolicy::Reject,
            _ => {
                return Err(ConfigError::Invalid {
                    key: "offline_policy",
                    detail: "hold or reject".into(),
                });
            }
        };
        Ok(sb)
    }

    /// The cluster settings: a `nats://` URL, subject-safe names, a lease
    /// in range.
    fn check_cluster(&self) -> Result<(), ConfigError> {
        let safe = |key: &'static str, v: &str| {
            let ok = !v.is_empty()
                && v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    key,
                    detail: format!("{v:?}: 1-64 letters, digits, '-' or '_'"),
                })
            }
        };
        safe("cluster_name", &self.cluster_name)?;
        if let Some(node) = &self.node_name {
            safe("node_name", node)?;
        }
        if let Some(url) = &self.nats_url {
            let scheme_ok = ["nats://", "tls://"].iter().any(|s| url.starts_with(s));
            if !scheme_ok || url.len() < 8 {
                return Err(ConfigError::Invalid {
                    key: "nats_url",
                    detail: format!(
                        "{url:?}: a nats:// (or tls://) URL, e.g. nats://127.0.0.1:4222"
                    ),
                });
            }
        }
        Ok(())
    }

    /// The handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_s)
    }
    /// The first-message (authentication) timeout.
    pub fn auth_timeout(&self) -> Duration {
        Duration::from_secs(self.auth_timeout_s)
    }
    /// Heartbeat ping interval.
    pub fn ping_every(&self) -> Duration {
        Duration::from_secs(self.ping_every_s)
    }
    /// Runtime threads to start: `worker_threads`, or one per usable CPU.
    pub fn threads(&self) -> usize {
        match self.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        }
    }
    /// Queue wait after which new invitations are shed (`None`: never).
    pub fn shed_after(&self) -> Option<Duration> {
        (self.shed_invites_after_ms > 0).then(|| Duration::from_millis(self.shed_invites_after_ms))
    }
    /// The per-write deadline.
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout_s)
    }
    /// Time allowed to finish a started message.
    pub fn message_timeout(&self) -> Duration {
        Duration::from_secs(self.message_timeout_s)
    }
    /// The connection machine's settings.
    pub fn connection_config(&self) -> invitation_core::ConnectionConfig {
        let mut c = invitation_core::ConnectionConfig::default();
        c.hello_timeout = self.auth_timeout();
        c.ping_every = Some(self.ping_every());
        c.dead_after = self.dead_after();
        c.max_in_flight = (self.outbound_queue / 4).max(1);
        c.max_protocol_errors = self.max_protocol_errors;
        c.limits.max_bytes = self.max_message_bytes;
        c.message_rate = Some((self.command_rate_per_conn, self.command_burst_per_conn));
        c
    }
    /// The store's settings, when the server keeps its state on disk.
    pub fn store_options(&self) -> Option<crate::store::StoreOptions> {
        let dir = self.data_dir.clone().filter(|_| !self.in_memory)?;
        Some(crate::store::StoreOptions {
            dir,
            durability: self.durability,
            fsync_interval: Duration::from_millis(self.fsync_interval_ms),
            snapshot_after_bytes: self.snapshot_after_mb << 20,
        })
    }
    /// How long ended-call records are kept.
    pub fn record_retention(&self) -> Duration {
        Duration::from_secs(self.record_retention_days * 86_400)
    }
    /// Silence after which a connection is dead.
    pub fn dead_after(&self) -> Duration {
        Duration::from_secs(self.dead_after_s)
    }

    /// The webhook settings: every URL is `http(s)://` with a host, every
    /// secret long enough, secrets present when URLs are, ranges kept.
    fn check_webhooks(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, detail: String| Err(ConfigError::Invalid { key, detail });
        if self.webhook_urls.len() > MAX_WEBHOOKS {
            return invalid(
                "webhook_urls",
                format!(
                    "{} endpoints: at most {MAX_WEBHOOKS}",
                    self.webhook_urls.len()
                ),
            );
        }
        if self.webhook_secrets.len() > MAX_WEBHOOKS {
            return invalid(
                "webhook_secrets",
                format!(
                    "{} secrets: at most {MAX_WEBHOOKS}",
                    self.webhook_secrets.len()
                ),
            );
        }
        for (i, url) in self.webhook_urls.iter().enumerate() {
            let rest = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"));
            let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
            if host.is_none_or(|h| h.is_empty() || h.contains(char::is_whitespace)) {
                return invalid(
                    "webhook_urls",
                    format!(
                        "endpoint {} ({url:?}) is not an http:// or https:// URL with a host",
                        i + 1
                    ),
                );
            }
        }
        if let Some((i, s)) = self
            .webhook_secrets
            .iter()
            .enumerate()
            .find(|(_, s)| s.len() < MIN_WEBHOOK_SECRET_BYTES)
        {
            return invalid(
                "webhook_secrets",
                format!(
                    "secret {} is {} bytes: use at least {MIN_WEBHOOK_SECRET_BYTES} (e.g. `openssl rand -hex 32`)",
                    i + 1,
                    s.len()
                ),
            );
        }
        if !self.webhook_urls.is_empty() && self.webhook_secrets.is_empty() {
            return invalid(
                "webhook_secrets",
                "webhook_urls is set: give at least one secret to sign with".into(),
            );
        }
        if !(60..=30 * 86_400).contains(&self.webhook_max_age_s) {
            return invalid(
                "webhook_max_age_s",
                format!(
                    "{} is out of range: must be 60 to 2592000",
                    self.webhook_max_age_s
                ),
            );
        }
        if !(1..=600_000).contains(&self.webhook_timeout_ms) {
            return invalid(
                "webhook_timeout_ms",
                format!(
                    "{} is out of range: must be 1 to 600000",
                    self.webhook_timeout_ms
                ),
            );
        }
        Ok(())
    }

    /// The push settings: an `http(s)://` gateway with a host, secrets long
    /// enough and present when the gateway is, ranges kept.
    fn check_push(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, detail: String| Err(ConfigError::Invalid { key, detail });
        if let Some(url) = &self.push_gateway_url {
            let host = url
                .strip_prefix("http://")
                .or_else(|| url.strip_prefix("https://"))
                .map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
            if host.is_none_or(|h| h.is_empty() || h.contains(char::is_whitespace)) {
                return invalid(
                    "push_gateway_url",
                    format!("{url:?} is not an http:// or https:// URL with a host"),
                );
            }
            if self.push_secrets.is_empty() {
                return invalid(
                    "push_secrets",
                    "push_gateway_url is set: give at least one secret to sign with".into(),
                );
            }
        }
        if self.push_secrets.len() > MAX_WEBHOOKS {
            return invalid(
                "push_secrets",
                format!(
                    "{} secrets: at most {MAX_WEBHOOKS}",
                    self.push_secrets.len()
                ),
            );
        }
        if let Some((i, s)) = self
            .push_secrets
            .iter()
            .enumerate()
            .find(|(_, s)| s.len() < MIN_WEBHOOK_SECRET_BYTES)
        {
            return invalid(
                "push_secrets",
                format!(
                    "secret {} is {} bytes: use at least {MIN_WEBHOOK_SECRET_BYTES} (e.g. `openssl rand -hex 32`)",
                    i + 1,
                    s.len()
                ),
            );
        }
        if !(1..=60_000).contains(&self.push_timeout_ms) {
            return invalid(
                "push_timeout_ms",
                format!(
                    "{} is out of range: must be 1 to 60000",
                    self.push_timeout_ms
                ),
            );
        }
        if !(1..=100).contains(&self.max_push_devices) {
            return invalid(
                "max_push_devices",
                format!(
                    "{} is out of range: must be 1 to 100",
                    self.max_push_devices
                ),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_toml_overrides() {
        assert!(Config::default().validate().is_ok());
        let c: Config = toml::from_str("listen = \"127.0.0.1:9000\"\nbusy_policy = \"ring_anyway\"\nallowed_origins = [\"https://app.example\"]").unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.validate().unwrap().busy_policy, BusyPolicy::RingAnyway);
        assert!(toml::from_str::<Config>("no_such_key = 1").is_err());
        let bad = Config {
            ring_timeout_s: 0,
            ..Config::default()
        };
        assert!(bad.validate().is_err());
    }

    /// The storage keys: the library keeps state in memory unless given a
    /// directory; `in_memory` wins over `data_dir`; the mode parses.
    #[test]
    fn storage_settings() {
        assert!(Config::default().store_options().is_none());
        let c: Config = toml::from_str(
            "data_dir = \"/var/lib/invitation\"\ndurability = \"fsync\"\nfsync_interval_ms = 250\nsnapshot_after_mb = 8",
        )
        .unwrap();
        let o = c.store_options().expect("durable");
        assert_eq!(o.dir, std::path::Path::new("/var/lib/invitation"));
        assert_eq!(o.durability, crate::store::Durability::Fsync);
        assert_eq!(o.fsync_interval, Duration::from_millis(250));
        assert_eq!(o.snapshot_after_bytes, 8 << 20);
        let c = Config {
            in_memory: true,
            ..c
        };
        assert!(c.store_options().is_none());
        let err = toml::from_str::<Config>("durability = \"sometimes\"").unwrap_err();
        assert!(err.to_string().contains("sometimes"), "{err}");
    }

    /// Nonsense values are refused at start with the key named: rates that
    /// are tiny, zero, negative, NaN or infinite (a rate of 1e-300 crashed
    /// the hub), durations that would overflow the clock, zero where it
    /// means nothing.
    #[test]
    fn out_of_range_values_are_refused_naming_the_key() {
        type Tweak = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(&str, Tweak)> = vec![
            (
                "conn_rate_per_ip",
                Box::new(|c| c.conn_rate_per_ip = 1e-300),
            ),
            (
                "conn_rate_per_ip",
                Box::new(|c| c.conn_rate_per_ip = f64::NAN),
            ),
            (
                "conn_burst_per_ip",
                Box::new(|c| c.conn_burst_per_ip = f64::INFINITY),
            ),
            (
                "invite_rate_per_user",
                Box::new(|c| c.invite_rate_per_user = 0.0),
            ),
            (
                "invite_burst_per_user",
                Box::new(|c| c.invite_burst_per_user = 0.5),
            ),
            (
                "command_rate_per_user",
                Box::new(|c| c.command_rate_per_user = -1.0),
            ),
            (
                "command_burst_per_user",
                Box::new(|c| c.command_burst_per_user = f64::NAN),
            ),
            (
                "command_rate_per_conn",
                Box::new(|c| c.command_rate_per_conn = f64::INFINITY),
            ),
            (
                "command_burst_per_conn",
                Box::new(|c| c.command_burst_per_conn = 1e300),
            ),
            (
                "handshake_timeout_s",
                Box::new(|c| c.handshake_timeout_s = u64::MAX),
            ),
            (
                "handshake_timeout_s",
                Box::new(|c| c.handshake_timeout_s = 0),
            ),
            ("auth_timeout_s", Box::new(|c| c.auth_timeout_s = 0)),
            ("ping_every_s", Box::new(|c| c.ping_every_s = 1 << 62)),
            ("dead_after_s", Box::new(|c| c.dead_after_s = u64::MAX)),
            (
                "dead_after_s",
                Box::new(|c| c.dead_after_s = c.ping_every_s),
            ),
            (
                "shutdown_grace_s",
                Box::new(|c| c.shutdown_grace_s = u64::MAX),
            ),
            (
                "caller_gone_grace_s",
                Box::new(|c| c.caller_gone_grace_s = u64::MAX),
            ),
            (
                "shed_invites_after_ms",
                Box::new(|c| c.shed_invites_after_ms = u64::MAX),
            ),
            ("outbound_queue", Box::new(|c| c.outbound_queue = 0)),
            (
                "outbound_queue",
                Box::new(|c| c.outbound_queue = usize::MAX),
            ),
            ("max_connections", Box::new(|c| c.max_connections = 0)),
            (
                "max_connections_per_ip",
                Box::new(|c| c.max_connections_per_ip = 0),
            ),
            (
                "max_devices_per_user",
                Box::new(|c| c.max_devices_per_user = 0),
            ),
            ("max_callees", Box::new(|c| c.max_callees = usize::MAX)),
            (
                "max_custom_data",
                Box::new(|c| c.max_custom_data = usize::MAX),
            ),
            ("ring_timeout_s", Box::new(|c| c.ring_timeout_s = 0)),
            ("secret", Box::new(|c| c.secret = Some("short".into()))),
            ("fsync_interval_ms", Box::new(|c| c.fsync_interval_ms = 0)),
            (
                "snapshot_after_mb",
                Box::new(|c| c.snapshot_after_mb = u64::MAX),
            ),
            (
                "record_retention_days",
                Box::new(|c| c.record_retention_days = 0),
            ),
            (
                "nats_url",
                Box::new(|c| c.nats_url = Some("http://127.0.0.1:4222".into())),
            ),
            ("cluster_name", Box::new(|c| c.cluster_name = "a.b".into())),
            ("cluster_name", Box::new(|c| c.cluster_name = String::new())),
            (
                "node_name",
                Box::new(|c| c.node_name = Some("node *".into())),
            ),
            ("cluster_lease_ms", Box::new(|c| c.cluster_lease_ms = 100)),
            (
                "api_keys",
                Box::new(|c| c.api_keys = vec!["k".repeat(32), "short".into()]),
            ),
            (
                "api_keys",
                Box::new(|c| c.api_keys = vec!["k".repeat(32); MAX_API_KEYS + 1]),
            ),
            ("api_rate_per_key", Box::new(|c| c.api_rate_per_key = 0.0)),
            (
                "api_burst_per_key",
                Box::new(|c| c.api_burst_per_key = f64::NAN),
            ),
            ("api_max_body_bytes", Box::new(|c| c.api_max_body_bytes = 0)),
            (
                "api_max_body_bytes",
                Box::new(|c| c.api_max_body_bytes = usize::MAX),
            ),
            (
                "webhook_urls",
                Box::new(|c| {
                    c.webhook_secrets = vec!["s".repeat(32)];
                    c.webhook_urls = vec!["ftp://hooks.example/in".into()];
                }),
            ),
            (
                "webhook_urls",
                Box::new(|c| {
                    c.webhook_secrets = vec!["s".repeat(32)];
                    c.webhook_urls = vec!["http:///no-host".into()];
                }),
            ),
            (
                "webhook_urls",
                Box::new(|c| {
                    c.webhook_secrets = vec!["s".repeat(32)];
                    // https is taken (since the server has a TLS client),
                    // but not without a host.
                    c.webhook_urls = vec!["https:///no-host".into()];
                }),
            ),
            (
                "webhook_urls",
                Box::new(|c| {
                    c.webhook_secrets = vec!["s".repeat(32)];
                    c.webhook_urls = vec!["http://h.example/".into(); MAX_WEBHOOKS + 1];
                }),
            ),
            (
                "webhook_secrets",
                Box::new(|c| c.webhook_urls = vec!["http://h.example/".into()]),
            ),
            (
                "webhook_secrets",
                Box::new(|c| c.webhook_secrets = vec!["s".repeat(32), "s".repeat(31)]),
            ),
            ("webhook_max_age_s", Box::new(|c| c.webhook_max_age_s = 0)),
            (
                "webhook_max_age_s",
                Box::new(|c| c.webhook_max_age_s = u64::MAX),
            ),
            ("webhook_timeout_ms", Box::new(|c| c.webhook_timeout_ms = 0)),
        ];
        for (key, tweak) in cases {
            let mut c = Config::default();
            tweak(&mut c);
            match c.validate() {
                Err(ConfigError::Invalid { key: k, detail }) => {
                    assert_eq!(k, key, "{detail}");
                    assert!(
                        ConfigError::Invalid { key: k, detail }
                            .to_string()
                            .starts_with(key)
                    );
                }
                other => panic!("{key}: expected a refusal, got {other:?}"),
            }
        }
        assert!(check_secret("0123456789abcdef").is_ok());
        assert!(check_secret("0123456789abcde").is_err());
        let https = Config {
            webhook_urls: vec!["https://hooks.example/in".into()],
            webhook_secrets: vec!["s".repeat(32)],
            ..Config::default()
        };
        assert!(https.validate().is_ok(), "an https:// webhook is taken");
    }

    #[test]
    fn unknown_invitation_variables_are_named() {
        let env = [
            ("INVITATION_MAX_CONECTIONS", "5"),
            ("INVITATION_SECRET", "x"),
            ("INVITATION_CONFIG", "/x"),
            ("INVITATION_LOG_FORMAT", "json"),
            ("INVITATION_SECRETT", "x"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        assert_eq!(
            unknown_env_vars(env.into_iter()),
            ["INVITATION_MAX_CONECTIONS", "INVITATION_SECRETT"]
        );
    }

    #[test]
    fn every_key_can_come_from_the_environment() {
        let env = [
            ("INVITATION_OUTBOUND_QUEUE", "512"),
            ("INVITATION_CONN_RATE_PER_IP", "7.5"),
            ("INVITATION_BUSY_POLICY", "ring_anyway"),
            (
                "INVITATION_ALLOWED_ORIGINS",
                "https://a.example, https://b.example",
            ),
            ("INVITATION_CONFIG", "/ignored"),
            ("UNRELATED", "x"),
            (
                "INVITATION_API_KEYS",
                "0123456789abcdef0123456789abcdef,fedcba9876543210fedcba9876543210",
            ),
            ("INVITATION_API_LISTEN", "127.0.0.1:9601"),
            (
                "INVITATION_WEBHOOK_URLS",
                "http://127.0.0.1:9/hooks, http://hooks.example/in",
            ),
            (
                "INVITATION_WEBHOOK_SECRETS",
                "whsec-0123456789abcdef0123456789ab,whsec-fedcba9876543210fedcba9876543",
            ),
            ("INVITATION_WEBHOOK_MAX_AGE_S", "3600"),
            ("INVITATION_WEBHOOK_TIMEOUT_MS", "250"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let c = Config::load(None, env.into_iter()).unwrap();
        assert_eq!(c.outbound_queue, 512);
        assert_eq!(
            c.api_keys,
            [
                "0123456789abcdef0123456789abcdef",
                "fedcba9876543210fedcba9876543210"
            ]
        );
        assert_eq!(c.api_listen.port(), 9601);
        assert_eq!(
            c.webhook_urls,
            ["http://127.0.0.1:9/hooks", "http://hooks.example/in"]
        );
        assert_eq!(
            c.webhook_secrets,
            [
                "whsec-0123456789abcdef0123456789ab",
                "whsec-fedcba9876543210fedcba9876543"
            ]
        );
        assert_eq!((c.webhook_max_age_s, c.webhook_timeout_ms), (3600, 250));
        assert!(c.validate().is_ok());
        // Text settings stay text even when they look like numbers.
        let numeric = [
            ("INVITATION_SECRET", "12345678901234567890"),
            ("INVITATION_DATA_DIR", "2026"),
            ("INVITATION_TLS_CERT", "443"),
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let n = Config::load(None, numeric.into_iter()).unwrap();
        assert_eq!(n.secret.as_deref(), Some("12345678901234567890"));
        assert_eq!(n.data_dir.as_deref(), Some(std::path::Path::new("2026")));
        assert_eq!(n.tls_cert.as_deref(), Some(std::path::Path::new("443")));
        assert_eq!(c.conn_rate_per_ip, 7.5);
        assert_eq!(c.busy_policy, "ring_anyway");
        assert_eq!(
            c.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        // Every key listed is a real field (a typo would be refused).
        for key in KEYS {
            let value = match *key {
                "listen" | "api_listen" => "\"127.0.0.1:1\"",
                "allowed_origins" | "api_keys" | "webhook_urls" | "webhook_secrets"
                | "push_secrets" => "[]",
                "busy_policy" => "\"reject_busy\"",
                "offline_policy" => "\"hold\"",
                "end_policy" => "\"any_participant\"",
                "log_format" => "\"json\"",
                "secret" | "audience" | "issuer" => "\"0123456789abcdef\"",
                "conn_rate_per_ip"
                | "conn_burst_per_ip"
                | "invite_rate_per_user"
                | "invite_burst_per_user"
                | "command_rate_per_user"
                | "command_burst_per_user"
                | "command_rate_per_conn"
                | "command_burst_per_conn"
                | "api_rate_per_key"
                | "api_burst_per_key" => "1.0",
                "secret_file" | "tls_cert" | "tls_key" | "outbound_ca_file" => "\"/run/x\"",
                "hide_callee_status" | "in_memory" | "dev_demo" => "true",
                "data_dir" => "\"/var/lib/x\"",
                "durability" => "\"fsync\"",
                "push_gateway_url" => "\"http://gw.example/push\"",
                "nats_url" => "\"nats://127.0.0.1:4222\"",
                "cluster_name" | "node_name" => "\"a\"",
                _ => "1",
            };
            toml::from_str::<Config>(&format!("{key} = {value}"))
                .unwrap_or_else(|e| panic!("{key}: {e}"));
        }
    }
}
