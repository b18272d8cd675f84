//! Calls that grow and shrink: adding callees to a running call, joining it
//! late, leaving it while the others go on, and ending it for everyone.
//!
//! The rules (docs/state-machine.md has the diagram):
//! * once someone accepted, the call goes on while at least two are in it
//!   (the caller counts while they have not left; ringing invitees do
//!   not); when fewer remain, still-ringing invitees are canceled and the
//!   call ends;
//! * a participant adds callees with `add`; every slot ever made counts
//!   against the callee limit; added callees ring with their own deadline
//!   (now + the call's ring timeout);
//! * an invitee not in the call (ring ended, or left) may `join` while the
//!   call goes on; a user in another accepted call may not;
//! * `end` ends the call for everyone; who may is [`EndPolicy`].

use std::sync::Arc;
use std::time::Instant;

use super::call::{CallInfo, CallState, Presence, Slot};
use super::config::EndPolicy;
use super::render::duration_ms;
use super::timers::TimerKind;
use super::user::{LogEvent, UserEntry};
use super::{BusyPolicy, CallNotice, OfflinePolicy, Switchboard};
use crate::error::{CommandError, ValidationError};
use crate::id::{CallId, DeviceId, UserId};
use crate::model::{CustomData, Reason};
use crate::protocol::{CalleeStatus, InitialStatus, LeaveReason, ReplyResult, Role};

impl Switchboard {
    /// `user` (who is in the call, slot `i` for a callee) leaves. With at
    /// least two others still in it the call goes on: the leaver's devices
    /// get `call_ended{hung_up}` and the others `participant_left`.
    /// Otherwise the call ends as a 1:1 hang-up does (a caller leaving
    /// before anyone accepted cancels).
    pub(super) fn leave(
        &mut self,
        user: &UserId,
        role: Role,
        i: usize,
        call_id: &CallId,
        data: Option<CustomData>,
    ) {
        let now = self.now.expect("an input set the time");
        let call = self.calls.get_mut(call_id).expect("role found it");
        let goes_on = call.established() && call.present() > 2;
        let keep = self.config.recent_ended_per_user;
        match role {
            Role::Caller if !goes_on => {
                // Fewer than two would remain, or nobody accepted yet: the
                // call ends, as a 1:1 hang-up or a cancel always did.
                self.end_ringing_with(call_id, Reason::Canceled, data.clone());
                self.ending_data = data;
                self.end_call(now, call_id, None);
                return;
            }
            Role::Caller => match &mut call.state {
                CallState::Ringing { caller } => {
                    if let Presence::Away(at) = *caller {
                        self.timers.remove(at, TimerKind::CallerGone, call_id);
                    }
                    *caller = Presence::Left;
                }
                CallState::InProgress { caller_in } => *caller_in = false,
                CallState::Ended(_) => return, // `hang_up` answered it already
            },
            Role::Callee => {
                if let Slot::Accepted { in_call, .. } = &mut call.slots[i] {
                    *in_call = false;
                }
            }
        }
        let others = self.calls[call_id].present_except(user);
        self.pending.push((
            user.clone(),
            LogEvent::CallEnded {
                call: call_id.clone(),
                reason: Reason::HungUp,
            }
            .with_data(data.clone()),
        ));
        if let Some(entry) = self.users.get_mut(user) {
            entry.end_call_with(call_id, Reason::HungUp, data.clone(), keep);
        }
        if goes_on {
            self.notices.push_back(CallNotice::Left {
                call_id: call_id.clone(),
                user: user.clone(),
            });
            for other in others {
                self.pending.push((
                    other,
                    LogEvent::ParticipantLeft {
                        call: call_id.clone(),
                        user: user.clone(),
                        reason: LeaveReason::Left,
                    },
                ));
            }
        }
        // If fewer than two remain, the call ends now: the others'
        // `call_ended` carries this hang-up's data.
        self.ending_data = data;
        self.settle(now, call_id);
    }

    /// Tells `others` (and, for a late join, the joiner's own devices)
    /// that `user` is now in the call on `device`.
    pub(super) fn announce_joined(
        &mut self,
        call_id: &CallId,
        user: &UserId,
        device: &DeviceId,
        others: Vec<UserId>,
    ) {
        self.notices.push_back(CallNotice::Joined {
            call_id: call_id.clone(),
            user: user.clone(),
        });
        for other in others {
            self.pending.push((
                other,
                LogEvent::ParticipantJoined(Box::new((
                    call_id.clone(),
                    user.clone(),
                    device.clone(),
                ))),
            ));
        }
    }

    /// `join`: an invitee enters a call that goes on, on `device`.
    pub(super) fn join(
        &mut self,
        user: &UserId,
        device: &DeviceId,
        call_id: &CallId,
    ) -> Result<ReplyResult, CommandError> {
        let (Role::Callee, i) = self.role(user, call_id)? else {
            return Err(CommandError::WrongRole);
        };
        let call = &self.calls[call_id];
        if let Some(reason) = call.ended() {
            return Err(CommandError::Ended { reason });
        }
        let slot = &call.slots[i];
        if slot.is_ringing() {
            return self.accept(user, device, call_id);
        }
        if let Slot::Accepted {
            device: d,
            in_call: true,
        } = slot
        {
            return if d == device {
                Ok(ReplyResult::Done) // joining twice is joining
            } else {
                Err(CommandError::Ended {
                    reason: Reason::AnsweredElsewhere,
                })
            };
        }
        if !call.established() {
            // Nobody is in it yet: there is nothing to join.
            let reason = slot.reason_seen_by(device).unwrap_or(Reason::Failed);
            return Err(CommandError::Ended { reason });
        }
        if self.is_busy_caller(user) {
            return Err(CommandError::CallerBusy);
        }
        let call = self.calls.get_mut(call_id).expect("role found it");
        call.slots[i] = Slot::Accepted {
            device: device.clone(),
            in_call: true,
        };
        let mut told = vec![user.clone()];
        told.extend(call.present_except(user));
        if let Some(entry) = self.users.get_mut(user) {
            entry.rejoin_call(call_id);
        }
        self.regrown_entry(call_id, user).joined_late += 1;
        self.announce_joined(call_id, user, device, told);
        Ok(ReplyResult::Done)
    }

    /// The re-ring and late-join counts of `user` in `call_id`.
    fn regrown_entry(&mut self, call_id: &CallId, user: &UserId) -> &mut super::Regrown {
        let list = self.regrown.entry(call_id.clone()).or_default();
        let i = match list.iter().position(|r| &r.user == user) {
            Some(i) => i,
            None => {
                list.push(super::Regrown {
                    user: user.clone(),
                    rung_again: 0,
                    joined_late: 0,
                    added: false,
                });
                list.len() - 1
            }
        };
        &mut list[i]
    }

    /// `end`: the call ends for everyone, if the end policy lets `user`.
    pub(super) fn end(
        &mut self,
        user: &UserId,
        call_id: &CallId,
    ) -> Result<ReplyResult, CommandError> {
        let (role, i) = self.role(user, call_id)?;
        let call = &self.calls[call_id];
        if let Some(reason) = call.ended() {
            return Err(CommandError::Ended { reason });
        }
        let present = match role {
            Role::Caller => call.caller_in(),
            Role::Callee => call.slots[i].in_call(),
        };
        let allowed = match self.config.end_policy {
            EndPolicy::CallerOnly => role == Role::Caller,
            EndPolicy::AnyParticipant => true,
        };
        if !present || !allowed {
            return Err(CommandError::WrongRole);
        }
        if call.established() {
            for other in call.present_except(user) {
                self.pending.push((
                    other,
                    LogEvent::ParticipantLeft {
                        call: call_id.clone(),
                        user: user.clone(),
                        reason: LeaveReason::EndedCall,
                    },
                ));
            }
        }
        let now = self.now.expect("an input set the time");
        self.end_ringing(call_id, Reason::Canceled);
        self.end_call(now, call_id, None);
        Ok(ReplyResult::Done)
    }

    /// `add`: a participant of an accepted call rings more users into it.
    pub(super) fn add(
        &mut self,
        now: Instant,
        user: &UserId,
        call_id: &CallId,
        requested: Vec<UserId>,
    ) -> Result<ReplyResult, CommandError> {
        let (role, i) = self.role(user, call_id)?;
        let call = &self.calls[call_id];
        if let Some(reason) = call.ended() {
            return Err(CommandError::Ended { reason });
        }
        let present = match role {
            Role::Caller => call.caller_in(),
            Role::Callee => call.slots[i].in_call(),
        };
        if !present || !call.established() {
            return Err(CommandError::WrongRole);
        }
        let mut callees: Vec<UserId> = Vec::with_capacity(requested.len());
        for c in requested {
            if !callees.contains(&c) {
                callees.push(c);
            }
        }
        let max = self.config.max_callees;
        if callees.is_empty() {
            return Err(ValidationError::CalleeCount { max, got: 0 }.into());
        }
        if callees.contains(user) {
            return Err(ValidationError::CallerAmongCallees.into());
        }
        if let Some(c) = callees.iter().find(|c| {
            *c == &call.info.caller.id
                || call
                    .slot_of(c)
                    .is_some_and(|j| call.slots[j].is_ringing() || call.slots[j].in_call())
        }) {
            return Err(CommandError::AlreadyInCall { user: c.clone() });
        }
        if let Some(callee) = callees
            .iter()
            .find(|c| !self.config.contact_policy.allows(user, c))
        {
            return Err(CommandError::Forbidden {
                callee: callee.clone(),
            });
        }
        let fresh = callees.iter().filter(|c| call.slot_of(c).is_none()).count();
        let total = call.slots.len() + fresh;
        if total > max {
            return Err(ValidationError::CalleeCount { max, got: total }.into());
        }

        // Glare: an added user whose own invitation rings the adder right
        // now (and nobody is in that call yet) is not rung a second time:
        // their invitation gives way and they are in this call at once, on
        // the device they invited from.
        let mut merged: Vec<(UserId, DeviceId)> = Vec::new();
        for c in &callees {
            if let Some(theirs) = self.glare_call(user, c)
                && !self.calls[&theirs].established()
            {
                let device = self.calls[&theirs].info.caller_device.clone();
                self.end_ringing(&theirs, Reason::Canceled);
                self.settle(now, &theirs);
                self.stats.glare_merges += 1;
                merged.push((c.clone(), device));
            }
        }

        let ring_for = self.calls[call_id].info.ring_for;
        let deadline = now + ring_for;
        let mut slots: Vec<Slot> = self.calls[call_id].slots.to_vec();
        let mut users = self.calls[call_id].info.callees.to_vec();
        let mut statuses = Vec::with_capacity(callees.len());
        let mut touched = Vec::with_capacity(callees.len());
        for c in &callees {
            let joined = merged.iter().find(|(u, _)| u == c).map(|(_, d)| d.clone());
            let busy = joined.is_none()
                && self.config.busy_policy == BusyPolicy::RejectBusy
                && self.is_busy(c);
            let pushable = self.wants_push(c);
            let entry = self
                .users
                .entry(c.clone())
                .or_insert_with(|| Box::new(UserEntry::new(super::commands::unnamed(c))));
            entry.idle_since = None;
            let online = !entry.devices.is_empty();
            let (slot, status) = if let Some(device) = joined {
                let slot = Slot::Accepted {
                    device,
                    in_call: true,
                };
                (slot, InitialStatus::Joined)
            } else if busy {
                (Slot::decided(Reason::Busy), InitialStatus::Busy)
            } else if online {
                let slot = Slot::Ringing {
                    rung: true,
                    deadline,
                };
                (slot, InitialStatus::Ringing)
            } else if self.config.offline_policy == OfflinePolicy::Reject && !pushable {
                (
                    Slot::decided(Reason::Unreachable),
                    InitialStatus::Unreachable,
                )
            } else {
                let slot = Slot::Ringing {
                    rung: false,
                    deadline,
                };
                (slot, InitialStatus::Offline)
            };
            // Hidden presence: as for an invite, every rung-or-not callee
            // reads `ringing` (a glare join is no presence fact).
            let hidden = self.config.hide_callee_status && status != InitialStatus::Joined;
            statuses.push(CalleeStatus::new(
                c.clone(),
                if hidden {
                    InitialStatus::Ringing
                } else {
                    status
                },
            ));
            let j = match users.iter().position(|u| &u.id == c) {
                Some(j) => {
                    // A former invitee tried again: rung, or refused at once
                    // (busy, unreachable); either way a new outcome follows.
                    if !matches!(slot, Slot::Accepted { .. }) {
                        self.regrown_entry(call_id, c).rung_again += 1;
                    }
                    slots[j] = slot;
                    j
                }
                None => {
                    users.push(entry.user.clone());
                    slots.push(slot);
                    self.regrown_entry(call_id, c).added = true;
                    users.len() - 1
                }
            };
            touched.push(j);
        }

        let call = self.calls.get_mut(call_id).expect("role found it");
        let info = Arc::new(CallInfo {
            callees: users.into(),
            ..CallInfo::clone(&call.info)
        });
        call.info = info.clone();
        call.slots = slots.into();
        // A timer for this batch only if some of it rings (all busy or
        // unreachable: none); the call rings again if it had stopped.
        if call
            .slots
            .iter()
            .any(|s| s.ring_deadline() == Some(deadline))
        {
            self.timers
                .insert(deadline, TimerKind::Ring, call_id.clone());
            if let CallState::InProgress { caller_in } = call.state {
                call.state = CallState::Ringing {
                    caller: if caller_in {
                        Presence::Here
                    } else {
                        Presence::Left
                    },
                };
            }
        }

        for j in touched {
            let call = &self.calls[call_id];
            let callee = call.info.callees[j].id.clone();
            let watchers = call.present_except(&callee);
            match call.slots[j].clone() {
                Slot::Accepted { device, .. } => {
                    self.regrown_entry(call_id, &callee).joined_late += 1;
                    let mut told = vec![callee.clone()];
                    told.extend(watchers);
                    if let Some(entry) = self.users.get_mut(&callee) {
                        entry.rejoin_call(call_id);
                    }
                    self.announce_joined(call_id, &callee, &device, told);
                }
                Slot::Ended { reason, .. } => {
                    self.stats.outcomes[reason.index()] += 1;
                    self.notices.push_back(CallNotice::Outcome {
                        call_id: call_id.clone(),
                        callee: callee.clone(),
                        reason,
                        caller: self.calls[call_id].info.caller.id.clone(),
                        device: None,
                    });
                    for w in watchers {
                        self.pending.push((
                            w,
                            LogEvent::CalleeOutcome {
                                call: call_id.clone(),
                                callee: callee.clone(),
                                reason,
                            },
                        ));
                    }
                }
                Slot::Ringing { rung, .. } => {
                    let entry = self.users.get_mut(&callee).expect("made above");
                    entry.rejoin_call(call_id);
                    self.pending
                        .push((callee.clone(), LogEvent::Incoming(info.clone())));
                    if rung && !self.config.hide_callee_status {
                        for w in watchers {
                            self.pending.push((
                                w,
                                LogEvent::CalleeRinging {
                                    call: call_id.clone(),
                                    callee: callee.clone(),
                                },
                            ));
                        }
                    }
                }
            }
        }
        for c in &callees {
            if let Some(entry) = self.users.get_mut(c) {
                self.idle_users.note(c, entry, now);
            }
        }
        self.settle(now, call_id);
        Ok(ReplyResult::Invited {
            call_id: call_id.clone(),
            ring_remaining_ms: duration_ms(ring_for),
            callees: statuses,
        })
    }
}
