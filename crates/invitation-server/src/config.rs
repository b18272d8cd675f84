//! Server settings: defaults that are safe on a laptop, overridable by a
//! TOML file, environment variables and flags (in that order of strength:
//! flags win).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use invitation_core::{BusyPolicy, OfflinePolicy, SwitchboardConfig};
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
    "max_protocol_errors",
    "shutdown_grace_s",
    "max_callees",
    "ring_timeout_s",
    "max_custom_data",
    "busy_policy",
    "offline_policy",
    "caller_gone_grace_s",
    "log_format",
    "worker_threads",
    "shed_invites_after_ms",
    "write_timeout_s",
    "message_timeout_s",
    "send_buffer_bytes",
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
            max_protocol_errors: 10,
            shutdown_grace_s: 5,
            max_callees: 9,
            ring_timeout_s: 60,
            max_custom_data: 8 * 1024,
            busy_policy: "reject_busy".to_owned(),
            offline_policy: "hold".to_owned(),
            caller_gone_grace_s: 15,
            log_format: LogFormat::Text,
            worker_threads: 0,
            shed_invites_after_ms: 50,
            write_timeout_s: 10,
            message_timeout_s: 10,
            send_buffer_bytes: 64 * 1024,
        }
    }
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
            let value = if key == "allowed_origins" {
                toml::Value::Array(
                    value
                        .split(',')
                        .map(|s| toml::Value::String(s.trim().to_owned()))
                        .collect(),
                )
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

    /// Checks bounds and builds the switchboard settings.
    pub fn validate(&self) -> Result<SwitchboardConfig, ConfigError> {
        let invalid = |key, detail: &str| ConfigError::Invalid {
            key,
            detail: detail.to_owned(),
        };
        if !(1024..=16 * 1024 * 1024).contains(&self.max_message_bytes) {
            return Err(invalid("max_message_bytes", "must be 1 KiB to 16 MiB"));
        }
        if !(1024..=1024 * 1024).contains(&self.read_buffer_bytes) {
            return Err(invalid("read_buffer_bytes", "must be 1 KiB to 1 MiB"));
        }
        if !(1..=600).contains(&self.ring_timeout_s) {
            return Err(invalid("ring_timeout_s", "must be 1 to 600"));
        }
        if self.max_callees == 0 {
            return Err(invalid("max_callees", "must be at least 1"));
        }
        if self.outbound_queue == 0 || self.max_connections == 0 {
            return Err(invalid(
                "outbound_queue",
                "queues and limits must be positive",
            ));
        }
        if self.ping_every_s == 0 || self.dead_after_s <= self.ping_every_s {
            return Err(invalid("dead_after_s", "must exceed ping_every_s > 0"));
        }
        if self.conn_rate_per_ip <= 0.0 || self.invite_rate_per_user <= 0.0 {
            return Err(invalid("invite_rate_per_user", "rates must be positive"));
        }
        if !(1..=600).contains(&self.write_timeout_s) {
            return Err(invalid("write_timeout_s", "must be 1 to 600"));
        }
        if !(1..=600).contains(&self.message_timeout_s) {
            return Err(invalid("message_timeout_s", "must be 1 to 600"));
        }
        if !(4096..=64 * 1024 * 1024).contains(&self.send_buffer_bytes) {
            return Err(invalid("send_buffer_bytes", "must be 4 KiB to 64 MiB"));
        }
        if self.worker_threads > 1024 {
            return Err(invalid("worker_threads", "must be 0 (auto) to 1024"));
        }
        if let Some(secret) = &self.secret {
            if secret.len() < 16 {
                return Err(invalid("secret", "use at least 16 bytes"));
            }
        }
        let mut sb = SwitchboardConfig::default();
        sb.max_callees = self.max_callees;
        sb.default_ring_timeout_s = self.ring_timeout_s;
        sb.max_custom_data = self.max_custom_data;
        sb.caller_gone_grace = Duration::from_secs(self.caller_gone_grace_s);
        sb.busy_policy = match self.busy_policy.as_str() {
            "reject_busy" => BusyPolicy::RejectBusy,
            "ring_anyway" => BusyPolicy::RingAnyway,
            _ => return Err(invalid("busy_policy", "reject_busy or ring_anyway")),
        };
        sb.offline_policy = match self.offline_policy.as_str() {
            "hold" => OfflinePolicy::Hold,
            "reject" => OfflinePolicy::Reject,
            _ => return Err(invalid("offline_policy", "hold or reject")),
        };
        Ok(sb)
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
        c
    }
    /// Silence after which a connection is dead.
    pub fn dead_after(&self) -> Duration {
        Duration::from_secs(self.dead_after_s)
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
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()));
        let c = Config::load(None, env.into_iter()).unwrap();
        assert_eq!(c.outbound_queue, 512);
        assert_eq!(c.conn_rate_per_ip, 7.5);
        assert_eq!(c.busy_policy, "ring_anyway");
        assert_eq!(
            c.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        // Every key listed is a real field (a typo would be refused).
        for key in KEYS {
            let value = match *key {
                "listen" => "\"127.0.0.1:1\"",
                "allowed_origins" => "[]",
                "busy_policy" => "\"reject_busy\"",
                "offline_policy" => "\"hold\"",
                "log_format" => "\"json\"",
                "secret" | "audience" | "issuer" => "\"0123456789abcdef\"",
                "conn_rate_per_ip"
                | "conn_burst_per_ip"
                | "invite_rate_per_user"
                | "invite_burst_per_user" => "1.0",
                _ => "1",
            };
            toml::from_str::<Config>(&format!("{key} = {value}"))
                .unwrap_or_else(|e| panic!("{key}: {e}"));
        }
    }
}
