//! Payloads that can grow: what other crates may rely on.
//!
//! Every [`AppEvent`](crate::AppEvent) variant with fields, the
//! [`ConnectionState::Connected`](crate::ConnectionState::Connected)
//! variant, [`User`](crate::User), the enums themselves and the protocol's
//! payload structs ([`InviteRequest`](crate::protocol::InviteRequest),
//! [`CalleeStatus`](crate::protocol::CalleeStatus),
//! [`ErrorBody`](crate::protocol::ErrorBody),
//! [`SyncBody`](crate::protocol::SyncBody),
//! [`CallSnapshot`](crate::protocol::CallSnapshot),
//! [`CalleeOutcome`](crate::protocol::CalleeOutcome),
//! [`EndedCall`](crate::protocol::EndedCall)) are `#[non_exhaustive]`. A later release may add a field to any of them, or
//! a variant to the enums, without breaking a crate that uses them: such a
//! crate can only read them in ways that keep compiling.
//!
//! The ways that keep compiling when a field or a variant is added:
//!
//! ```
//! use invitation_core::{AppEvent, ConnectionState, User};
//!
//! fn describe(e: &AppEvent) -> String {
//!     match e {
//!         // Name the fields you need, then `..`.
//!         AppEvent::OutgoingCallAccepted { call_id, callee, .. } => {
//!             format!("{callee} accepted {call_id}")
//!         }
//!         AppEvent::Connection(ConnectionState::Connected { resumed, .. }) => {
//!             format!("connected (resumed: {resumed})")
//!         }
//!         // And a wildcard arm for the variants you do not handle.
//!         other => format!("{other:?}"),
//!     }
//! }
//!
//! // Users are built with their constructors.
//! let alice = User::named("alice", "Alice");
//! assert_eq!(alice.id.as_str(), "alice");
//!
//! // So are the protocol's payloads; a new field gets a default.
//! use invitation_core::protocol::InviteRequest;
//! use invitation_core::{CallType, UserId};
//! let invite = InviteRequest::new(vec![UserId::new("bob").unwrap()], CallType::Voice)
//!     .with_timeout_s(Some(30));
//! assert_eq!(invite.timeout_s, Some(30));
//! # let _ = describe;
//! ```
//!
//! Each way that a new field or variant would break is refused by the
//! compiler today, so no crate can depend on it. Building a protocol payload
//! with a struct expression:
//!
//! ```compile_fail,E0639
//! use invitation_core::protocol::InviteRequest;
//! use invitation_core::{CallType, UserId};
//! let invite = InviteRequest {
//!     callees: vec![UserId::new("bob").unwrap()],
//!     call_type: CallType::Voice,
//!     custom_data: None,
//!     timeout_s: None,
//! };
//! ```
//!
//! Building an event with a struct expression:
//!
//! ```compile_fail,E0639
//! use invitation_core::{AppEvent, CallId, UserId};
//! let e = AppEvent::OutgoingCallAccepted {
//!     call_id: CallId::new("c1").unwrap(),
//!     callee: UserId::new("bob").unwrap(),
//! };
//! ```
//!
//! Naming every field without `..`:
//!
//! ```compile_fail,E0638
//! use invitation_core::AppEvent;
//! fn callee(e: &AppEvent) -> Option<&invitation_core::UserId> {
//!     match e {
//!         AppEvent::OutgoingCallAccepted { call_id: _, callee } => Some(callee),
//!         _ => None,
//!     }
//! }
//! ```
//!
//! ```compile_fail,E0638
//! use invitation_core::{AppEvent, ConnectionState};
//! fn resumed(e: &AppEvent) -> bool {
//!     matches!(e, AppEvent::Connection(ConnectionState::Connected { resumed: true }))
//! }
//! ```
//!
//! Matching every variant without a wildcard arm:
//!
//! ```compile_fail,E0004
//! use invitation_core::AppEvent;
//! fn kind(e: &AppEvent) -> u8 {
//!     match e {
//!         AppEvent::IncomingCallReceived { .. } => 0,
//!         AppEvent::IncomingCallCanceled { .. } => 1,
//!         AppEvent::IncomingCallTimeout { .. } => 2,
//!         AppEvent::IncomingCallAcceptButtonPressed { .. } => 3,
//!         AppEvent::IncomingCallDeclineButtonPressed { .. } => 4,
//!         AppEvent::OutgoingCallCancelButtonPressed { .. } => 5,
//!         AppEvent::OutgoingCallAccepted { .. } => 6,
//!         AppEvent::OutgoingCallRejectedCauseBusy { .. } => 7,
//!         AppEvent::OutgoingCallDeclined { .. } => 8,
//!         AppEvent::OutgoingCallTimeout { .. } => 9,
//!         AppEvent::AnsweredElsewhere { .. } => 10,
//!         AppEvent::DeclinedElsewhere { .. } => 11,
//!         AppEvent::CalleeRinging { .. } => 12,
//!         AppEvent::CalleeOutcome { .. } => 13,
//!         AppEvent::OutgoingCallStarted { .. } => 14,
//!         AppEvent::CallEnded { .. } => 15,
//!         AppEvent::Resynced { .. } => 16,
//!         AppEvent::Connection(_) => 17,
//!     }
//! }
//! ```
//!
//! Building a user with a struct expression:
//!
//! ```compile_fail,E0639
//! use invitation_core::{User, UserId};
//! let u = User { id: UserId::new("alice").unwrap(), name: "Alice".into() };
//! ```
//!
//! `AppEvent::Connection` itself is a tuple variant and stays matchable as
//! `Connection(state)`; what may grow there is [`ConnectionState`](crate::ConnectionState).
