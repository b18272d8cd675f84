//! # invitation
//!
//! Call invitations for Rust apps: one dependency for the whole client side.
//! Implement [`InvitationEvents`] (ten callbacks, all optional), pick a
//! transport, build a [`Client`], and call `invite` / `accept` / `decline` /
//! `cancel` / `hang_up`.
//!
//! * [`core`]: the sans-IO state machines and wire protocol v1;
//! * [`transport`]: the `Transport` trait and the in-process [`MemoryHub`];
//!   with the `websocket` feature, `transport::ws` to reach an
//!   `invitation-server`, with the `http` feature `transport::http` to reach
//!   it over plain HTTP requests and long polls;
//! * the client: [`Client`], [`InvitationEvents`], [`CallContext`], and
//!   [`Callback`] (the ten callbacks by name);
//! * `testing` (feature `testing`, for `[dev-dependencies]`): the
//!   `Recorder` handler, the scriptable `mock` server, `fault` injection and
//!   the transport `conformance` suite.
//!
//! Features (all off by default: the default build pulls no network stack
//! and no test code):
//!
//! | feature | adds |
//! |---|---|
//! | `websocket` | `transport::ws::WsTransport` (tokio-tungstenite) |
//! | `http` | `transport::http::HttpTransport` (reqwest, plain HTTP) |
//! | `testing` | `invitation::testing` |
//!
//! Runnable examples: `cargo run --example quickstart`, `group_call`,
//! `test_your_handler`; `cargo run --features websocket,http --example
//! ws_client` reaches a running server (`ws://` or `http://`).

pub use invitation_core as core;
pub use invitation_handler::{
    BuildError, CallContext, Callback, Client, ClientBuilder, ClientError, Fanout, Invitation,
    InvitationEvents, NoTransport, TokenPeekError, UnverifiedClaims, WithTransport,
};
pub use invitation_transport as transport;
pub use invitation_transport::memory::MemoryHub;

pub use invitation_core::{
    AppEvent, CallId, CallType, CommandError, ConnectionState, CustomData, DeviceId, Reason,
    StopReason, User, UserId,
};

/// Test helpers (feature `testing`; turn it on in `[dev-dependencies]`):
/// record callbacks and wait for them with a deadline, script a server,
/// inject faults, check a transport, check the reliability invariants on
/// the record of a run (`oracle`).
///
/// ```toml
/// [dev-dependencies]
/// invitation = { version = "0.1", features = ["testing"] }
/// ```
#[cfg(feature = "testing")]
pub mod testing {
    pub use invitation_core::testing::oracle;
    pub use invitation_handler::testing::{Recorded, Recorder, WaitTimeout};
    pub use invitation_transport::{conformance, fault, mock};
}

/// Everything a typical app needs: `use invitation::prelude::*;`.
pub mod prelude {
    pub use crate::{
        AppEvent, CallContext, CallId, CallType, Callback, Client, ClientError, CommandError,
        CustomData, InvitationEvents, MemoryHub, Reason, User, UserId,
    };
    pub use async_trait::async_trait;
}
