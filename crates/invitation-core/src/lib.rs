//! # invitation-core
//!
//! The call-invitation logic of `invitation`, once, as deterministic
//! sans-IO state machines: no tokio, no clock reads, no sockets, no
//! randomness. Time is always an argument; call ids come from an injected
//! [`CallIdGenerator`].
//!
//! * [`Switchboard`]: the authoritative server side, run by the signaling
//!   server and by the in-process memory hub.
//! * [`DeviceConnection`]: the server side of one device connection
//!   (`hello` and authentication, renewal, heartbeats, `sync`, limits, close
//!   reasons), driven by every front door in front of the switchboard.
//! * [`ClientSession`]: one device's view, run by the client driver: dedups
//!   server events by sequence number, turns them into [`AppEvent`]s (the ten
//!   callbacks and the extras) and keeps a fallback ring timer.
//! * [`protocol`]: wire protocol v1 (JSON), with guarded decoding.
//! * [`durable`]: the switchboard with every input journaled, snapshots of
//!   its whole state, and recovery (snapshot + journal replay) after a
//!   restart or a crash.
//!
//! ## Run-loop contract
//!
//! Both machines follow the same contract (the shape of quinn-proto and str0m):
//!
//! 1. **mutate**: feed one input with the current time (`connect`,
//!    `handle_command`, `handle_message`, `handle_timeout(now)` ...);
//! 2. **drain**: call the `poll_*` output methods until they return `None`
//!    and act on each output (send, close, run a callback);
//! 3. **sleep** until `poll_timeout()` or the next input, whichever comes
//!    first, then call `handle_timeout(now)`. Spurious wake-ups are no-ops.
//!
//! `poll_timeout()` is `None` exactly when nothing with a deadline is live.
//!
//! ## Example
//!
//! ```
//! use std::time::{Duration, Instant};
//! use invitation_core::protocol::{Command, InviteRequest};
//! use invitation_core::{
//!     CallType, ConnId, DeviceId, Output, Reason, RequestId, SequentialCallIds, Switchboard,
//!     SwitchboardConfig, User, UserId,
//! };
//!
//! let mut sb = Switchboard::new(SwitchboardConfig::default(), SequentialCallIds::default());
//! let t0 = Instant::now();
//! let phone = DeviceId::new("phone").unwrap();
//! let (alice, bob) = (ConnId::new(1), ConnId::new(2));
//! sb.connect(t0, alice, User::named("alice", "Alice"), phone.clone(), None, None);
//! sb.connect(t0, bob, User::named("bob", "Bob"), phone.clone(), None, None);
//!
//! let invite = Command::Invite(
//!     InviteRequest::new(vec![UserId::new("bob").unwrap()], CallType::Video).with_timeout_s(Some(30)),
//! );
//! let reply = sb
//!     .handle_command(t0, alice, RequestId::new("r1").unwrap(), invite)
//!     .unwrap();
//! let call_id = match reply {
//!     invitation_core::protocol::ReplyResult::Invited { call_id, .. } => call_id,
//!     other => panic!("{other:?}"),
//! };
//! // Drain: bob's device got an `incoming_call` event.
//! let to_bob = std::iter::from_fn(|| sb.poll_output())
//!     .filter(|o| matches!(o, Output::Send { conn, .. } if *conn == bob))
//!     .count();
//! assert!(to_bob >= 1);
//!
//! // Nobody answers: after 30 s the switchboard times the call out.
//! assert_eq!(sb.poll_timeout(), Some(t0 + Duration::from_secs(30)));
//! sb.handle_timeout(t0 + Duration::from_secs(30));
//! let bob_id = UserId::new("bob").unwrap();
//! assert_eq!(sb.call(&call_id).unwrap().outcome(&bob_id), Some(Reason::Timeout));
//! assert_eq!(sb.poll_timeout(), None);
//! ```

pub mod connection;
pub mod durable;
pub mod error;
mod guard;
pub mod id;
pub mod longpoll;
pub mod model;
pub mod protocol;
pub mod session;
pub mod stability;
pub mod switchboard;
#[cfg(feature = "testing")]
pub mod testing;

pub use connection::{
    AuthRefusal, Authenticator, CloseCause, ConnectionConfig, ConnectionOutput, DeviceConnection,
    Identity, SwitchboardInput,
};
pub use error::{CommandError, ErrorCode, ProtocolError, ValidationError};
pub use guard::DecodeLimits;
pub use id::{CallId, CallIdGenerator, DeviceId, MAX_ID_LEN, RequestId, SequentialCallIds, UserId};
pub use model::{CallType, CustomData, RING_TIMEOUT_BOUNDS_S, Reason, User};
pub use session::{AppEvent, ClientSession, ConnectionState, SessionConfig, StopReason};

pub use switchboard::{BACKEND_DEVICE, CallRecord, CalleeRecord};
pub use switchboard::{
    BusyPolicy, CallNotice, CallView, ConnId, ContactPolicy, EndPolicy, OfflinePolicy, Output,
    Switchboard, SwitchboardConfig, SwitchboardStats,
};
