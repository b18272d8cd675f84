//! The handle a callback gets to read its event and act on its call.

use invitation_core::{AppEvent, CallId, CustomData, Reason};

use crate::client::{Client, ClientError};

/// Passed to every callback: the complete event, the call, and the client
/// to act with. Cheap to clone. Acting from inside a callback never
/// deadlocks: commands go to the client's driver task, which keeps running
/// while callbacks await.
#[derive(Clone, Debug)]
pub struct CallContext {
    client: Client,
    call_id: CallId,
    event: AppEvent,
}

impl CallContext {
    pub(crate) fn new(client: Client, call_id: CallId, event: AppEvent) -> Self {
        Self {
            client,
            call_id,
            event,
        }
    }

    /// The call this callback is about.
    pub fn call_id(&self) -> &CallId {
        &self.call_id
    }

    /// The complete event behind the callback (more fields than the
    /// callback's arguments, and future ones).
    pub fn event(&self) -> &AppEvent {
        &self.event
    }

    /// The typed reason, for callbacks that end something: canceled
    /// (`canceled`, `caller_gone`, `answered_elsewhere`,
    /// `declined_elsewhere`), timeouts, declines and busy.
    pub fn reason(&self) -> Option<Reason> {
        Some(match &self.event {
            AppEvent::IncomingCallCanceled { reason, .. } => *reason,
            AppEvent::IncomingCallTimeout { .. } | AppEvent::OutgoingCallTimeout { .. } => {
                Reason::Timeout
            }
            AppEvent::IncomingCallDeclineButtonPressed { busy: true, .. }
            | AppEvent::OutgoingCallRejectedCauseBusy { .. } => Reason::Busy,
            AppEvent::IncomingCallDeclineButtonPressed { .. }
            | AppEvent::OutgoingCallDeclined { .. } => Reason::Declined,
            AppEvent::IncomingCallAcceptButtonPressed { .. }
            | AppEvent::OutgoingCallAccepted { .. } => Reason::Accepted,
            AppEvent::OutgoingCallCancelButtonPressed { .. } => Reason::Canceled,
            AppEvent::CalleeOutcome { reason, .. } | AppEvent::CallEnded { reason, .. } => *reason,
            _ => return None,
        })
    }

    /// The custom data the event carries: the data of the action behind it
    /// (the callee's accept or decline for `on_outgoing_call_accepted`,
    /// `on_outgoing_call_declined` and `on_outgoing_call_rejected_cause_busy`;
    /// the cancel's for `on_incoming_call_canceled`; the invite's for
    /// `on_incoming_call_received` and `on_outgoing_call_timeout`). See
    /// docs/events.md for the table.
    pub fn custom_data(&self) -> Option<&CustomData> {
        self.event.custom_data()
    }

    /// The client that received the event.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Accepts this call on this device.
    pub async fn accept(&self) -> Result<(), ClientError> {
        self.client.accept(&self.call_id).await
    }

    /// Declines this call (for all of the user's devices).
    pub async fn decline(&self) -> Result<(), ClientError> {
        self.client.decline(&self.call_id).await
    }

    /// Declines this call as busy: the caller sees "busy".
    pub async fn decline_busy(&self) -> Result<(), ClientError> {
        self.client.decline_busy(&self.call_id).await
    }

    /// Cancels this (outgoing) call.
    pub async fn cancel(&self) -> Result<(), ClientError> {
        self.client.cancel(&self.call_id).await
    }

    /// Leaves this call.
    pub async fn hang_up(&self) -> Result<(), ClientError> {
        self.client.hang_up(&self.call_id).await
    }

    /// Accepts this call with custom data for the caller.
    pub async fn accept_with(&self, custom_data: Option<CustomData>) -> Result<(), ClientError> {
        self.client.accept_with(&self.call_id, custom_data).await
    }

    /// Declines this call with custom data for the caller.
    pub async fn decline_with(&self, custom_data: Option<CustomData>) -> Result<(), ClientError> {
        self.client.decline_with(&self.call_id, custom_data).await
    }

    /// Declines this call as busy, with custom data for the caller.
    pub async fn decline_busy_with(
        &self,
        custom_data: Option<CustomData>,
    ) -> Result<(), ClientError> {
        self.client
            .decline_busy_with(&self.call_id, custom_data)
            .await
    }

    /// Cancels this (outgoing) call with custom data for the callees.
    pub async fn cancel_with(&self, custom_data: Option<CustomData>) -> Result<(), ClientError> {
        self.client.cancel_with(&self.call_id, custom_data).await
    }

    /// Leaves this call with custom data for the others.
    pub async fn hang_up_with(&self, custom_data: Option<CustomData>) -> Result<(), ClientError> {
        self.client.hang_up_with(&self.call_id, custom_data).await
    }
}
