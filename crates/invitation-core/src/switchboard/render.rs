//! From state to wire: the log events each user is sent (rendered with the
//! ring time left), replies and errors, and `sync` snapshots.

use std::time::{Duration, Instant};

use foldhash::HashMap;

use super::call::{Call, CallInfo, Slot};
use super::user::LogEvent;
use super::{ConnId, Output, Switchboard};
use crate::error::CommandError;
use crate::id::{CallId, RequestId, UserId};
use crate::model::Reason;
use crate::protocol::{
    CallSnapshot, CalleeOutcome, EndedCall, ErrorBody, Event, Participant, ReplyResult, Role,
    ServerBody, ServerMessage, SnapshotState, SyncBody,
};

impl Switchboard {
    pub(super) fn reply(
        &mut self,
        conn: ConnId,
        request: &RequestId,
        result: &Result<ReplyResult, CommandError>,
    ) {
        let body = match result {
            Ok(r) => ServerBody::Reply {
                re: request.clone(),
                result: r.clone(),
            },
            Err(e) => ServerBody::Error(ErrorBody::from_command(Some(request.clone()), e)),
        };
        self.send(conn, body);
    }

    pub(super) fn send(&mut self, conn: ConnId, body: ServerBody) {
        self.out.push_back(Output::Send {
            conn,
            message: ServerMessage::new(body),
        });
    }

    /// Appends the pending events to their users' logs and sends them to
    /// every online device.
    pub(super) fn flush(&mut self, now: Instant) {
        let mut pending = std::mem::take(&mut self.pending);
        let cap = self.config.resume_buffer;
        for (user, event) in pending.drain(..) {
            if self.config.push {
                self.note_push(&user, &event, now);
            }
            let Some(entry) = self.users.get_mut(&user) else {
                continue;
            };
            let seq = entry.append(event, cap);
            // An event is how a call ends for a user: one that left them
            // with no device and no call starts their idle window.
            self.idle_users.note(&user, entry, now);
            let entry = &self.users[&user];
            if entry.devices.is_empty() {
                continue;
            }
            let rendered = render(&self.calls, &user, entry.log.back().expect("appended"), now);
            for (_, conn) in &entry.devices {
                let answers = |a: &mut super::Answer| {
                    a.conn == *conn && a.call.as_ref().is_none_or(|c| c == rendered.call_id())
                };
                let (re, result) = match self.answer.take_if(answers) {
                    Some(a) => (Some(a.request), Some(a.result)),
                    None => (None, None),
                };
                self.out.push_back(Output::Send {
                    conn: *conn,
                    message: ServerMessage::new(ServerBody::Event {
                        seq,
                        re,
                        // `done` is the default: said by `re` alone.
                        result: result.filter(|r| *r != ReplyResult::Done),
                        event: rendered.clone(),
                    }),
                });
            }
        }
        self.pending = pending;
    }

    pub(super) fn snapshot(&self, user: &UserId, now: Instant, re: Option<RequestId>) -> SyncBody {
        let Some(entry) = self.users.get(user) else {
            return SyncBody {
                re,
                seq: 0,
                calls: Vec::new(),
                ended: Vec::new(),
            };
        };
        let mut calls = Vec::new();
        for call_id in &entry.calls {
            let Some(call) = self.calls.get(call_id) else {
                continue;
            };
            if call.is_ended() {
                continue;
            }
            let info = &call.info;
            let remaining = |deadline: Option<Instant>| {
                deadline.map_or(0, |d| duration_ms(d.saturating_duration_since(now)))
            };
            let participants: Vec<Participant> = if call.established() {
                call.participants()
                    .into_iter()
                    .map(|(u, d)| Participant::new(u, d))
                    .collect()
            } else {
                Vec::new()
            };
            let base = |role, state, ring_remaining_ms, device, outcomes| CallSnapshot {
                call_id: call_id.clone(),
                role,
                caller: info.caller.clone(),
                caller_device: info.caller_device.clone(),
                call_type: info.call_type,
                callees: info.callees.clone(),
                custom_data: info.custom_data.clone(),
                state,
                ring_remaining_ms,
                ring_timeout_ms: duration_ms(info.ring_for),
                device,
                outcomes,
                delivered: Vec::new(),
                participants: participants.clone(),
            };
            if &info.caller.id == user {
                let outcomes = self.outcomes(call_id, call);
                let state = if call.is_ringing() {
                    SnapshotState::Ringing
                } else {
                    SnapshotState::Accepted
                };
                let left = remaining(call.last_ring_deadline());
                let mut snap = base(Role::Caller, state, left, None, outcomes);
                if !self.config.hide_callee_status {
                    snap.delivered = self.deliveries(call_id);
                }
                calls.push(snap);
            } else if let Some(i) = call.slot_of(user) {
                let slot = &call.slots[i];
                if let Some(deadline) = slot.ring_deadline() {
                    calls.push(base(
                        Role::Callee,
                        SnapshotState::Ringing,
                        remaining(Some(deadline)),
                        None,
                        Vec::new(),
                    ));
                } else if let Slot::Accepted {
                    device,
                    in_call: true,
                } = slot
                {
                    // The accept's data, for a device of this user that
                    // missed it (it rang and resyncs).
                    let own = self
                        .answer_data(call_id, i)
                        .map(|data| {
                            vec![
                                CalleeOutcome::new(user.clone(), Reason::Accepted)
                                    .with_custom_data(Some(data)),
                            ]
                        })
                        .unwrap_or_default();
                    calls.push(base(
                        Role::Callee,
                        SnapshotState::Accepted,
                        0,
                        Some(device.clone()),
                        own,
                    ));
                }
            }
        }
        SyncBody {
            re,
            seq: entry.seq,
            calls,
            ended: entry
                .recent_ended()
                .map(|(call_id, reason, data)| EndedCall {
                    call_id: call_id.clone(),
                    reason: *reason,
                    outcomes: self
                        .calls
                        .get(call_id)
                        .filter(|c| &c.info.caller.id == user)
                        .map(|c| self.outcomes(call_id, c))
                        .unwrap_or_default(),
                    custom_data: data.clone(),
                })
                .collect(),
        }
    }

    /// Every callee's outcome so far, with the data it answered with.
    fn outcomes(&self, call_id: &CallId, call: &Call) -> Vec<CalleeOutcome> {
        call.info
            .callees
            .iter()
            .zip(&call.slots)
            .enumerate()
            .filter_map(|(i, (u, s))| {
                s.outcome().map(|reason| {
                    CalleeOutcome::new(u.id.clone(), reason)
                        .with_custom_data(self.answer_data(call_id, i))
                })
            })
            .collect()
    }
}

pub(super) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Turns a log entry into the wire event for `user`, computing ring time
/// left at `now` (0 once the invitation no longer rings for that user).
pub(super) fn render(
    calls: &HashMap<CallId, Box<Call>>,
    user: &UserId,
    event: &LogEvent,
    now: Instant,
) -> Event {
    let remaining = |info: &CallInfo, for_callee: bool| {
        let deadline = calls.get(&info.call_id).and_then(|call| {
            if call.is_ended() {
                None
            } else if for_callee {
                call.slot_of(user)
                    .and_then(|i| call.slots[i].ring_deadline())
            } else {
                call.last_ring_deadline()
            }
        });
        deadline.map_or(0, |d| duration_ms(d.saturating_duration_since(now)))
    };
    match event {
        LogEvent::Incoming(info) => Event::IncomingCall {
            call_id: info.call_id.clone(),
            caller: info.caller.clone(),
            call_type: info.call_type,
            callees: info.callees.clone(),
            custom_data: info.custom_data.clone(),
            ring_remaining_ms: remaining(info, true),
            ring_timeout_ms: duration_ms(info.ring_for),
        },
        LogEvent::Outgoing(info) => Event::OutgoingCall {
            call_id: info.call_id.clone(),
            device: info.caller_device.clone(),
            call_type: info.call_type,
            callees: info.callees.clone(),
            custom_data: info.custom_data.clone(),
            ring_remaining_ms: remaining(info, false),
        },
        LogEvent::IncomingEnded {
            call,
            reason,
            device,
        } => Event::IncomingEnded {
            call_id: call.clone(),
            reason: *reason,
            device: device.clone(),
            custom_data: None,
        },
        LogEvent::CalleeRinging { call, callee } => Event::CalleeRinging {
            call_id: call.clone(),
            callee: callee.clone(),
        },
        LogEvent::CalleeOutcome {
            call,
            callee,
            reason,
        } => Event::CalleeOutcome {
            call_id: call.clone(),
            callee: callee.clone(),
            reason: *reason,
            custom_data: None,
        },
        LogEvent::CallEnded { call, reason } => Event::CallEnded {
            call_id: call.clone(),
            reason: *reason,
            custom_data: None,
        },
        LogEvent::WithData(inner) => {
            let (event, data) = &**inner;
            let mut event = render(calls, user, event, now);
            if let Event::IncomingEnded { custom_data, .. }
            | Event::CalleeOutcome { custom_data, .. }
            | Event::CallEnded { custom_data, .. } = &mut event
            {
                *custom_data = Some(data.clone());
            }
            event
        }
        LogEvent::CalleeDelivered(inner) => {
            let (call, callee, device) = &**inner;
            Event::CalleeDelivered {
                call_id: call.clone(),
                callee: callee.clone(),
                device: device.clone(),
            }
        }
        LogEvent::ParticipantJoined(joined) => Event::ParticipantJoined {
            call_id: joined.0.clone(),
            user: joined.1.clone(),
            device: joined.2.clone(),
        },
        LogEvent::ParticipantLeft { call, user, reason } => Event::ParticipantLeft {
            call_id: call.clone(),
            user: user.clone(),
            reason: *reason,
        },
    }
}
