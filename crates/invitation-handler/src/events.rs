//! The `InvitationEvents` trait: ten callbacks, all optional no-ops.

use std::sync::Arc;

use async_trait::async_trait;
use invitation_core::{AppEvent, CallId, CallType, CustomData, User, UserId};

use crate::context::CallContext;

/// What an app implements to react to call invitations. Every method has a
/// no-op default; implement the ones you need.
///
/// Each method gets the arguments of the original call-kit callback,
/// borrowed, plus a [`CallContext`] to act on the call (`ctx.accept()`,
/// `ctx.decline()`, `ctx.cancel()`, `ctx.hang_up()` — safe to await from
/// inside the callback) and to read everything else about the event
/// (`ctx.reason()`, `ctx.event()`: the complete, `#[non_exhaustive]`
/// [`AppEvent`]).
///
/// Callbacks for one call run in order; callbacks for different calls run
/// concurrently. A panicking or slow callback delays only later callbacks of
/// its own call: it is isolated, logged, and never stalls the connection.
#[async_trait]
pub trait InvitationEvents: Send + Sync + 'static {
    /// Callee: an invitation rings on this device (also one delivered late,
    /// on (re)connect, while it still rings).
    async fn on_incoming_call_received(
        &self,
        ctx: &CallContext,
        call_id: &CallId,
        caller: &User,
        call_type: CallType,
        callees: &[User],
        custom_data: Option<&CustomData>,
    ) {
        let _ = (ctx, call_id, caller, call_type, callees, custom_data);
    }

    /// Callee: ringing stopped before this device answered: the caller
    /// canceled or vanished, or another device of the user answered or
    /// declined. `ctx.reason()` tells which.
    async fn on_incoming_call_canceled(
        &self,
        ctx: &CallContext,
        call_id: &CallId,
        caller: &User,
        custom_data: Option<&CustomData>,
    ) {
        let _ = (ctx, call_id, caller, custom_data);
    }

    /// Callee: nobody on this user's devices answered in time.
    async fn on_incoming_call_timeout(&self, ctx: &CallContext, call_id: &CallId, caller: &User) {
        let _ = (ctx, call_id, caller);
    }

    /// Callee: this device accepted (the server confirmed it).
    async fn on_incoming_call_accept_button_pressed(&self, ctx: &CallContext, call_id: &CallId) {
        let _ = (ctx, call_id);
    }

    /// Callee: this device declined (the server confirmed it).
    async fn on_incoming_call_decline_button_pressed(&self, ctx: &CallContext, call_id: &CallId) {
        let _ = (ctx, call_id);
    }

    /// Caller: this device canceled (the server confirmed it).
    async fn on_outgoing_call_cancel_button_pressed(&self, ctx: &CallContext, call_id: &CallId) {
        let _ = (ctx, call_id);
    }

    /// Caller: a callee accepted.
    async fn on_outgoing_call_accepted(
        &self,
        ctx: &CallContext,
        call_id: &CallId,
        callee_id: &UserId,
    ) {
        let _ = (ctx, call_id, callee_id);
    }

    /// Caller: a callee was busy (in a call or inviting, or declined as busy).
    async fn on_outgoing_call_rejected_cause_busy(
        &self,
        ctx: &CallContext,
        call_id: &CallId,
        callee_id: &UserId,
        custom_data: Option<&CustomData>,
    ) {
        let _ = (ctx, call_id, callee_id, custom_data);
    }

    /// Caller: a callee actively declined.
    async fn on_outgoing_call_declined(
        &self,
        ctx: &CallContext,
        call_id: &CallId,
        callee_id: &UserId,
    ) {
        let _ = (ctx, call_id, callee_id);
    }

    /// Caller: a callee did not answer in time (once per such callee).
    async fn on_outgoing_call_timeout(
        &self,
        ctx: &CallContext,
        call_id: &CallId,
        callee_id: &UserId,
        custom_data: Option<&CustomData>,
    ) {
        let _ = (ctx, call_id, callee_id, custom_data);
    }
}

/// Calls the handler method an event maps to; events outside the ten are
/// not dispatched (they are on the event stream).
pub(crate) async fn dispatch(handler: &dyn InvitationEvents, ctx: &CallContext) {
    match ctx.event() {
        AppEvent::IncomingCallReceived {
            call_id,
            caller,
            call_type,
            callees,
            custom_data,
            ..
        } => {
            handler
                .on_incoming_call_received(
                    ctx,
                    call_id,
                    caller,
                    *call_type,
                    callees,
                    custom_data.as_ref(),
                )
                .await
        }
        AppEvent::IncomingCallCanceled {
            call_id,
            caller,
            custom_data,
            ..
        } => {
            handler
                .on_incoming_call_canceled(ctx, call_id, caller, custom_data.as_ref())
                .await
        }
        AppEvent::IncomingCallTimeout { call_id, caller } => {
            handler.on_incoming_call_timeout(ctx, call_id, caller).await
        }
        AppEvent::IncomingCallAcceptButtonPressed { call_id } => {
            handler
                .on_incoming_call_accept_button_pressed(ctx, call_id)
                .await
        }
        AppEvent::IncomingCallDeclineButtonPressed { call_id, .. } => {
            handler
                .on_incoming_call_decline_button_pressed(ctx, call_id)
                .await
        }
        AppEvent::OutgoingCallCancelButtonPressed { call_id } => {
            handler
                .on_outgoing_call_cancel_button_pressed(ctx, call_id)
                .await
        }
        AppEvent::OutgoingCallAccepted { call_id, callee } => {
            handler
                .on_outgoing_call_accepted(ctx, call_id, callee)
                .await
        }
        AppEvent::OutgoingCallRejectedCauseBusy {
            call_id,
            callee,
            custom_data,
        } => {
            handler
                .on_outgoing_call_rejected_cause_busy(ctx, call_id, callee, custom_data.as_ref())
                .await
        }
        AppEvent::OutgoingCallDeclined { call_id, callee } => {
            handler
                .on_outgoing_call_declined(ctx, call_id, callee)
                .await
        }
        AppEvent::OutgoingCallTimeout {
            call_id,
            callee,
            custom_data,
        } => {
            handler
                .on_outgoing_call_timeout(ctx, call_id, callee, custom_data.as_ref())
                .await
        }
        _ => {}
    }
}

/// True for the events that map to one of the ten callbacks.
pub(crate) fn is_callback(event: &AppEvent) -> bool {
    matches!(
        event,
        AppEvent::IncomingCallReceived { .. }
            | AppEvent::IncomingCallCanceled { .. }
            | AppEvent::IncomingCallTimeout { .. }
            | AppEvent::IncomingCallAcceptButtonPressed { .. }
            | AppEvent::IncomingCallDeclineButtonPressed { .. }
            | AppEvent::OutgoingCallCancelButtonPressed { .. }
            | AppEvent::OutgoingCallAccepted { .. }
            | AppEvent::OutgoingCallRejectedCauseBusy { .. }
            | AppEvent::OutgoingCallDeclined { .. }
            | AppEvent::OutgoingCallTimeout { .. }
    )
}

macro_rules! forward_all {
    ([$($gen:tt)*] $ty:ty, $target:ident) => {
        #[async_trait]
        #[deny(clippy::missing_trait_methods)]
        impl<$($gen)*> InvitationEvents for $ty {
        async fn on_incoming_call_received(
            &self,
            ctx: &CallContext,
            call_id: &CallId,
            caller: &User,
            call_type: CallType,
            callees: &[User],
            custom_data: Option<&CustomData>,
        ) {
            forward_all!(@each self, $target, on_incoming_call_received(ctx, call_id, caller, call_type, callees, custom_data));
        }
        async fn on_incoming_call_canceled(
            &self,
            ctx: &CallContext,
            call_id: &CallId,
            caller: &User,
            custom_data: Option<&CustomData>,
        ) {
            forward_all!(@each self, $target, on_incoming_call_canceled(ctx, call_id, caller, custom_data));
        }
        async fn on_incoming_call_timeout(&self, ctx: &CallContext, call_id: &CallId, caller: &User) {
            forward_all!(@each self, $target, on_incoming_call_timeout(ctx, call_id, caller));
        }
        async fn on_incoming_call_accept_button_pressed(&self, ctx: &CallContext, call_id: &CallId) {
            forward_all!(@each self, $target, on_incoming_call_accept_button_pressed(ctx, call_id));
        }
        async fn on_incoming_call_decline_button_pressed(&self, ctx: &CallContext, call_id: &CallId) {
            forward_all!(@each self, $target, on_incoming_call_decline_button_pressed(ctx, call_id));
        }
        async fn on_outgoing_call_cancel_button_pressed(&self, ctx: &CallContext, call_id: &CallId) {
            forward_all!(@each self, $target, on_outgoing_call_cancel_button_pressed(ctx, call_id));
        }
        async fn on_outgoing_call_accepted(&self, ctx: &CallContext, call_id: &CallId, callee_id: &UserId) {
            forward_all!(@each self, $target, on_outgoing_call_accepted(ctx, call_id, callee_id));
        }
        async fn on_outgoing_call_rejected_cause_busy(
            &self,
            ctx: &CallContext,
            call_id: &CallId,
            callee_id: &UserId,
            custom_data: Option<&CustomData>,
        ) {
            forward_all!(@each self, $target, on_outgoing_call_rejected_cause_busy(ctx, call_id, callee_id, custom_data));
        }
        async fn on_outgoing_call_declined(&self, ctx: &CallContext, call_id: &CallId, callee_id: &UserId) {
            forward_all!(@each self, $target, on_outgoing_call_declined(ctx, call_id, callee_id));
        }
        async fn on_outgoing_call_timeout(
            &self,
            ctx: &CallContext,
            call_id: &CallId,
            callee_id: &UserId,
            custom_data: Option<&CustomData>,
        ) {
            forward_all!(@each self, $target, on_outgoing_call_timeout(ctx, call_id, callee_id, custom_data));
        }
        }
    };
    (@each $self:ident, deref, $method:ident($($arg:expr),*)) => {
        (**$self).$method($($arg),*).await
    };
    (@each $self:ident, fanout, $method:ident($($arg:expr),*)) => {
        for h in &$self.0 {
            h.$method($($arg),*).await;
        }
    };
}

forward_all!([T: InvitationEvents + ?Sized] Arc<T>, deref);
forward_all!([T: InvitationEvents + ?Sized] Box<T>, deref);

/// Several handlers behind one: every callback goes to each, in the order
/// they were added.
#[derive(Clone, Default)]
pub struct Fanout(pub Vec<Arc<dyn InvitationEvents>>);

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fanout({} handlers)", self.0.len())
    }
}

forward_all!([] Fanout, fanout);
