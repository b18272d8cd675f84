//! Runs handler callbacks: in order per call, concurrently across calls,
//! each isolated in its own task so that a panic is caught and logged and a
//! slow callback holds back only its own call.

use std::collections::HashMap;
use std::sync::Arc;

use invitation_core::{AppEvent, CallId};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::client::Client;
use crate::context::CallContext;
use crate::events::{Callback, InvitationEvents, dispatch};

struct Lane {
    tx: mpsc::UnboundedSender<AppEvent>,
    task: JoinHandle<()>,
}

pub(crate) struct Dispatcher {
    client: Client,
    handler: Arc<dyn InvitationEvents>,
    lanes: HashMap<CallId, Lane>,
    /// Lanes of calls that ended, still finishing their queue. A new lane for
    /// the same call waits for the old one, so order holds.
    closing: HashMap<CallId, JoinHandle<()>>,
}

impl Dispatcher {
    pub(crate) fn new(client: Client, handler: Arc<dyn InvitationEvents>) -> Self {
        Self {
            client,
            handler,
            lanes: HashMap::new(),
            closing: HashMap::new(),
        }
    }

    /// Publishes an event on the stream and, for the ten callbacks, queues
    /// it on its call's lane. `live`: the call is still live on this device
    /// (otherwise its lane is closed after this event).
    pub(crate) fn push(&mut self, event: AppEvent, live: bool) {
        let _ = self.client.events_tx().send(event.clone());
        let Some(call_id) = event.call_id().cloned() else {
            return;
        };
        if Callback::of(&event).is_some() {
            let lane = match self.lanes.get(&call_id) {
                Some(lane) => lane,
                None => {
                    let lane = self.open(&call_id);
                    self.lanes.entry(call_id.clone()).or_insert(lane)
                }
            };
            if lane.tx.send(event).is_err() {
                tracing::error!(%call_id, "handler lane stopped");
            }
        }
        if !live {
            if let Some(lane) = self.lanes.remove(&call_id) {
                drop(lane.tx);
                self.closing.insert(call_id, lane.task);
            }
            if self.closing.len() > 64 {
                self.closing.retain(|_, task| !task.is_finished());
            }
        }
    }

    fn open(&mut self, call_id: &CallId) -> Lane {
        let (tx, mut rx) = mpsc::unbounded_channel::<AppEvent>();
        let before = self.closing.remove(call_id);
        let handler = self.handler.clone();
        let client = self.client.clone();
        let call_id = call_id.clone();
        let task = tokio::spawn(async move {
            if let Some(before) = before {
                let _ = before.await;
            }
            while let Some(event) = rx.recv().await {
                let ctx = CallContext::new(client.clone(), call_id.clone(), event);
                let handler = handler.clone();
                // Its own task: a panic ends that task only.
                let run = tokio::spawn(async move { dispatch(&*handler, &ctx).await });
                if let Err(e) = run.await {
                    if e.is_panic() {
                        tracing::error!(%call_id, "an event handler panicked; continuing");
                    }
                }
            }
        });
        Lane { tx, task }
    }
}
