//! The `InvitationEvents` trait: ten callbacks, all optional no-ops.
//!
//! The ten are declared once, in the table at the bottom of this file; the
//! trait, the [`Callback`] names, the dispatch from an [`AppEvent`], the
//! forwarding impls (`Arc`, `Box`, [`Fanout`]) and the test `Recorder`'s impl
//! are all generated from it. Adding or changing a callback is one edit there.

use std::sync::Arc;

use async_trait::async_trait;
use invitation_core::{AppEvent, CallId, CallType, CustomData, User, UserId};

use crate::context::CallContext;

/// Generates everything that lists the callbacks, from one table.
///
/// Each row: the docs, the [`AppEvent`] variant (also the [`Callback`]
/// variant), the method, and each argument as `name: Type = expression`,
/// where the expression builds the argument from the event's field of the
/// same name (bound by reference).
macro_rules! callbacks {
    ($(
        $(#[doc = $doc:literal])*
        $variant:ident => fn $method:ident($($arg:ident: $ty:ty = $conv:expr),* $(,)?);
    )*) => {
        /// What an app implements to react to call invitations. Every method
        /// has a no-op default; implement the ones you need.
        ///
        /// Each method gets the arguments of the original call-kit callback,
        /// borrowed, plus a [`CallContext`] to act on the call (`ctx.accept()`,
        /// `ctx.decline()`, `ctx.cancel()`, `ctx.hang_up()` — safe to await
        /// from inside the callback) and to read everything else about the
        /// event (`ctx.reason()`, `ctx.event()`: the complete,
        /// `#[non_exhaustive]` [`AppEvent`]).
        ///
        /// Callbacks for one call run in order; callbacks for different calls
        /// run concurrently. A panicking or slow callback delays only later
        /// callbacks of its own call: it is isolated, logged, and never
        /// stalls the connection.
        #[async_trait]
        pub trait InvitationEvents: Send + Sync + 'static {
            $(
                $(#[doc = $doc])*
                async fn $method(&self, ctx: &CallContext, $($arg: $ty),*) {
                    let _ = (ctx, $($arg),*);
                }
            )*
        }

        /// The name of each callback of [`InvitationEvents`], for tests and
        /// logs: `Callback::IncomingCallReceived` is
        /// `on_incoming_call_received`. Each variant is named after the
        /// [`AppEvent`] variant that fires it.
        ///
        /// ```
        /// use invitation_handler::Callback;
        /// assert_eq!(Callback::ALL.len(), 10);
        /// assert_eq!(Callback::IncomingCallReceived.name(), "on_incoming_call_received");
        /// assert_eq!(Callback::OutgoingCallTimeout.to_string(), "on_outgoing_call_timeout");
        /// ```
        ///
        /// A callback added later is a new variant; a `match` needs a
        /// wildcard arm, so adding one breaks no app:
        ///
        /// ```compile_fail,E0004
        /// fn incoming(c: invitation_handler::Callback) -> bool {
        ///     use invitation_handler::Callback::*;
        ///     match c {
        ///         IncomingCallReceived | IncomingCallCanceled | IncomingCallTimeout
        ///         | IncomingCallAcceptButtonPressed | IncomingCallDeclineButtonPressed => true,
        ///         OutgoingCallCancelButtonPressed | OutgoingCallAccepted
        ///         | OutgoingCallRejectedCauseBusy | OutgoingCallDeclined | OutgoingCallTimeout => false,
        ///     }
        /// }
        /// ```
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum Callback {
            $(
                #[doc = concat!("[`InvitationEvents::", stringify!($method), "`]")]
                $variant,
            )*
        }

        impl Callback {
            /// Every callback, in the order of the trait.
            pub const ALL: &'static [Callback] = &[$(Callback::$variant),*];

            /// The method's name, e.g. `"on_incoming_call_received"`.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Callback::$variant => stringify!($method),)*
                }
            }

            /// The callback an event fires, if it is one of the ten (the
            /// others are on the event stream only).
            pub fn of(event: &AppEvent) -> Option<Callback> {
                match event {
                    $(AppEvent::$variant { .. } => Some(Callback::$variant),)*
                    _ => None,
                }
            }
        }

        /// Calls the handler method an event maps to; events outside the ten
        /// are not dispatched (they are on the event stream).
        pub(crate) async fn dispatch(handler: &dyn InvitationEvents, ctx: &CallContext) {
            match ctx.event() {
                $(
                    AppEvent::$variant { $($arg,)* .. } => {
                        handler.$method(ctx, $($conv),*).await
                    }
                )*
                _ => {}
            }
        }

        #[async_trait]
        #[deny(clippy::missing_trait_methods)]
        impl<T: InvitationEvents + ?Sized> InvitationEvents for Arc<T> {
            $(
                async fn $method(&self, ctx: &CallContext, $($arg: $ty),*) {
                    (**self).$method(ctx, $($arg),*).await
                }
            )*
        }

        #[async_trait]
        #[deny(clippy::missing_trait_methods)]
        impl<T: InvitationEvents + ?Sized> InvitationEvents for Box<T> {
            $(
                async fn $method(&self, ctx: &CallContext, $($arg: $ty),*) {
                    (**self).$method(ctx, $($arg),*).await
                }
            )*
        }

        #[async_trait]
        #[deny(clippy::missing_trait_methods)]
        impl InvitationEvents for Fanout {
            $(
                async fn $method(&self, ctx: &CallContext, $($arg: $ty),*) {
                    for handler in &self.0 {
                        handler.$method(ctx, $($arg),*).await;
                    }
                }
            )*
        }

        #[cfg(feature = "testing")]
        #[async_trait]
        #[deny(clippy::missing_trait_methods)]
        impl InvitationEvents for crate::recorder::Recorder {
            $(
                async fn $method(&self, ctx: &CallContext, $($arg: $ty),*) {
                    let _ = ($($arg,)*);
                    self.record(Callback::$variant, ctx);
                }
            )*
        }
    };
}

impl std::fmt::Display for Callback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Several handlers behind one: every callback goes to each, in the order
/// they were added.
#[derive(Clone, Default)]
pub struct Fanout(pub Vec<Arc<dyn InvitationEvents>>);

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fanout({} handlers)", self.0.len())
    }
}

callbacks! {
    /// Callee: an invitation rings on this device (also one delivered late,
    /// on (re)connect, while it still rings).
    IncomingCallReceived => fn on_incoming_call_received(
        call_id: &CallId = call_id,
        caller: &User = caller,
        call_type: CallType = *call_type,
        callees: &[User] = callees,
        custom_data: Option<&CustomData> = custom_data.as_ref(),
    );

    /// Callee: ringing stopped before this device answered: the caller
    /// canceled or vanished, or another device of the user answered or
    /// declined. `ctx.reason()` tells which. `custom_data` is the data of
    /// the action that stopped the ring: the caller's cancel (or hang-up),
    /// or the other device's accept or decline; none when the caller
    /// vanished.
    IncomingCallCanceled => fn on_incoming_call_canceled(
        call_id: &CallId = call_id,
        caller: &User = caller,
        custom_data: Option<&CustomData> = custom_data.as_ref(),
    );

    /// Callee: nobody on this user's devices answered in time.
    IncomingCallTimeout => fn on_incoming_call_timeout(
        call_id: &CallId = call_id,
        caller: &User = caller,
    );

    /// Callee: this device accepted (the server confirmed it).
    IncomingCallAcceptButtonPressed => fn on_incoming_call_accept_button_pressed(
        call_id: &CallId = call_id,
    );

    /// Callee: this device declined (the server confirmed it).
    IncomingCallDeclineButtonPressed => fn on_incoming_call_decline_button_pressed(
        call_id: &CallId = call_id,
    );

    /// Caller: this device canceled (the server confirmed it).
    OutgoingCallCancelButtonPressed => fn on_outgoing_call_cancel_button_pressed(
        call_id: &CallId = call_id,
    );

    /// Caller: a callee accepted. The callee's data with its accept is
    /// `ctx.custom_data()`.
    OutgoingCallAccepted => fn on_outgoing_call_accepted(
        call_id: &CallId = call_id,
        callee: &UserId = callee,
    );

    /// Caller: a callee was busy (in a call or inviting, or declined as
    /// busy). `custom_data` is the callee's, sent with its busy decline;
    /// none when the server found the callee busy.
    OutgoingCallRejectedCauseBusy => fn on_outgoing_call_rejected_cause_busy(
        call_id: &CallId = call_id,
        callee: &UserId = callee,
        custom_data: Option<&CustomData> = custom_data.as_ref(),
    );

    /// Caller: a callee actively declined. The callee's data with its
    /// decline is `ctx.custom_data()`.
    OutgoingCallDeclined => fn on_outgoing_call_declined(
        call_id: &CallId = call_id,
        callee: &UserId = callee,
    );

    /// Caller: a callee did not answer in time (once per such callee).
    /// `custom_data` is your own invite's.
    OutgoingCallTimeout => fn on_outgoing_call_timeout(
        call_id: &CallId = call_id,
        callee: &UserId = callee,
        custom_data: Option<&CustomData> = custom_data.as_ref(),
    );
}
