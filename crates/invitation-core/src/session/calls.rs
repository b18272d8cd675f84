//! This device's view of each call, and how server events, confirmed
//! commands and the fallback ring timer change it.

use std::time::{Duration, Instant};

use crate::id::{CallId, DeviceId, UserId};
use crate::model::{CustomData, Reason, User};
use crate::protocol::{ClientBody, ClientMessage, Command, Event, InitialStatus, ReplyResult};

use super::{AppEvent, ClientSession, TimerKey};

/// Each callee of a caller-side call, with its outcome once known.
pub(super) type Outcomes = Vec<(UserId, Option<Reason>)>;

/// Where a call stands on this device.
///
/// ```text
/// callee side
///                      ┌─ enough ring left ──> Ringing ─┐  accepted here, or our
///   incoming_call ─────┤                                ├─ invite joined it ──> InCall
///   (event or sync)    └─ too little left ───> Silent ──┘  (glare)
///
/// caller side
///   our invite answered, or outgoing_call from this device ──> Outgoing { mine: true }
///   outgoing_call from another device of this user ──────────> Outgoing { mine: false }
///
/// any state ── ended, declined here, fallback fired, gone from a sync ──> removed
///              (its id is remembered, so late news about it is dropped)
/// ```
///
/// The accept callback fires on the way into `InCall` and never again; the
/// decline callback fires as the call is removed; a fallback ring timer is
/// armed only for `Ringing` and for `Outgoing { mine }` until every callee
/// answered.
#[derive(Debug, Clone)]
pub(super) enum Local {
    /// Callee: ringing on this device.
    Ringing,
    /// Callee: known but not ringing here (too little time left).
    Silent,
    /// In the call: accepted here, or our invite joined it through glare.
    InCall,
    /// Caller: this user started the call.
    Outgoing {
        /// This device invited (else another device of this user did).
        mine: bool,
        /// Each callee and its outcome once known.
        outcomes: Outcomes,
        /// The server confirmed a cancel from this device (its callback
        /// fired; a repeated cancel fires nothing).
        cancel_confirmed: bool,
        /// Callee devices that confirmed receipt (each reported once).
        delivered: Vec<(UserId, DeviceId)>,
    },
}

impl Local {
    /// A caller-side call to these callees, none answered yet.
    pub(super) fn outgoing(mine: bool, callees: impl IntoIterator<Item = UserId>) -> Self {
        Self::Outgoing {
            mine,
            outcomes: callees.into_iter().map(|u| (u, None)).collect(),
            cancel_confirmed: false,
            delivered: Vec::new(),
        }
    }
}

/// One call as this device sees it.
#[derive(Debug, Clone)]
pub(super) struct LocalCall {
    pub(super) state: Local,
    /// Who calls (this user, for a caller-side call).
    pub(super) caller: User,
    /// The caller's data.
    pub(super) custom_data: Option<CustomData>,
}

impl LocalCall {
    pub(super) fn new(state: Local, caller: User, custom_data: Option<CustomData>) -> Self {
        Self {
            state,
            caller,
            custom_data,
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
        match &call.state {
            Local::Ringing => {
                let caller = call.caller.clone();
                self.events.push_back(AppEvent::IncomingCallTimeout {
                    call_id: call_id.clone(),
                    caller,
                });
                self.finish(call_id);
            }
            Local::Outgoing {
                mine: true,
                outcomes,
                ..
            } => {
                let data = call.custom_data.clone();
                let silent: Vec<UserId> = outcomes
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
                    LocalCall::new(Local::outgoing(true, []), me, req.custom_data.clone())
                });
                // Our invite's call: this device's, keeping what an earlier
                // `outgoing_call` event told of it.
                let (mut outcomes, cancel_confirmed, delivered) =
                    match std::mem::replace(&mut call.state, Local::Silent) {
                        Local::Outgoing {
                            outcomes,
                            cancel_confirmed,
                            delivered,
                            ..
                        } => (outcomes, cancel_confirmed, delivered),
                        _ => (Outcomes::new(), false, Vec::new()),
                    };
                for c in callees {
                    if !outcomes.iter().any(|(u, _)| u == &c.user) {
                        outcomes.push((c.user.clone(), None));
                    }
                }
                call.state = Local::Outgoing {
                    mine: true,
                    outcomes,
                    cancel_confirmed,
                    delivered,
                };
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
            (Command::Accept { call_id, .. }, _) => self.mark_accepted(call_id),
            (Command::Join { call_id }, _) => {
                if self.is_ringing(call_id)
                    || matches!(
                        self.calls.get(call_id).map(|c| &c.state),
                        Some(Local::Silent)
                    )
                {
                    self.mark_accepted(call_id); // a join of a ringing call is an accept
                } else {
                    self.reopen_in_call(call_id);
                }
            }
            (
                Command::Add { call_id, .. },
                ReplyResult::Invited {
                    ring_remaining_ms,
                    callees,
                    ..
                },
            ) => {
                // Our own call grew: the added callees' outcomes are news
                // again, and the ring fallback covers them.
                let Some(call) = self.calls.get_mut(call_id) else {
                    return;
                };
                let Local::Outgoing {
                    mine: true,
                    outcomes,
                    ..
                } = &mut call.state
                else {
                    return;
                };
                let mut rings = false;
                for c in callees {
                    let ringing =
                        matches!(c.status, InitialStatus::Ringing | InitialStatus::Offline);
                    rings |= ringing;
                    match outcomes.iter_mut().find(|(u, _)| u == &c.user) {
                        Some((_, r)) if ringing => *r = None,
                        Some(_) => {}
                        // A glare join needs no outcome: it is in the call.
                        None => outcomes.push((
                            c.user.clone(),
                            (c.status == InitialStatus::Joined).then_some(Reason::Accepted),
                        )),
                    }
                }
                if rings {
                    let at = now
                        + Duration::from_millis(*ring_remaining_ms)
                        + self.config.fallback_margin;
                    self.arm_fallback(call_id, at);
                }
            }
            (Command::Decline { call_id, busy, .. }, _) => self.mark_declined(call_id, *busy),
            (Command::Cancel { call_id, .. }, _) => {
                let fire = match self.calls.get_mut(call_id).map(|c| &mut c.state) {
                    Some(Local::Outgoing {
                        cancel_confirmed, ..
                    }) => !std::mem::replace(cancel_confirmed, true),
                    // Only the caller can cancel: the server confirms no
                    // cancel of a call this device is a callee of.
                    Some(_) => false,
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
        let joined_now = !matches!(
            std::mem::replace(&mut call.state, Local::InCall),
            Local::InCall
        );
        self.timers.disarm(&TimerKey::Fallback(call_id.clone()));
        if joined_now {
            self.events.push_back(AppEvent::OutgoingCallAccepted {
                call_id: call_id.clone(),
                callee: caller.id.clone(),
                custom_data: None,
            });
        }
    }

    pub(super) fn mark_accepted(&mut self, call_id: &CallId) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let accepted_now = !matches!(
            std::mem::replace(&mut call.state, Local::InCall),
            Local::InCall
        );
        self.timers.disarm(&TimerKey::Fallback(call_id.clone()));
        if accepted_now {
            self.events
                .push_back(AppEvent::IncomingCallAcceptButtonPressed {
                    call_id: call_id.clone(),
                });
        }
    }

    pub(super) fn mark_declined(&mut self, call_id: &CallId, busy: bool) {
        if !self.calls.contains_key(call_id) {
            return;
        }
        // Fires once: the call is gone right after.
        self.events
            .push_back(AppEvent::IncomingCallDeclineButtonPressed {
                call_id: call_id.clone(),
                busy,
            });
        self.finish(call_id);
    }

    pub(super) fn apply(&mut self, now: Instant, event: Event) {
        let call_id = event.call_id().clone();
        if let Event::ParticipantJoined { user, device, .. } = &event
            && user == &self.user
        {
            // Our own join: news even for a call this device finished.
            let (user, device) = (user.clone(), device.clone());
            return self.joined_self(&call_id, user, device);
        }
        if let Event::IncomingCall {
            ring_remaining_ms, ..
        } = &event
            && *ring_remaining_ms > 0
            && !self.calls.contains_key(&call_id)
        {
            // Events come in order, and a ring is rendered with the time it
            // has left when sent: after this call ended here, a live ring of
            // it is a new one (a participant added us to it again).
            self.unend(&call_id);
        }
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
                    self.send_receipt(&call_id);
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
                custom_data,
            } => self.incoming_ended(&call_id, reason, device, custom_data),
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
                let state = Local::outgoing(mine, callees.iter().map(|u| u.id.clone()));
                self.calls
                    .insert(call_id.clone(), LocalCall::new(state, me, custom_data));
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
                custom_data,
            } => self.callee_outcome(&call_id, callee, reason, custom_data),
            Event::CallEnded {
                call_id,
                reason,
                custom_data,
            } => {
                if self.calls.contains_key(&call_id) {
                    self.finish(&call_id);
                    self.events.push_back(AppEvent::CallEnded {
                        call_id,
                        reason,
                        custom_data,
                    });
                }
            }
            Event::CalleeDelivered {
                call_id,
                callee,
                device,
            } => self.callee_delivered(&call_id, callee, device),
            Event::ParticipantJoined {
                call_id,
                user,
                device,
            } => {
                if self.calls.contains_key(&call_id) {
                    self.events.push_back(AppEvent::ParticipantJoined {
                        call_id,
                        user,
                        device,
                    });
                }
            }
            Event::ParticipantLeft {
                call_id,
                user,
                reason,
            } => {
                if self.calls.contains_key(&call_id) {
                    self.events.push_back(AppEvent::ParticipantLeft {
                        call_id,
                        user,
                        reason,
                    });
                }
            }
        }
    }

    /// Acknowledges an invitation that rings here (unless switched off):
    /// a `received` receipt, sent once and never answered, so it is not a
    /// pending command. Sent only on a live link: events arrive on one.
    fn send_receipt(&mut self, call_id: &CallId) {
        if self.config.send_receipts && self.connected {
            let id = self.fresh_request_id();
            let receipt = Command::Received {
                call_id: call_id.clone(),
            };
            self.transmit.push_back(ClientMessage::new(id, receipt));
        }
    }

    /// A callee device confirmed receipt of a caller-side call: reported
    /// once per callee device.
    pub(super) fn callee_delivered(&mut self, call_id: &CallId, callee: UserId, device: DeviceId) {
        let Some(LocalCall {
            state: Local::Outgoing { delivered, .. },
            ..
        }) = self.calls.get_mut(call_id)
        else {
            return;
        };
        if delivered.iter().any(|(u, d)| *u == callee && *d == device) {
            return;
        }
        delivered.push((callee.clone(), device.clone()));
        self.events.push_back(AppEvent::CalleeDelivered {
            call_id: call_id.clone(),
            callee,
            device,
        });
    }

    /// This user joined `call_id` on `device`: this device is now in the
    /// call (it is live here again, even if it had finished), or another
    /// device of this user is ("joined elsewhere": nothing changes here).
    pub(super) fn joined_self(&mut self, call_id: &CallId, user: UserId, device: DeviceId) {
        // Joined elsewhere: reported, never tracked here (a user is in a
        // call on one device at a time, so this one is not in it).
        if device == self.device {
            self.reopen_in_call(call_id);
        }
        self.events.push_back(AppEvent::ParticipantJoined {
            call_id: call_id.clone(),
            user,
            device,
        });
    }

    /// `call_id` is live on this device again: no longer remembered as
    /// finished.
    fn unend(&mut self, call_id: &CallId) {
        if self.ended.remove(call_id) {
            self.ended_order.retain(|c| c != call_id);
        }
    }

    /// This device is in `call_id` (a confirmed join): live again if it
    /// had finished, in the call, no ring fallback.
    pub(super) fn reopen_in_call(&mut self, call_id: &CallId) {
        self.unend(call_id);
        let me = User {
            id: self.user.clone(),
            name: "".into(),
        };
        let call = self
            .calls
            .entry(call_id.clone())
            .or_insert_with(|| LocalCall::new(Local::InCall, me, None));
        if !matches!(call.state, Local::Outgoing { .. }) {
            call.state = Local::InCall;
        }
        self.timers.disarm(&TimerKey::Fallback(call_id.clone()));
    }

    pub(super) fn incoming_ended(
        &mut self,
        call_id: &CallId,
        reason: Reason,
        device: Option<DeviceId>,
        data: Option<CustomData>,
    ) {
        let Some(call) = self.calls.get(call_id) else {
            // Ended before it ever arrived (reordered): never ring for it.
            self.finish(call_id);
            return;
        };
        let mine = device.as_ref() == Some(&self.device);
        let rang = matches!(call.state, Local::Ringing);
        let caller = call.caller.clone();
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
            _ => {}
        }
        // Another device of this user answered, or the call ended without
        // an answer: this device stops ringing, with the reason it sees.
        let seen = match reason {
            Reason::Accepted if matches!(call.state, Local::InCall) => {
                return; // glare: our own invite accepted it
            }
            Reason::Accepted => {
                self.events.push_back(AppEvent::AnsweredElsewhere {
                    call_id: call_id.clone(),
                    device: device.clone(),
                    custom_data: data.clone(),
                });
                Reason::AnsweredElsewhere
            }
            Reason::Declined | Reason::Busy => {
                self.events.push_back(AppEvent::DeclinedElsewhere {
                    call_id: call_id.clone(),
                    device: device.clone(),
                    custom_data: data.clone(),
                });
                Reason::DeclinedElsewhere
            }
            other => other,
        };
        if rang {
            self.events.push_back(if seen == Reason::Timeout {
                AppEvent::IncomingCallTimeout {
                    call_id: call_id.clone(),
                    caller,
                }
            } else {
                AppEvent::IncomingCallCanceled {
                    call_id: call_id.clone(),
                    caller,
                    custom_data: data,
                    reason: seen,
                }
            });
        }
        self.finish(call_id);
    }

    /// The outcome of one callee of a caller-side call, reported once.
    /// (Outcomes are the caller's business: the server reports none for a
    /// call this device is a callee of, and such a report is ignored.)
    pub(super) fn callee_outcome(
        &mut self,
        call_id: &CallId,
        callee: UserId,
        reason: Reason,
        answer: Option<CustomData>,
    ) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        let Local::Outgoing { mine, outcomes, .. } = &mut call.state else {
            if matches!(call.state, Local::InCall) && reason != Reason::Accepted {
                // In a call that grew: how an invitee's ring ended.
                self.events.push_back(AppEvent::CalleeOutcome {
                    call_id: call_id.clone(),
                    callee,
                    reason,
                    custom_data: answer,
                });
            }
            return;
        };
        match outcomes.iter_mut().find(|(u, _)| u == &callee) {
            Some((_, slot @ None)) => *slot = Some(reason),
            Some((_, Some(_))) => return, // already known: never twice
            None => outcomes.push((callee.clone(), Some(reason))),
        }
        if outcomes.iter().all(|(_, r)| r.is_some()) {
            // Every callee answered: nothing left for the fallback to end.
            self.timers.disarm(&TimerKey::Fallback(call_id.clone()));
        }
        let data = call.custom_data.clone();
        let call_id = call_id.clone();
        let event = if !*mine {
            AppEvent::CalleeOutcome {
                call_id,
                callee,
                reason,
                custom_data: answer,
            }
        } else {
            match reason {
                Reason::Accepted => AppEvent::OutgoingCallAccepted {
                    call_id,
                    callee,
                    custom_data: answer,
                },
                Reason::Declined => AppEvent::OutgoingCallDeclined {
                    call_id,
                    callee,
                    custom_data: answer,
                },
                Reason::Busy => AppEvent::OutgoingCallRejectedCauseBusy {
                    call_id,
                    callee,
                    custom_data: answer,
                },
                // The wire carries no data with a timeout: the app gets its
                // own invite's back, as the origin's callback does.
                Reason::Timeout => AppEvent::OutgoingCallTimeout {
                    call_id,
                    callee,
                    custom_data: data,
                },
                other => AppEvent::CalleeOutcome {
                    call_id,
                    callee,
                    reason: other,
                    custom_data: answer,
                },
            }
        };
        self.events.push_back(event);
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use crate::model::CallType;
    use crate::protocol::{ServerBody, ServerMessage};

    use super::*;
    use crate::session::SessionConfig;

    fn session(t0: Instant) -> ClientSession {
        let mut s = ClientSession::new(
            UserId::new("bob").unwrap(),
            DeviceId::new("phone").unwrap(),
            "t",
            SessionConfig::default(),
        );
        s.handle_connected(t0, None);
        s.handle_message(
            t0,
            ServerMessage::new(ServerBody::Welcome {
                re: None,
                user: User::named("bob", "Bob"),
                device: DeviceId::new("phone").unwrap(),
                seq: 0,
                resumed: true,
            }),
        );
        while s.poll_transmit().is_some() {}
        while s.poll_event().is_some() {}
        s
    }

    fn event(s: &mut ClientSession, now: Instant, seq: u64, event: Event) {
        s.handle_message(now, ServerMessage::new(ServerBody::event(seq, event)));
    }

    fn events(s: &mut ClientSession) -> Vec<AppEvent> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    /// A callee-side call has no callee outcomes: a stray caller-side report
    /// about it neither reaches the app nor stops its ring's fallback.
    #[test]
    fn a_ringing_call_ignores_callee_outcomes_and_keeps_its_fallback() {
        #[allow(clippy::disallowed_methods)] // the origin of test time
        let t0 = Instant::now();
        let mut s = session(t0);
        let call_id = CallId::new("c1").unwrap();
        let ring = Event::IncomingCall {
            call_id: call_id.clone(),
            caller: User::named("alice", "Alice"),
            call_type: CallType::Voice,
            callees: vec![User::named("bob", "Bob")].into(),
            custom_data: None,
            ring_remaining_ms: 30_000,
            ring_timeout_ms: 30_000,
        };
        event(&mut s, t0, 1, ring);
        assert!(matches!(
            events(&mut s)[..],
            [AppEvent::IncomingCallReceived { .. }]
        ));
        let fallback = t0 + Duration::from_secs(35);
        assert_eq!(s.poll_timeout(), Some(fallback));
        let stray = Event::CalleeOutcome {
            call_id: call_id.clone(),
            callee: UserId::new("carol").unwrap(),
            reason: Reason::Declined,
            custom_data: None,
        };
        event(&mut s, t0, 2, stray);
        assert_eq!(events(&mut s), []);
        assert_eq!(s.poll_timeout(), Some(fallback), "the fallback still runs");
        s.handle_timeout(fallback);
        assert!(matches!(
            events(&mut s)[..],
            [AppEvent::IncomingCallTimeout { .. }]
        ));
        assert!(!s.is_ringing(&call_id));
    }

    /// A call this device finished rings again when the server rings it
    /// again (a participant added us once more), whether the news comes as
    /// an event or in a snapshot; a stale ring (no time left) does not.
    #[test]
    fn a_second_ring_of_a_finished_call_rings_again() {
        #[allow(clippy::disallowed_methods)] // the origin of test time
        let t0 = Instant::now();
        let mut s = session(t0);
        let call_id = CallId::new("c1").unwrap();
        let ring = |ms| Event::IncomingCall {
            call_id: call_id.clone(),
            caller: User::named("alice", "Alice"),
            call_type: CallType::Voice,
            callees: vec![User::named("bob", "Bob")].into(),
            custom_data: None,
            ring_remaining_ms: ms,
            ring_timeout_ms: 30_000,
        };
        let ended = || Event::IncomingEnded {
            call_id: call_id.clone(),
            reason: Reason::Timeout,
            device: None,
            custom_data: None,
        };
        event(&mut s, t0, 1, ring(30_000));
        event(&mut s, t0, 2, ended());
        event(&mut s, t0, 3, ring(0)); // a replay of history: silent
        assert!(!s.is_ringing(&call_id));
        event(&mut s, t0, 4, ring(30_000));
        assert!(s.is_ringing(&call_id));
        event(&mut s, t0, 5, ended());
        let snapshot = crate::protocol::CallSnapshot {
            call_id: call_id.clone(),
            role: crate::protocol::Role::Callee,
            caller: User::named("alice", "Alice"),
            caller_device: DeviceId::new("phone").unwrap(),
            call_type: CallType::Voice,
            callees: vec![User::named("bob", "Bob")].into(),
            custom_data: None,
            state: crate::protocol::SnapshotState::Ringing,
            ring_remaining_ms: 20_000,
            ring_timeout_ms: 30_000,
            device: None,
            outcomes: Vec::new(),
            participants: Vec::new(),
            delivered: Vec::new(),
        };
        s.handle_message(
            t0,
            ServerMessage::new(ServerBody::Sync(crate::protocol::SyncBody::new(
                None,
                6,
                vec![snapshot],
                Vec::new(),
            ))),
        );
        assert!(s.is_ringing(&call_id));
        let rings: Vec<Duration> = events(&mut s)
            .into_iter()
            .filter_map(|e| match e {
                AppEvent::IncomingCallReceived { ring_remaining, .. } => Some(ring_remaining),
                _ => None,
            })
            .collect();
        assert_eq!(
            rings,
            [
                Duration::from_secs(30),
                Duration::from_secs(30),
                Duration::from_secs(20)
            ]
        );
    }

    /// The cancel callback fires once per outgoing call, however many
    /// cancels the server confirms before the call's end arrives.
    #[test]
    fn a_confirmed_cancel_fires_once() {
        #[allow(clippy::disallowed_methods)] // the origin of test time
        let t0 = Instant::now();
        let mut s = session(t0);
        let call_id = CallId::new("c1").unwrap();
        let started = Event::OutgoingCall {
            call_id: call_id.clone(),
            device: DeviceId::new("phone").unwrap(),
            call_type: CallType::Voice,
            callees: vec![User::named("alice", "Alice")].into(),
            custom_data: None,
            ring_remaining_ms: 30_000,
        };
        event(&mut s, t0, 1, started);
        for _ in 0..2 {
            let id = s.command(
                t0,
                Command::Cancel {
                    call_id: call_id.clone(),
                    custom_data: None,
                },
            );
            s.handle_message(
                t0,
                ServerMessage::new(ServerBody::Reply {
                    re: id,
                    result: ReplyResult::Done,
                }),
            );
        }
        assert_eq!(
            events(&mut s),
            [AppEvent::OutgoingCallCancelButtonPressed { call_id }]
        );
    }
}
