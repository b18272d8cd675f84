//! # invitation
//!
//! Call invitations for Rust apps: one dependency for the whole client side.
//! Implement [`InvitationEvents`] (ten callbacks, all optional), pick a
//! transport, build a [`Client`], and call `invite` / `accept` / `decline` /
//! `cancel` / `hang_up`.
//!
//! * [`core`]: the sans-IO state machines and wire protocol v1;
//! * [`transport`]: the `Transport` trait, the in-process [`MemoryHub`], the
//!   scriptable [`mock`](transport::mock) for handler unit tests;
//! * the client: [`Client`], [`InvitationEvents`], [`CallContext`],
//!   [`Recorder`].
//!
//! Runnable examples: `cargo run --example quickstart`, `group_call`,
//! `test_your_handler`.

pub use invitation_core as core;
pub use invitation_handler::{
    BuildError, CallContext, Client, ClientBuilder, ClientError, Fanout, Invitation,
    InvitationEvents, NoTransport, Recorded, Recorder, TokenPeekError, UnverifiedClaims,
    WithTransport,
};
pub use invitation_transport as transport;
pub use invitation_transport::memory::MemoryHub;

pub use invitation_core::{
    AppEvent, CallId, CallType, CommandError, ConnectionState, CustomData, DeviceId, Reason,
    StopReason, User, UserId,
};

/// Everything a typical app needs: `use invitation::prelude::*;`.
pub mod prelude {
    pub use crate::{
        AppEvent, CallContext, CallId, CallType, Client, ClientError, CommandError, CustomData,
        InvitationEvents, MemoryHub, Reason, User, UserId,
    };
    pub use async_trait::async_trait;
}
