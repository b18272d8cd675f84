//! This device's view of each call, and how server events, confirmed
//! commands and the fallback ring timer change it.

use std::time::{Duration, Instant};

use crate::id::{CallId, DeviceId, UserId};
use crate::model::{CustomData, Reason, User};
use crate::protocol::{ClientBody, Command, Event, ReplyResult};

use super::{AppEvent, ClientSession, TimerKey};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Local {
    /// Callee: ringing on this device.
    Ringing,
    /// Callee: known but not ringing here (too little time left).
    Silent,
    /// Callee: in the call (accepted here, or through glare).
    InCall,
    /// Caller: this device invited.
    Outgoing,
    /// Caller: another device of this user invited.
    OutgoingElsewhere,
}

#[derive(Debug, Clone)]
pub(super) struct LocalCall {
    pub(super) state: Local,
    pub(super) caller: User,
    pub(super) custom_data: Option<CustomData>,
    /// Caller side: each callee and its outcome once known.
    pub(super) outcomes: Vec<(UserId, Option<Reason>)>,
    pub(super) accept_fired: bool,
    pub(super) decline_fired: bool,
    pub(super) cancel_fired: bool,
}

impl LocalCall {
    pub(super) fn new(state: Local, caller: User, custom_data: Option<CustomData>) -> Self {
        Self {
            state,
            caller,
            custom_data,
            outcomes: Vec::new(),
            accept_fired: false,
            decline_fired: false,
            cancel_fired: false,
        }
    }
}

impl ClientSession {
    /// The local fallback of `call_id` fired: the server never ended its
    /// ring (the link is likely down), so end it here.
    pub(super) fn fire_fallback(&mut self, call_id: &CallId) {
        let Some(call) = self.calls.get(call_id) else {
            return;
        };
        match call.state {
            Local::Ringing => {
                let caller = call.caller.clone();
                self.events.push_back(AppEvent::IncomingCallTimeout {
                    call_id: call_id.clone(),
                    caller,
                });
                self.finish(call_id);
            }
            Local::Outgoing => {
                let data = call.custom_data.clone();
                let silent: Vec<UserId> = call
                    .outcomes
                    .iter()
                    .filter(|(_, r)| r.is_none())
                    .map(|(u, _)| u.clone())
                    .collect();
                for callee in silent {
                    self.events.push_back(AppEvent::OutgoingCallTimeout {
                        call_id: call_id.clone(),
                        callee,
                        custom_data: data.clone(),
                    });
                }
                self.finish(call_id);
            }
            _ => {}
        }
    }

    /// Arms (or moves) the local fallback ring timer of a known call.
    pub(super) fn arm_fallback(&mut self, call_id: &CallId, at: Instant) {
        if self.calls.contains_key(call_id) {
            self.arm_timer(TimerKey::Fallback(call_id.clone()), at);
        }
    }

    /// The call is over on this device: forget it, remember its id.
    pub(super) fn finish(&mut self, call_id: &CallId) {
        if self.calls.remove(call_id).is_some() {
            self.timers.disarm(&TimerKey::Fallback(call_id.clone()));
        }
        if self.ended.insert(call_id.clone()) {
            self.ended_order.push_back(call_id.clone());
            while self.ended_order.len() > self.config.remembered_calls {
                if let Some(old) = self.ended_order.pop_front() {
                    self.ended.remove(&old);
                }
            }
        }
    }

    pub(super) fn should_ring(&self, remaining: Duration, total: Duration) -> bool {
        remaining >= self.config.min_ring_left.min(total / 2) && !remaining.is_zero()
    }

    pub(super) fn on_success(&mut self, now: Instant, command: &ClientBody, result: &ReplyResult) {
        let ClientBody::Command(command) = command else {
            return; // renew: nothing to apply
        };
        match (command, result) {
            (
                Command::Invite(req),
                ReplyResult::Invited {
                    call_id,
                    ring_remaining_ms,
                    callees,
                },
            ) => {
                if self.ended.contains(call_id) {
                    return;
                }
                let me = User {
                    id: self.user.clone(),
                    name: "".into(),
                };
                let call = self.calls.entry(call_id.clone()).or_insert_with(|| {
                    LocalCall::new(Local::Outgoing, me, req.custom_data.clone())
                });
                call.state = Local::Outgoing;
                for c in callees {
                    if !call.outcomes.iter().any(|(u, _)| u == &c.user) {
                        call.outcomes.push((c.user.clone(), None));
                    }
                }
                let at =
                    now + Duration::from_millis(*ring_remaining_ms) + self.config.fallback_margin;
                self.arm_fallback(call_id, at);
            }
            (Command::Invite(_), ReplyResult::Joined { call_id, caller })
                if !self.ended.contains(call_id) =>
            {
                self.calls
                    .entry(call_id.clone())
                    .or_insert_with(|| LocalCall::new(Local::Silent, caller.clone(), None));
                self.mark_joined(call_id, caller);
            }
            (Command::Accept { call_id }, _) => self.mark_accepted(call_id),
            (Command::Decline { call_id, busy }, _) => self.mark_declined(call_id, *busy),
            (Command::Cancel { call_id }, _) => {
                let fire = match self.calls.get_mut(call_id) {
                    Some(call) => !std::mem::replace(&mut call.cancel_fired, true),
                    // Confirmed for a call this device never knew live (it
                    // had already ended): fire once, then remember it as
                    // finished so a repeated cancel does not fire again.
                    None => {
                        let first = !self.ended.contains(call_id);
                        self.finish(call_id);
                        first
                    }
                };
                if fire {
                    self.events
                        .push_back(AppEvent::OutgoingCallCancelButtonPressed {
                            call_id: call_id.clone(),
                        });
                }
            }
            _ => {}
        }
    }

    /// Glare: our invite became the acceptance of `caller`'s call. The app
    /// sees its outgoing call accepted, once, whichever of the reply and the
    /// event arrives first.
    pub(super) fn mark_joined(&mut self, call_id: &CallId, caller: &User) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        call.state = Local::InCall;
        self.timers.disarm(&TimerKey::Fallback(call_id.clone()));
        if !std::mem::replace(&mut call.accept_fired, true) {
            self.events.push_back(AppEvent::OutgoingCallAccepted {
                call_id: call_id.clone(),
                callee: caller.id.clone(),
            });
        }
    }

    pub(super) fn mark_accepted(&mut self, call_id: &CallId) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        call.state = Local::InCall;
        self.timers.disarm(&TimerKey::Fallback(call_id.clone()));
        if !std::mem::replace(&mut call.accept_fired, true) {
            self.events
                .push_back(AppEvent::IncomingCallAcceptButtonPressed {
                    call_id: call_id.clone(),
                });
        }
    }

    pub(super) fn mark_declined(&mut self, call_id: &CallId, busy: bool) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        if !std::mem::replace(&mut call.decline_fired, true) {
            self.events
                .push_back(AppEvent::IncomingCallDeclineButtonPressed {
                    call_id: call_id.clone(),
                    busy,
                });
        }
        self.finish(call_id);
    }

    pub(super) fn apply(&mut self, now: Instant, event: Event) {
        let call_id = event.call_id().clone();
        if self.ended.contains(&call_id) {
            return; // late news about a call this device finished
        }
        match event {
            Event::IncomingCall {
                call_id,
                caller,
                call_type,
                callees,
                custom_data,
                ring_remaining_ms,
                ring_timeout_ms,
            } => {
                if self.calls.contains_key(&call_id) {
                    return;
                }
                let remaining = Duration::from_millis(ring_remaining_ms);
                let ring = self.should_ring(remaining, Duration::from_millis(ring_timeout_ms));
                let state = if ring { Local::Ringing } else { Local::Silent };
                self.calls.insert(
                    call_id.clone(),
                    LocalCall::new(state, caller.clone(), custom_data.clone()),
                );
                if ring {
                    self.arm_fallback(&call_id, now + remaining + self.config.fallback_margin);
                    self.events.push_back(AppEvent::IncomingCallReceived {
                        call_id,
                        caller,
                        call_type,
                        callees,
                        custom_data,
                        ring_remaining: remaining,
                    });
                }
            }
            Event::IncomingEnded {
                call_id,
                reason,
                device,
            } => self.incoming_ended(&call_id, reason, device),
            Event::OutgoingCall {
                call_id,
                device,
                callees,
                custom_data,
                ring_remaining_ms,
                ..
            } => {
                if self.calls.contains_key(&call_id) || self.disowned.contains(&call_id) {
                    return;
                }
                let mine = device == self.device;
                if mine && !self.ended.contains(&call_id) && self.is_abandoned_invite(&callees) {
                    return self.disown(now, call_id, false);
                }
                let me = User {
                    id: self.user.clone(),
                    name: "".into(),
                };
                let state = if mine {
                    Local::Outgoing
                } else {
                    Local::OutgoingElsewhere
                };
                let mut call = LocalCall::new(state, me, custom_data);
                call.outcomes = callees.iter().map(|u| (u.id.clone(), None)).collect();
                self.calls.insert(call_id.clone(), call);
                if mine {
                    let at = now
                        + Duration::from_millis(ring_remaining_ms)
                        + self.config.fallback_margin;
                    self.arm_fallback(&call_id, at);
                } else {
                    self.events.push_back(AppEvent::OutgoingCallStarted {
                        call_id,
                        device,
                        callees,
                    });
                }
            }
            Event::CalleeRinging { call_id, callee } => {
                if self.calls.contains_key(&call_id) {
                    self.events
                        .push_back(AppEvent::CalleeRinging { call_id, callee });
                }
            }
            Event::CalleeOutcome {
                call_id,
                callee,
                reason,
            } => self.callee_outcome(&call_id, callee, reason),
            Event::CallEnded { call_id, reason } => {
                if self.calls.contains_key(&call_id) {
                    self.finish(&call_id);
                    self.events
                        .push_back(AppEvent::CallEnded { call_id, reason });
                }
            }
        }
    }

    pub(super) fn incoming_ended(
        &mut self,
        call_id: &CallId,
        reason: Reason,
        device: Option<DeviceId>,
    ) {
        let Some(call) = self.calls.get(call_id) else {
            // Ended before it ever arrived (reordered): never ring for it.
            self.finish(call_id);
            return;
        };
        let mine = device.as_ref() == Some(&self.device);
        let rang = call.state == Local::Ringing;
        let (caller, data) = (call.caller.clone(), call.custom_data.clone());
        match reason {
            Reason::Accepted if mine => {
                if self.glare_invite_pending(&caller.id) {
                    self.mark_joined(call_id, &caller);
                } else {
                    self.mark_accepted(call_id);
                }
                return;
            }
            Reason::Declined | Reason::Busy if mine => {
                self.mark_declined(call_id, reason == Reason::Busy);
                return;
            }
            Reason::Accepted => {
                if call.state == Local::InCall {
                    return; // glare: our own invite accepted it
                }
                self.events.push_back(AppEvent::AnsweredElsewhere {
                    call_id: call_id.clone(),
                    device: device.clone(),
                });
                if rang {
                    self.events.push_back(AppEvent::IncomingCallCanceled {
                        call_id: call_id.clone(),
                        caller,
                        custom_data: data,
                        reason: Reason::AnsweredElsewhere,
                    });
                }
            }
            Reason::Declined | Reason::Busy => {
                self.events.push_back(AppEvent::DeclinedElsewhere {
                    call_id: call_id.clone(),
                    device: device.clone(),
                });
                if rang {
                    self.events.push_back(AppEvent::IncomingCallCanceled {
                        call_id: call_id.clone(),
                        caller,
                        custom_data: data,
                        reason: Reason::DeclinedElsewhere,
                    });
                }
            }
            Reason::Timeout => {
                if rang {
                    self.events.push_back(AppEvent::IncomingCallTimeout {
                        call_id: call_id.clone(),
                        caller,
                    });
                }
            }
            other => {
                if rang {
                    self.events.push_back(AppEvent::IncomingCallCanceled {
                        call_id: call_id.clone(),
                        caller,
                        custom_data: data,
                        reason: other,
                    });
                }
            }
        }
        self.finish(call_id);
    }

    pub(super) fn callee_outcome(&mut self, call_id: &CallId, callee: UserId, reason: Reason) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        match call.outcomes.iter_mut().find(|(u, _)| u == &callee) {
            Some((_, slot @ None)) => *slot = Some(reason),
            Some((_, Some(_))) => return, // already known: never twice
            None => call.outcomes.push((callee.clone(), Some(reason))),
        }
        let data = call.custom_data.clone();
        let call_id = call_id.clone();
        let event = if call.state != Local::Outgoing {
            AppEvent::CalleeOutcome {
                call_id,
                callee,
                reason,
            }
        } else {
            match reason {
                Reason::Accepted => AppEvent::OutgoingCallAccepted { call_id, callee },
                Reason::Declined => AppEvent::OutgoingCallDeclined { call_id, callee },
                Reason::Busy => AppEvent::OutgoingCallRejectedCauseBusy {
                    call_id,
                    callee,
                    custom_data: data,
                },
                Reason::Timeout => AppEvent::OutgoingCallTimeout {
                    call_id,
                    callee,
                    custom_data: data,
                },
                other => AppEvent::CalleeOutcome {
                    call_id,
                    callee,
                    reason: other,
                },
            }
        };
        if let Some(call) = self.calls.get_mut(event.call_id().expect("has one")) {
            if call.outcomes.iter().all(|(_, r)| r.is_some()) {
                let call_id = event.call_id().expect("has one").clone();
                self.timers.disarm(&TimerKey::Fallback(call_id));
            }
        }
        self.events.push_back(event);
    }
}
