//! # invitation-handler
//!
//! The app-facing side of `invitation`: implement [`InvitationEvents`]
//! (ten callbacks, all optional), build a [`Client`] with a transport, and
//! call `invite` / `accept` / `decline` / `cancel` / `hang_up`, each
//! returning a typed `Result`.
//!
//! ```
//! use std::time::Duration;
//! use invitation_core::{CallId, CallType, CustomData, User};
//! use invitation_handler::{CallContext, Client, InvitationEvents};
//! use invitation_transport::memory::MemoryHub;
//!
//! struct AutoAnswer;
//!
//! #[async_trait::async_trait]
//! impl InvitationEvents for AutoAnswer {
//!     async fn on_incoming_call_received(
//!         &self, ctx: &CallContext, _: &CallId, caller: &User, _: CallType,
//!         _: &[User], _: Option<&CustomData>,
//!     ) {
//!         println!("{} is calling", caller.name);
//!         ctx.accept().await.expect("accepted");
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! let hub = MemoryHub::new();
//! let bob = Client::builder()
//!     .user(User::named("bob", "Bob"))
//!     .transport(hub.transport(User::named("bob", "Bob")))
//!     .handler(AutoAnswer)
//!     .build()
//!     .unwrap();
//! bob.connect().await.unwrap();
//! let alice = Client::builder()
//!     .user(User::named("alice", "Alice"))
//!     .transport(hub.transport(User::named("alice", "Alice")))
//!     .build()
//!     .unwrap();
//! alice.connect().await.unwrap();
//! let mut events = alice.events();
//! let call = alice.invite(["bob"], CallType::Video, None).await.unwrap();
//! loop {
//!     if let invitation_core::AppEvent::OutgoingCallAccepted { call_id, .. } = events.recv().await.unwrap() {
//!         assert_eq!(call_id, call.call_id);
//!         break;
//!     }
//! }
//! # }
//! ```

mod client;
mod context;
mod dispatch;
mod driver;
mod events;
#[cfg(feature = "testing")]
mod recorder;
mod token;

pub use client::{
    BuildError, Client, ClientBuilder, ClientError, EVENT_STREAM_CAPACITY, Invitation, NoTransport,
    WithTransport,
};
pub use context::CallContext;
pub use events::{Callback, Fanout, InvitationEvents};
pub use token::{TokenPeekError, UnverifiedClaims};

/// Test helpers (feature `testing`): [`Recorder`](testing::Recorder), a
/// handler that records every callback and waits for them with a deadline.
#[cfg(feature = "testing")]
pub mod testing {
    pub use crate::recorder::{Recorded, Recorder, WaitTimeout};
}
