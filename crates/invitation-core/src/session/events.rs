//! What the session tells the app: [`AppEvent`], and the connection states
//! it reports.

use std::sync::Arc;
use std::time::Duration;

use crate::id::{CallId, DeviceId, UserId};
use crate::model::{CallType, CustomData, Reason, User};
use crate::protocol::LeaveReason;

/// The connection as the app sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Connected and in step with the server.
    #[non_exhaustive]
    Connected {
        /// True when the event stream continued where it left off; false
        /// when a full resync was needed.
        resumed: bool,
    },
    /// The connection was lost; the driver is reconnecting.
    Reconnecting,
    /// The client stopped for good: it does not reconnect.
    Stopped {
        /// Why.
        reason: StopReason,
    },
}

/// Why a client stopped for good (see [`ConnectionState::Stopped`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StopReason {
    /// The server refused the token (garbage, wrong secret, expired, another
    /// user), and a fresh one from the token provider too, if there is one.
    Unauthorized,
    /// Another connection with the same user and device took over: the
    /// newest connection wins, this one stays down.
    Replaced,
    /// The token expired and nothing renewed it (no token provider).
    TokenExpired,
    /// The token provider failed to give a token.
    TokenProviderFailed,
    /// A failure that retrying cannot repair (invalid URL, refused upgrade,
    /// protocol error).
    Failed,
}

/// Everything that can happen to a device, as one typed stream. The first
/// ten variants are the ten callbacks of `InvitationEvents`; the rest are the
/// extras the ten do not cover.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AppEvent {
    /// Callee: an invitation rings on this device.
    #[non_exhaustive]
    IncomingCallReceived {
        /// The call.
        call_id: CallId,
        /// Who calls.
        caller: User,
        /// Voice or video.
        call_type: CallType,
        /// Everyone invited.
        callees: Arc<[User]>,
        /// The caller's data.
        custom_data: Option<CustomData>,
        /// Ring time left when it arrived.
        ring_remaining: Duration,
    },
    /// Callee: ringing stopped before this device answered (caller
    /// canceled, caller gone, answered or declined elsewhere).
    #[non_exhaustive]
    IncomingCallCanceled {
        /// The call.
        call_id: CallId,
        /// Who called.
        caller: User,
        /// The data of the action that stopped the ring: the caller's
        /// cancel (or hang-up), or the accept or decline of the device that
        /// answered elsewhere; none when the caller vanished.
        custom_data: Option<CustomData>,
        /// Why: canceled, caller_gone, answered_elsewhere, declined_elsewhere ...
        reason: Reason,
    },
    /// Callee: nobody answered in time.
    #[non_exhaustive]
    IncomingCallTimeout {
        /// The call.
        call_id: CallId,
        /// Who called.
        caller: User,
    },
    /// Callee: this device accepted (confirmed by the server).
    #[non_exhaustive]
    IncomingCallAcceptButtonPressed {
        /// The call.
        call_id: CallId,
    },
    /// Callee: this device declined (confirmed by the server).
    #[non_exhaustive]
    IncomingCallDeclineButtonPressed {
        /// The call.
        call_id: CallId,
        /// Declined as busy.
        busy: bool,
    },
    /// Caller: this device canceled (confirmed by the server).
    #[non_exhaustive]
    OutgoingCallCancelButtonPressed {
        /// The call.
        call_id: CallId,
    },
    /// Caller: a callee accepted.
    #[non_exhaustive]
    OutgoingCallAccepted {
        /// The call.
        call_id: CallId,
        /// Who accepted.
        callee: UserId,
        /// The callee's data with its accept.
        custom_data: Option<CustomData>,
    },
    /// Caller: a callee was busy.
    #[non_exhaustive]
    OutgoingCallRejectedCauseBusy {
        /// The call.
        call_id: CallId,
        /// Who was busy.
        callee: UserId,
        /// The callee's data with its busy decline; none when the server
        /// found the callee busy.
        custom_data: Option<CustomData>,
    },
    /// Caller: a callee declined.
    #[non_exhaustive]
    OutgoingCallDeclined {
        /// The call.
        call_id: CallId,
        /// Who declined.
        callee: UserId,
        /// The callee's data with its decline.
        custom_data: Option<CustomData>,
    },
    /// Caller: a callee did not answer in time (once per such callee).
    #[non_exhaustive]
    OutgoingCallTimeout {
        /// The call.
        call_id: CallId,
        /// Who did not answer.
        callee: UserId,
        /// Your data, as sent.
        custom_data: Option<CustomData>,
    },
    /// Callee: another device of yours accepted.
    #[non_exhaustive]
    AnsweredElsewhere {
        /// The call.
        call_id: CallId,
        /// The device that accepted.
        device: Option<DeviceId>,
        /// That device's data with its accept.
        custom_data: Option<CustomData>,
    },
    /// Callee: another device of yours declined.
    #[non_exhaustive]
    DeclinedElsewhere {
        /// The call.
        call_id: CallId,
        /// The device that declined.
        device: Option<DeviceId>,
        /// That device's data with its decline.
        custom_data: Option<CustomData>,
    },
    /// Caller: at least one device of this callee has the invitation.
    #[non_exhaustive]
    CalleeRinging {
        /// The call.
        call_id: CallId,
        /// The callee.
        callee: UserId,
    },
    /// Caller: a callee outcome not covered by the ten callbacks (canceled,
    /// caller gone, unreachable), or any outcome seen on a caller device
    /// that did not start the call.
    #[non_exhaustive]
    CalleeOutcome {
        /// The call.
        call_id: CallId,
        /// The callee.
        callee: UserId,
        /// The outcome.
        reason: Reason,
        /// The callee's data with its answer (none for outcomes the server
        /// decided, and for timeouts).
        custom_data: Option<CustomData>,
    },
    /// Caller: another device of yours started a call.
    #[non_exhaustive]
    OutgoingCallStarted {
        /// The call.
        call_id: CallId,
        /// The device that invited.
        device: DeviceId,
        /// Who was invited.
        callees: Arc<[User]>,
    },
    /// The call is over for you (hung up, or the invitation ended).
    #[non_exhaustive]
    CallEnded {
        /// The call.
        call_id: CallId,
        /// Why.
        reason: Reason,
        /// The data of the hang-up or cancel that ended it.
        custom_data: Option<CustomData>,
    },
    /// Someone is now in a call this device knows live (accepted while
    /// others were in it, joined late, or added through glare). When
    /// `user` is you, this device joined (`device` is this one) or another
    /// device of yours did ("joined elsewhere": this device is not in the
    /// call).
    #[non_exhaustive]
    ParticipantJoined {
        /// The call.
        call_id: CallId,
        /// Who joined.
        user: UserId,
        /// The device they are in the call on.
        device: DeviceId,
    },
    /// Someone left a call you are in. With [`LeaveReason::Left`] the call
    /// goes on; with [`LeaveReason::EndedCall`] they ended it for everyone
    /// and [`AppEvent::CallEnded`] follows.
    #[non_exhaustive]
    ParticipantLeft {
        /// The call.
        call_id: CallId,
        /// Who left.
        user: UserId,
        /// How.
        reason: LeaveReason,
    },
    /// The event stream could not be resumed; the local view was rebuilt
    /// from a full snapshot (events in between may be summarised).
    #[non_exhaustive]
    Resynced {
        /// Live calls in the snapshot.
        live_calls: usize,
    },
    /// The connection changed state. (Not `#[non_exhaustive]` itself, so
    /// that other crates can match `Connection(state)`; what can grow is
    /// [`ConnectionState`], which is.)
    Connection(ConnectionState),
    /// Caller: this device of this callee confirmed it has the invitation
    /// (its app received it). [`AppEvent::CalleeRinging`] without it means
    /// the server sent the invitation but the device never confirmed.
    #[non_exhaustive]
    CalleeDelivered {
        /// The call.
        call_id: CallId,
        /// The callee.
        callee: UserId,
        /// The callee's device.
        device: DeviceId,
    },
}

impl AppEvent {
    /// The custom data the event carries, if any: for each event, the data
    /// of the action behind it (docs/events.md has the table).
    pub fn custom_data(&self) -> Option<&CustomData> {
        use AppEvent::*;
        match self {
            IncomingCallReceived { custom_data, .. }
            | IncomingCallCanceled { custom_data, .. }
            | OutgoingCallAccepted { custom_data, .. }
            | OutgoingCallRejectedCauseBusy { custom_data, .. }
            | OutgoingCallDeclined { custom_data, .. }
            | OutgoingCallTimeout { custom_data, .. }
            | AnsweredElsewhere { custom_data, .. }
            | DeclinedElsewhere { custom_data, .. }
            | CalleeOutcome { custom_data, .. }
            | CallEnded { custom_data, .. } => custom_data.as_ref(),
            _ => None,
        }
    }

    /// The call the event is about, if any.
    pub fn call_id(&self) -> Option<&CallId> {
        use AppEvent::*;
        match self {
            IncomingCallReceived { call_id, .. }
            | IncomingCallCanceled { call_id, .. }
            | IncomingCallTimeout { call_id, .. }
            | IncomingCallAcceptButtonPressed { call_id }
            | IncomingCallDeclineButtonPressed { call_id, .. }
            | OutgoingCallCancelButtonPressed { call_id }
            | OutgoingCallAccepted { call_id, .. }
            | OutgoingCallRejectedCauseBusy { call_id, .. }
            | OutgoingCallDeclined { call_id, .. }
            | OutgoingCallTimeout { call_id, .. }
            | AnsweredElsewhere { call_id, .. }
            | DeclinedElsewhere { call_id, .. }
            | CalleeRinging { call_id, .. }
            | CalleeOutcome { call_id, .. }
            | OutgoingCallStarted { call_id, .. }
            | CallEnded { call_id, .. }
            | CalleeDelivered { call_id, .. }
            | ParticipantJoined { call_id, .. }
            | ParticipantLeft { call_id, .. } => Some(call_id),
            Resynced { .. } | Connection(_) => None,
        }
    }
}
