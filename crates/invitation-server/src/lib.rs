//! # invitation-server
//!
//! The self-hostable signaling server: the core `Switchboard` behind
//! WebSocket (tokio-tungstenite), speaking protocol v1 (docs/protocol.md).
//!
//! * Secure by default: every session starts with `hello` carrying an
//!   HS256 token (`sub`, `name`, `exp`, `aud`); without a configured secret
//!   a random one is generated at start (the binary writes it to an
//!   owner-only file, [`secret_file`], never to the terminal or the log).
//!   The caller identity always comes from the token.
//! * Bounded: 16 KiB messages and frames, deadlines on every write and on
//!   finishing a started message, a bounded kernel send buffer, 4 KiB read
//!   buffers, handshake and first-message timeouts, Origin allow-list,
//!   per-IP connection rate and count caps, a per-user device cap,
//!   per-connection and per-user command rate limits (invites once more), a
//!   bounded outbound queue per connection, heartbeats. docs/operations.md
//!   lists every limit.
//! * Durable when given a data directory ([`Config::data_dir`]; the binary
//!   defaults to one): a journal of the switchboard's inputs plus snapshots
//!   ([`store`]), so a restart or a crash loses no ringing call, outcome,
//!   resume position or request memory; ended calls are kept as
//!   [`records`] ([`RunningServer::call_records`]).
//! * Operable: `/healthz`, `/metrics` (Prometheus), structured logs,
//!   graceful shutdown.
//! * An HTTP API for the app's backend (docs/http-api.md) on a port of its
//!   own ([`Config::api_listen`]), on when [`Config::api_keys`] is set:
//!   tokens, presence, a call's live state, call records.
//!
//! ```no_run
//! # #[tokio::main] async fn main() {
//! use invitation_server::{Config, Server};
//! let server = Server::bind(Config::default()).await.unwrap();
//! println!("listening on {}", server.local_addr());
//! server.run(async { tokio::signal::ctrl_c().await.unwrap() }).await.unwrap();
//! # }
//! ```

mod api;
mod api_conn;
pub mod auth;
pub mod cluster;
pub mod config;
mod conn;
mod demo;
mod http;
mod http_transport;
mod hub;
mod limits;
mod metered;
mod metrics;
mod outbox;
mod push;
mod rate;
pub mod records;
pub mod secret_file;
mod server;
mod slots;
pub mod store;
pub mod tls;
pub mod webhook;

pub use auth::{Authority, Claims};
pub use config::{Config, LogFormat};
pub use hub::RecordQuery;
pub use metrics::{Buckets, Metrics};
pub use records::{Cursor, Page, RecordError, RecordOptions, RecordStore, StoredRecord};
pub use server::{RunningServer, Server, ServerError, Shared};
