//! Merging a full `sync` snapshot into the local view.

use std::time::{Duration, Instant};

use foldhash::HashSet;

use crate::id::{CallId, UserId};
use crate::model::{CustomData, Reason};
use crate::protocol::{CallSnapshot, CalleeOutcome, Event, Role, SnapshotState, SyncBody};

use super::{AppEvent, ClientSession, Local, LocalCall, TimerKey};

impl ClientSession {
    pub(super) fn on_sync(&mut self, now: Instant, sync: SyncBody) {
        if !self.awaiting_sync && self.last_seq.is_some_and(|last| sync.seq < last) {
            // A snapshot older than what this device already applied (the
            // answer to an earlier request, overtaken): it would rewind.
            self.duplicates += 1;
            return;
        }
        self.awaiting_sync = false;
        self.timers.disarm(&TimerKey::SyncRetry);
        self.timers.disarm(&TimerKey::Gap);
        self.last_seq = Some(sync.seq);
        let live: HashSet<CallId> = sync.calls.iter().map(|c| c.call_id.clone()).collect();
        // Calls this device thinks live but the server does not: they ended.
        let mut gone: Vec<CallId> = self
            .calls
            .keys()
            .filter(|id| !live.contains(*id))
            .cloned()
            .collect();
        gone.sort(); // deterministic event order
        for call_id in gone {
            let ended = sync.ended.iter().find(|e| e.call_id == call_id);
            let reason = ended.map_or(Reason::Failed, |e| e.reason);
            let outcomes = ended.map(|e| e.outcomes.clone()).unwrap_or_default();
            let data = ended.and_then(|e| e.custom_data.clone());
            self.end_from_sync(&call_id, reason, &outcomes, data);
        }
        let count = sync.calls.len();
        for snap in sync.calls {
            self.merge_snapshot(now, snap);
        }
        self.events
            .push_back(AppEvent::Resynced { live_calls: count });
        // Events after the snapshot that arrived before it.
        self.apply_ahead(now);
        if !self.ahead.is_empty() {
            self.open_gap(now);
        }
    }

    pub(super) fn end_from_sync(
        &mut self,
        call_id: &CallId,
        reason: Reason,
        outcomes: &[CalleeOutcome],
        data: Option<CustomData>,
    ) {
        let Some(call) = self.calls.get(call_id) else {
            return;
        };
        match &call.state {
            Local::Ringing | Local::Silent => {
                let reason = match reason {
                    Reason::HungUp | Reason::Accepted => Reason::AnsweredElsewhere,
                    other => other,
                };
                self.incoming_ended(call_id, reason, None, data);
            }
            Local::Outgoing {
                outcomes: known, ..
            } => {
                let pending: Vec<UserId> = known
                    .iter()
                    .filter(|(_, r)| r.is_none())
                    .map(|(u, _)| u.clone())
                    .collect();
                // Only outcomes the server still knows: a guess could
                // contradict the truth (a group's overall reason is not each
                // callee's).
                for callee in pending {
                    if let Some(o) = outcomes.iter().find(|o| o.callee == callee) {
                        self.callee_outcome(call_id, callee, o.reason, o.custom_data.clone());
                    }
                }
                self.finish(call_id);
                self.events.push_back(AppEvent::CallEnded {
                    call_id: call_id.clone(),
                    reason,
                    custom_data: data,
                });
            }
            Local::InCall => {
                self.finish(call_id);
                self.events.push_back(AppEvent::CallEnded {
                    call_id: call_id.clone(),
                    reason,
                    custom_data: data,
                });
            }
        }
    }

    pub(super) fn merge_snapshot(&mut self, now: Instant, snap: CallSnapshot) {
        let rings_again = snap.role == Role::Callee
            && snap.state == SnapshotState::Ringing
            && snap.ring_remaining_ms > 0;
        if self.ended.contains(&snap.call_id) && !rings_again {
            return;
        }
        let remaining = Duration::from_millis(snap.ring_remaining_ms);
        match snap.role {
            Role::Callee => match (snap.state, self.calls.get(&snap.call_id).map(|c| &c.state)) {
                (SnapshotState::Ringing, None) => {
                    self.apply(
                        now,
                        Event::IncomingCall {
                            call_id: snap.call_id,
                            caller: snap.caller,
                            call_type: snap.call_type,
                            callees: snap.callees,
                            custom_data: snap.custom_data,
                            ring_remaining_ms: snap.ring_remaining_ms,
                            ring_timeout_ms: snap.ring_timeout_ms,
                        },
                    );
                }
                (SnapshotState::Accepted, Some(Local::Ringing | Local::Silent)) => {
                    let data = snap.outcomes.into_iter().find_map(|o| o.custom_data);
                    self.incoming_ended(&snap.call_id, Reason::Accepted, snap.device, data);
                }
                (SnapshotState::Accepted, None) => {
                    let mine = snap.device.as_ref() == Some(&self.device);
                    if mine {
                        // Accepted by this device while the link was down:
                        // in the call, with no accept callback from here.
                        let call = LocalCall::new(Local::InCall, snap.caller, snap.custom_data);
                        self.calls.insert(snap.call_id, call);
                    }
                }
                _ => {}
            },
            Role::Caller => {
                if !self.calls.contains_key(&snap.call_id) {
                    let mine = snap.caller_device == self.device;
                    let state = Local::outgoing(mine, snap.callees.iter().map(|u| u.id.clone()));
                    let call = LocalCall::new(state, snap.caller, snap.custom_data);
                    self.calls.insert(snap.call_id.clone(), call);
                    if mine && snap.state == SnapshotState::Ringing {
                        self.arm_fallback(
                            &snap.call_id,
                            now + remaining + self.config.fallback_margin,
                        );
                    }
                    if !mine {
                        self.events.push_back(AppEvent::OutgoingCallStarted {
                            call_id: snap.call_id.clone(),
                            device: snap.caller_device,
                            callees: snap.callees,
                        });
                    }
                }
                for o in snap.outcomes {
                    self.callee_outcome(&snap.call_id, o.callee, o.reason, o.custom_data);
                }
                for d in snap.delivered {
                    self.callee_delivered(&snap.call_id, d.callee, d.device);
                }
            }
        }
    }
}
