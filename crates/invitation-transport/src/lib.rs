//! # invitation-transport
//!
//! How a client reaches a switchboard. A [`Transport`] opens
//! [`Connection`]s; a connection carries protocol v1 messages both ways.
//! Reconnecting, resuming and retrying are *not* the transport's job: the
//! client driver does them once, for every backend, with the core's
//! `ClientSession` (resume from the last sequence number, resend unanswered
//! commands with their request ids).
//!
//! Backends:
//! * [`memory`]: an in-process hub running the core `Switchboard`, many
//!   clients on one hub (tests, examples, single-process apps);
//! * `ws` (feature `ws`, off by default): WebSocket to `invitation-server`,
//!   `ws://` and `wss://`;
//! * `http` (feature `http`, off by default): HTTP requests and long
//!   polling to `invitation-server`, `http://` and `https://`, where a
//!   WebSocket cannot get through.
//!
//! [`endpoint`] picks the backend from a server URL's scheme; `tls`
//! (feature `tls`, on with `ws` and `http`) holds the trusted roots for TLS.
//!
//! Test helpers (feature `testing`, off by default; turn it on in
//! `[dev-dependencies]`):
//! * `mock`: a scriptable server for unit-testing a handler with no hub;
//! * `conformance`: the suite every backend's tests run;
//! * `fault`: fault injection (drop, duplicate, delay, reorder,
//!   disconnect, partition) around any backend, from a seed.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use invitation_core::protocol::{ClientMessage, Control, ServerBody};
//! use invitation_core::{DeviceId, RequestId, User};
//! use invitation_transport::{Transport, memory::MemoryHub};
//!
//! let hub = MemoryHub::new();
//! let transport = hub.transport(User::named("alice", "Alice"));
//! let mut conn = transport.connect().await.unwrap();
//! let hello = Control::Hello { device: DeviceId::new("phone").unwrap(), token: None, last_seq: None };
//! conn.send(ClientMessage::new(RequestId::new("h1").unwrap(), hello)).await.unwrap();
//! let welcome = conn.recv().await.unwrap();
//! assert!(matches!(welcome.body, ServerBody::Welcome { .. }));
//! # }
//! ```

#[cfg(feature = "testing")]
pub mod conformance;
pub mod endpoint;
mod error;
#[cfg(feature = "testing")]
pub mod fault;
#[cfg(feature = "http")]
pub mod http;
pub mod memory;
#[cfg(feature = "testing")]
pub mod mock;
#[cfg(feature = "tls")]
pub mod tls;
#[cfg(feature = "ws")]
pub mod ws;

use async_trait::async_trait;
use invitation_core::protocol::{ClientMessage, ServerMessage};

pub use error::{TransportError, TransportErrorKind};

/// Opens connections to a switchboard. Cheap to share (`Arc`); the client
/// driver calls [`Transport::connect`] again after a connection is lost.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Opens a new connection. The first message the client sends on it is
    /// `hello`.
    async fn connect(&self) -> Result<BoxConnection, TransportError>;
}

/// One live link. Dropping it closes it.
#[async_trait]
pub trait Connection: Send + 'static {
    /// Sends one message. An error means the link is unusable.
    async fn send(&mut self, message: ClientMessage) -> Result<(), TransportError>;

    /// Waits for the next message. **Cancel-safe**: if the future is dropped
    /// before it completes (the driver `select!`s on it), no message is lost.
    /// After the peer closed, returns an error of kind
    /// [`TransportErrorKind::Closed`] (every time).
    async fn recv(&mut self) -> Result<ServerMessage, TransportError>;

    /// Closes the link; further sends fail with `Closed`.
    async fn close(&mut self);
}

/// A connection behind a box, for `dyn` use.
pub type BoxConnection = Box<dyn Connection>;

/// A transport behind an `Arc`, for `dyn` use.
pub type BoxTransport = std::sync::Arc<dyn Transport>;

#[async_trait]
impl<T: Transport + ?Sized> Transport for std::sync::Arc<T> {
    async fn connect(&self) -> Result<BoxConnection, TransportError> {
        (**self).connect().await
    }
}

#[async_trait]
impl<C: Connection + ?Sized> Connection for Box<C> {
    async fn send(&mut self, message: ClientMessage) -> Result<(), TransportError> {
        (**self).send(message).await
    }
    async fn recv(&mut self) -> Result<ServerMessage, TransportError> {
        (**self).recv().await
    }
    async fn close(&mut self) {
        (**self).close().await
    }
}
