//! A handler that records every callback, for tests.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use invitation_core::{AppEvent, CallId, CallType, CustomData, User, UserId};
use tokio::sync::Notify;

use crate::context::CallContext;
use crate::events::InvitationEvents;

/// One recorded callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The callback's name, e.g. `"on_incoming_call_received"`.
    pub method: &'static str,
    /// The call.
    pub call_id: CallId,
    /// The complete event.
    pub event: AppEvent,
}

/// Records every callback it gets; clone it into the builder and keep a
/// copy to inspect. [`Recorder::wait_for`] waits without sleeping, so tests
/// stay deterministic under paused time.
#[derive(Clone, Default, Debug)]
pub struct Recorder {
    inner: Arc<(Mutex<Vec<Recorded>>, Notify)>,
}

impl Recorder {
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything recorded so far.
    pub fn records(&self) -> Vec<Recorded> {
        self.inner.0.lock().expect("recorder lock").clone()
    }

    /// The names of the callbacks so far, in order.
    pub fn methods(&self) -> Vec<&'static str> {
        self.records().into_iter().map(|r| r.method).collect()
    }

    /// How many times `method` fired.
    pub fn count(&self, method: &str) -> usize {
        self.records().iter().filter(|r| r.method == method).count()
    }

    /// Waits until `method` has fired at least `n` times; returns the n-th.
    pub async fn wait_for(&self, method: &str, n: usize) -> Recorded {
        loop {
            let notified = self.inner.1.notified();
            {
                let records = self.inner.0.lock().expect("recorder lock");
                if let Some(r) = records
                    .iter()
                    .filter(|r| r.method == method)
                    .nth(n.max(1) - 1)
                {
                    return r.clone();
                }
            }
            notified.await;
        }
    }

    fn record(&self, method: &'static str, ctx: &CallContext) {
        self.inner.0.lock().expect("recorder lock").push(Recorded {
            method,
            call_id: ctx.call_id().clone(),
            event: ctx.event().clone(),
        });
        self.inner.1.notify_waiters();
    }
}

#[async_trait]
impl InvitationEvents for Recorder {
    async fn on_incoming_call_received(
        &self,
        ctx: &CallContext,
        _: &CallId,
        _: &User,
        _: CallType,
        _: &[User],
        _: Option<&CustomData>,
    ) {
        self.record("on_incoming_call_received", ctx);
    }
    async fn on_incoming_call_canceled(
        &self,
        ctx: &CallContext,
        _: &CallId,
        _: &User,
        _: Option<&CustomData>,
    ) {
        self.record("on_incoming_call_canceled", ctx);
    }
    async fn on_incoming_call_timeout(&self, ctx: &CallContext, _: &CallId, _: &User) {
        self.record("on_incoming_call_timeout", ctx);
    }
    async fn on_incoming_call_accept_button_pressed(&self, ctx: &CallContext, _: &CallId) {
        self.record("on_incoming_call_accept_button_pressed", ctx);
    }
    async fn on_incoming_call_decline_button_pressed(&self, ctx: &CallContext, _: &CallId) {
        self.record("on_incoming_call_decline_button_pressed", ctx);
    }
    async fn on_outgoing_call_cancel_button_pressed(&self, ctx: &CallContext, _: &CallId) {
        self.record("on_outgoing_call_cancel_button_pressed", ctx);
    }
    async fn on_outgoing_call_accepted(&self, ctx: &CallContext, _: &CallId, _: &UserId) {
        self.record("on_outgoing_call_accepted", ctx);
    }
    async fn on_outgoing_call_rejected_cause_busy(
        &self,
        ctx: &CallContext,
        _: &CallId,
        _: &UserId,
        _: Option<&CustomData>,
    ) {
        self.record("on_outgoing_call_rejected_cause_busy", ctx);
    }
    async fn on_outgoing_call_declined(&self, ctx: &CallContext, _: &CallId, _: &UserId) {
        self.record("on_outgoing_call_declined", ctx);
    }
    async fn on_outgoing_call_timeout(
        &self,
        ctx: &CallContext,
        _: &CallId,
        _: &UserId,
        _: Option<&CustomData>,
    ) {
        self.record("on_outgoing_call_timeout", ctx);
    }
}
