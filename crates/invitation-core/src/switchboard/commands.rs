//! The call commands (invite, accept, decline, cancel, hang up): validation,
//! the busy and glare rules, and each command's state change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::call::{Call, CallInfo, CallState, Presence, Slot};
use super::render::duration_ms;
use super::requests;
use super::timers::TimerKind;
use super::user::{LogEvent, UserEntry};
use super::{BusyPolicy, CallNotice, OfflinePolicy, Switchboard};
use crate::error::{CommandError, ValidationError};
use crate::id::{CallId, DeviceId, UserId};
use crate::model::{CustomData, Reason, User};
use crate::protocol::{CalleeStatus, InitialStatus, InviteRequest, ReplyResult, Role};

impl Switchboard {
    fn validate_invite(
        &self,
        caller: &UserId,
        req: InviteRequest,
    ) -> Result<ValidInvite, ValidationError> {
        let call_type = req.call_type;
        let mut callees: Vec<UserId> = Vec::with_capacity(req.callees.len());
        for c in req.callees {
            if !callees.contains(&c) {
                callees.push(c);
            }
        }
        if callees.is_empty() || callees.len() > self.config.max_callees {
            return Err(ValidationError::CalleeCount {
                max: self.config.max_callees,
                got: callees.len(),
            });
        }
        if callees.contains(caller) {
            return Err(ValidationError::CallerAmongCallees);
        }
        let timeout_s = req.timeout_s.unwrap_or(self.config.default_ring_timeout_s);
        if timeout_s < self.config.min_ring_timeout_s || timeout_s > self.config.max_ring_timeout_s
        {
            return Err(ValidationError::RingTimeout {
                min_s: self.config.min_ring_timeout_s,
                max_s: self.config.max_ring_timeout_s,
                got_s: timeout_s,
            });
        }
        if let Some(data) = &req.custom_data {
            let max = self.config.max_custom_data;
            if data.len() > max {
                return Err(ValidationError::TooLong {
                    field: "custom_data",
                    max,
                    len: data.len(),
                });
            }
        }
        Ok(ValidInvite {
            callees,
            ring_for: Duration::from_secs(u64::from(timeout_s)),
            custom_data: req.custom_data.filter(|d| !d.is_empty()),
            call_type,
        })
    }

    /// Busy as a callee: in an accepted call, inviting, or already ringing.
    pub(super) fn is_busy(&self, user: &UserId) -> bool {
        self.busy(user, true)
    }

    /// Busy as a caller: in an accepted call or inviting (being rung is fine).
    pub(super) fn is_busy_caller(&self, user: &UserId) -> bool {
        self.busy(user, false)
    }

    fn busy(&self, user: &UserId, ringing_counts: bool) -> bool {
        let Some(entry) = self.users.get(user) else {
            return false;
        };
        entry.calls.iter().any(|id| {
            self.calls.get(id).is_some_and(|call| {
                if call.is_ended() {
                    return false;
                }
                if &call.info.caller.id == user {
                    return call.caller_in() && (call.is_ringing() || call.anyone_in_call());
                }
                call.slot_of(user).is_some_and(|i| {
                    call.slots[i].in_call() || (ringing_counts && call.slots[i].is_ringing())
                })
            })
        })
    }

    /// Glare: `callee` is ringing `caller` right now.
    pub(super) fn glare_call(&self, caller: &UserId, callee: &UserId) -> Option<CallId> {
        let entry = self.users.get(caller)?;
        entry.calls.iter().find_map(|id| {
            let call = self.calls.get(id)?;
            let ringing_me = call.caller_in()
                && &call.info.caller.id == callee
                && call
                    .slot_of(caller)
                    .is_some_and(|i| call.slots[i].is_ringing());
            ringing_me.then(|| id.clone())
        })
    }

    pub(super) fn invite(
        &mut self,
        now: Instant,
        caller: &UserId,
        device: &DeviceId,
        req: InviteRequest,
    ) -> Result<ReplyResult, CommandError> {
        let ValidInvite {
            callees,
            ring_for,
            custom_data,
            call_type,
        } = self.validate_invite(caller, req)?;
        if let Some(callee) = callees
            .iter()
            .find(|c| !self.config.contact_policy.allows(caller, c))
        {
            return Err(CommandError::Forbidden {
                callee: callee.clone(),
            });
        }
        if let [callee] = callees.as_slice() {
            if let Some(call_id) = self.glare_call(caller, callee) {
                self.accept(caller, device, &call_id)?;
                self.stats.glare_merges += 1;
                let caller_user = self.calls[&call_id].info.caller.clone();
                return Ok(ReplyResult::Joined {
                    call_id,
                    caller: caller_user,
                });
            }
        }
        if self.is_busy_caller(caller) {
            return Err(CommandError::CallerBusy);
        }
        let call_id = self.fresh_call_id();
        let deadline = now + ring_for;
        let mut slots = Vec::with_capacity(callees.len());
        let mut users = Vec::with_capacity(callees.len());
        let mut statuses = Vec::with_capacity(callees.len());
        for callee in &callees {
            let busy = self.config.busy_policy == BusyPolicy::RejectBusy && self.is_busy(callee);
            let pushable = self.wants_push(callee);
            let entry = self
                .users
                .entry(callee.clone())
                .or_insert_with(|| Box::new(UserEntry::new(unnamed(callee))));
            entry.idle_since = None;
            let online = !entry.devices.is_empty();
            let (slot, status) = if busy {
                (Slot::decided(Reason::Busy), InitialStatus::Busy)
            } else if online {
                let slot = Slot::Ringing {
                    rung: true,
                    deadline,
                };
                (slot, InitialStatus::Ringing)
            } else if self.config.offline_policy == OfflinePolicy::Reject && !pushable {
                let slot = Slot::decided(Reason::Unreachable);
                (slot, InitialStatus::Unreachable)
            } else {
                let slot = Slot::Ringing {
                    rung: false,
                    deadline,
                };
                (slot, InitialStatus::Offline)
            };
            users.push(entry.user.clone());
            slots.push(slot);
            statuses.push(CalleeStatus {
                user: callee.clone(),
                status: if self.config.hide_callee_status {
                    InitialStatus::Ringing
                } else {
                    status
                },
            });
        }
        let caller_entry = &self.users[caller];
        let info = Arc::new(CallInfo {
            call_id: call_id.clone(),
            caller: caller_entry.user.clone(),
            caller_device: device.clone(),
            call_type,
            callees: users.into(),
            custom_data,
            deadline,
            ring_for,
        });
        self.stats.invitations += 1;
        self.notices.push_back(CallNotice::Started {
            call_id: call_id.clone(),
            caller: caller.clone(),
            callees: info.callees.clone(),
            device: device.clone(),
        });
        self.users
            .get_mut(caller)
            .expect("caller is connected")
            .add_call(&call_id);
        self.pending
            .push((caller.clone(), LogEvent::Outgoing(info.clone())));
        for (callee, slot) in callees.iter().zip(&slots) {
            match slot.outcome() {
                Some(reason) => {
                    self.stats.outcomes[reason.index()] += 1;
                    self.notices.push_back(CallNotice::Outcome {
                        call_id: call_id.clone(),
                        callee: callee.clone(),
                        reason,
                        caller: caller.clone(),
                        device: None,
                    });
                    self.pending.push((
                        caller.clone(),
                        LogEvent::CalleeOutcome {
                            call: call_id.clone(),
                            callee: callee.clone(),
                            reason,
                        },
                    ));
                }
                None => {
                    let entry = self.users.get_mut(callee).expect("created above");
                    entry.add_call(&call_id);
                    self.pending
                        .push((callee.clone(), LogEvent::Incoming(info.clone())));
                    let rung = matches!(slot, Slot::Ringing { rung: true, .. });
                    if rung {
                        self.notices.push_back(CallNotice::Ringing {
                            call_id: call_id.clone(),
                            caller: caller.clone(),
                            callee: callee.clone(),
                        });
                    }
                    if rung && !self.config.hide_callee_status {
                        self.pending.push((
                            caller.clone(),
                            LogEvent::CalleeRinging {
                                call: call_id.clone(),
                                callee: callee.clone(),
                            },
                        ));
                    }
                }
            }
        }
        for callee in &callees {
            let entry = self.users.get_mut(callee).expect("created above");
            self.idle_users.note(callee, entry, now);
        }
        let state = if slots.iter().any(Slot::is_ringing) {
            self.timers
                .insert(deadline, TimerKind::Ring, call_id.clone());
            CallState::Ringing {
                caller: Presence::Here,
            }
        } else {
            // Nobody rings: settled below, it ends.
            CallState::InProgress { caller_in: true }
        };
        self.calls.insert(
            call_id.clone(),
            Box::new(Call {
                info,
                slots: slots.into(),
                state,
            }),
        );
        self.settle(now, &call_id);
        Ok(ReplyResult::Invited {
            call_id,
            ring_remaining_ms: duration_ms(ring_for),
            callees: statuses,
        })
    }

    fn fresh_call_id(&mut self) -> CallId {
        loop {
            let id = self.ids.next_call_id();
            if !self.calls.contains_key(&id) {
                return id;
            }
        }
    }

    /// Finds `call_id` and the caller's role in it; non-participants get
    /// `NotFound`, exactly as for an unknown call.
    pub(super) fn role(
        &self,
        user: &UserId,
        call_id: &CallId,
    ) -> Result<(Role, usize), CommandError> {
        let call = self.calls.get(call_id).ok_or(CommandError::NotFound)?;
        if &call.info.caller.id == user {
            return Ok((Role::Caller, 0));
        }
        call.slot_of(user)
            .map(|i| (Role::Callee, i))
            .ok_or(CommandError::NotFound)
    }

    pub(super) fn accept(
        &mut self,
        user: &UserId,
        device: &DeviceId,
        call_id: &CallId,
    ) -> Result<ReplyResult, CommandError> {
        self.accept_with(user, device, call_id, None)
    }

    /// An accept carrying the callee's `data` (already validated), for the
    /// caller and the callee's other devices.
    pub(super) fn accept_with(
        &mut self,
        user: &UserId,
        device: &DeviceId,
        call_id: &CallId,
        data: Option<CustomData>,
    ) -> Result<ReplyResult, CommandError> {
        let (Role::Callee, i) = self.role(user, call_id)? else {
            return Err(CommandError::WrongRole);
        };
        // A callee rung again already has the caller's outcome (the first
        // one, reported once): this accept reaches the caller as a join.
        let rung_again = self
            .regrown
            .get(call_id)
            .is_some_and(|l| l.iter().any(|r| &r.user == user && r.rung_again > 0));
        let call = self.calls.get_mut(call_id).expect("role found it");
        let ended = call.is_ended();
        let slot = &mut call.slots[i];
        if !slot.is_ringing() || ended {
            if let Slot::Accepted {
                device: d,
                in_call: true,
            } = slot
                && d == device
            {
                return Ok(ReplyResult::Done); // accepting twice is accepting
            }
            let reason = slot.reason_seen_by(device).unwrap_or(Reason::Failed);
            return Err(CommandError::Ended { reason });
        }
        let old = std::mem::replace(
            slot,
            Slot::Accepted {
                device: device.clone(),
                in_call: true,
            },
        );
        let caller = (call.caller_in() && !rung_again).then(|| call.info.caller.id.clone());
        // Everyone else in the call (a group call's other callees): the
        // caller hears of the accept as a callee outcome, as in 1:1.
        let others: Vec<UserId> = call
            .present_except(user)
            .into_iter()
            .filter(|u| Some(u) != caller.as_ref())
            .collect();
        if let Some(d) = old.ring_deadline() {
            self.disarm_ring(call_id, d);
        }
        self.stats.outcomes[Reason::Accepted.index()] += 1;
        self.notices.push_back(CallNotice::Outcome {
            call_id: call_id.clone(),
            callee: user.clone(),
            reason: Reason::Accepted,
            caller: self.calls[call_id].info.caller.id.clone(),
            device: Some(device.clone()),
        });
        self.pending.push((
            user.clone(),
            LogEvent::IncomingEnded {
                call: call_id.clone(),
                reason: Reason::Accepted,
                device: Some(device.clone()),
            }
            .with_data(data.clone()),
        ));
        if let Some(caller) = caller {
            self.pending.push((
                caller,
                LogEvent::CalleeOutcome {
                    call: call_id.clone(),
                    callee: user.clone(),
                    reason: Reason::Accepted,
                }
                .with_data(data.clone()),
            ));
        }
        self.note_answer(call_id, i, &data);
        self.note_answered(call_id, self.now.expect("an input set the time"));
        if !others.is_empty() {
            self.announce_joined(call_id, user, device, others);
        }
        self.settle_now(call_id);
        Ok(ReplyResult::Done)
    }

    pub(super) fn decline(
        &mut self,
        user: &UserId,
        device: &DeviceId,
        call_id: &CallId,
        busy: bool,
        data: Option<CustomData>,
    ) -> Result<ReplyResult, CommandError> {
        let (Role::Callee, i) = self.role(user, call_id)? else {
            return Err(CommandError::WrongRole);
        };
        let reason = if busy { Reason::Busy } else { Reason::Declined };
        let call = self.calls.get_mut(call_id).expect("role found it");
        let ended = call.is_ended();
        let slot = &mut call.slots[i];
        if !slot.is_ringing() || ended {
            if slot.outcome() == Some(reason) && slot.device() == Some(device) {
                return Ok(ReplyResult::Done); // declining twice is declining
            }
            let seen = slot.reason_seen_by(device).unwrap_or(Reason::Failed);
            return Err(CommandError::Ended { reason: seen });
        }
        let old = std::mem::replace(
            slot,
            Slot::Ended {
                reason,
                device: Some(device.clone()),
            },
        );
        if let Some(d) = old.ring_deadline() {
            self.disarm_ring(call_id, d);
        }
        self.note_answer(call_id, i, &data);
        self.close_slot_with(call_id, i, reason, Some(device.clone()), data.clone(), data);
        self.settle_now(call_id);
        Ok(ReplyResult::Done)
    }

    pub(super) fn cancel(
        &mut self,
        user: &UserId,
        call_id: &CallId,
        data: Option<CustomData>,
    ) -> Result<ReplyResult, CommandError> {
        let (Role::Caller, _) = self.role(user, call_id)? else {
            return Err(CommandError::WrongRole);
        };
        let call = &self.calls[call_id];
        if !call.is_ended() && !call.caller_in() {
            return Err(CommandError::Ended {
                reason: Reason::HungUp,
            });
        }
        if !call.is_ringing() {
            return match call.ended() {
                Some(Reason::Canceled) => Ok(ReplyResult::Done),
                Some(reason) => Err(CommandError::Ended { reason }),
                None => Err(CommandError::Ended {
                    reason: Reason::Accepted,
                }),
            };
        }
        self.end_ringing_with(call_id, Reason::Canceled, data.clone());
        self.ending_data = data;
        self.settle_now(call_id);
        Ok(ReplyResult::Done)
    }

    /// Leaves the call: see [`Switchboard::leave`].
    pub(super) fn hang_up(
        &mut self,
        user: &UserId,
        call_id: &CallId,
        data: Option<CustomData>,
    ) -> Result<ReplyResult, CommandError> {
        let (role, i) = self.role(user, call_id)?;
        let call = &self.calls[call_id];
        match role {
            Role::Caller => {
                if let Some(reason) = call.ended() {
                    return if reason == Reason::HungUp || reason == Reason::Canceled {
                        Ok(ReplyResult::Done)
                    } else {
                        Err(CommandError::Ended { reason })
                    };
                }
                if !call.caller_in() {
                    return Ok(ReplyResult::Done); // left already
                }
            }
            Role::Callee => {
                let ended = call.is_ended();
                match &call.slots[i] {
                    Slot::Accepted { in_call, .. } if *in_call && !ended => {}
                    Slot::Accepted { .. } => return Ok(ReplyResult::Done),
                    Slot::Ended { reason, .. } => {
                        return Err(CommandError::Ended { reason: *reason });
                    }
                    // Still ringing: hanging up is not declining.
                    Slot::Ringing { .. } => return Err(CommandError::WrongRole),
                }
            }
        }
        self.leave(user, role, i, call_id, data);
        Ok(ReplyResult::Done)
    }

    pub(super) fn remember(
        &mut self,
        now: Instant,
        key: requests::RequestKey,
        result: &Result<ReplyResult, CommandError>,
    ) {
        let call = match result {
            Ok(ReplyResult::Invited { call_id, .. }) => self.calls.get(call_id).map(|c| &c.info),
            _ => None,
        };
        self.requests.insert(
            key,
            now + self.config.retention,
            result,
            call,
            self.config.max_remembered_requests_per_user,
        );
    }
}

struct ValidInvite {
    callees: Vec<UserId>,
    ring_for: Duration,
    custom_data: Option<CustomData>,
    call_type: crate::model::CallType,
}

pub(super) fn unnamed(id: &UserId) -> User {
    User {
        id: id.clone(),
        name: crate::model::name_of(""),
    }
}
