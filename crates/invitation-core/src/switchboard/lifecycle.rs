//! How slots and calls end: a callee's outcome, the call's end once nobody
//! rings and nobody is in it, the timers that fire, and the history that
//! expires as the clock moves.

use std::time::Instant;

use super::call::{CallState, Slot};
use super::timers::TimerKind;
use super::user::LogEvent;
use super::{CallNotice, Switchboard};
use crate::id::{CallId, DeviceId};
use crate::model::{CustomData, Reason};

impl Switchboard {
    /// Every callee still ringing gets `reason` (canceled, timeout, caller gone).
    pub(super) fn end_ringing(&mut self, call_id: &CallId, reason: Reason) {
        self.end_ringing_with(call_id, reason, None);
    }

    /// [`Switchboard::end_ringing`] by an action carrying `data` (a cancel,
    /// the caller's hang-up): each callee whose ring it stops gets it.
    pub(super) fn end_ringing_with(
        &mut self,
        call_id: &CallId,
        reason: Reason,
        data: Option<CustomData>,
    ) {
        let call = self.calls.get_mut(call_id).expect("live call");
        let ringing: Vec<usize> = (0..call.slots.len())
            .filter(|&i| call.slots[i].is_ringing())
            .collect();
        for &i in &ringing {
            call.slots[i] = Slot::decided(reason);
        }
        for i in ringing {
            self.close_slot_with(call_id, i, reason, None, data.clone(), None);
        }
    }

    /// Announces a callee's terminal outcome (already written in the slot)
    /// to the callee's devices and the caller; the call leaves the callee's
    /// live list.
    #[allow(dead_code)] // for endings no action data goes with
    pub(super) fn close_slot(
        &mut self,
        call_id: &CallId,
        i: usize,
        reason: Reason,
        by: Option<DeviceId>,
    ) {
        self.close_slot_with(call_id, i, reason, by, None, None);
    }

    /// [`Switchboard::close_slot`] with the data of the action behind it:
    /// `for_callee` in the callee's `incoming_ended` (a cancel's, a
    /// decline's), `for_caller` in the caller's `callee_outcome` (the
    /// callee's own answer data only).
    pub(super) fn close_slot_with(
        &mut self,
        call_id: &CallId,
        i: usize,
        reason: Reason,
        by: Option<DeviceId>,
        for_callee: Option<CustomData>,
        for_caller: Option<CustomData>,
    ) {
        let call = &self.calls[call_id];
        let callee = call.info.callees[i].id.clone();
        let caller = call.info.caller.id.clone();
        self.stats.outcomes[reason.index()] += 1;
        self.notices.push_back(CallNotice::Outcome {
            call_id: call_id.clone(),
            callee: callee.clone(),
            reason,
            caller: caller.clone(),
            device: by.clone(),
        });
        self.pending.push((
            callee.clone(),
            LogEvent::IncomingEnded {
                call: call_id.clone(),
                reason,
                device: by,
            }
            .with_data(for_callee.clone()),
        ));
        self.pending.push((
            caller,
            LogEvent::CalleeOutcome {
                call: call_id.clone(),
                callee: callee.clone(),
                reason,
            }
            .with_data(for_caller),
        ));
        let keep = self.config.recent_ended_per_user;
        if let Some(entry) = self.users.get_mut(&callee) {
            entry.end_call_with(call_id, reason, for_callee, keep);
        }
    }

    pub(super) fn settle_now(&mut self, call_id: &CallId) {
        let now = self.now.expect("an input set the time");
        self.settle(now, call_id);
    }

    /// Disarms timers nobody needs any more and ends the call when nobody
    /// rings and nobody is in it.
    pub(super) fn settle(&mut self, now: Instant, call_id: &CallId) {
        if self.stop_ringing(call_id, true) && !self.calls[call_id].anyone_in_call() {
            self.end_call(now, call_id, None);
        }
    }

    /// The caller left or the server stops: once nobody rings (the caller
    /// ended the ringing callees first), the call ends now, whoever is still
    /// in it. `forced` gives every party that reason instead of the natural
    /// one.
    pub(super) fn end_now(&mut self, call_id: &CallId, forced: Option<Reason>) {
        let now = self.now.expect("an input set the time");
        if self.stop_ringing(call_id, true) {
            self.end_call(now, call_id, forced);
        }
    }

    /// Leaves [`CallState::Ringing`] once no callee rings, taking the call's
    /// timers out of the index (the ring timer only when `ring_timer_armed`:
    /// not when it is the one firing). True when the call is live and nobody
    /// rings.
    fn stop_ringing(&mut self, call_id: &CallId, ring_timer_armed: bool) -> bool {
        let call = self.calls.get_mut(call_id).expect("live call");
        if call.is_ringing() {
            return false;
        }
        match call.state {
            CallState::Ended(_) => false,
            CallState::InProgress => true,
            CallState::Ringing { gone_at } => {
                call.state = CallState::InProgress;
                if ring_timer_armed {
                    self.timers
                        .remove(call.info.deadline, TimerKind::Ring, call_id);
                }
                if let Some(at) = gone_at {
                    self.timers.remove(at, TimerKind::CallerGone, call_id);
                }
                true
            }
        }
    }

    /// Ends a live call nobody rings any more: `forced`, or else the natural
    /// reason, for the caller and every callee still in it.
    fn end_call(&mut self, now: Instant, call_id: &CallId, forced: Option<Reason>) {
        let data = self.ending_data.take();
        let call = self.calls.get_mut(call_id).expect("live call");
        let reason = forced.unwrap_or_else(|| call.final_reason());
        call.state = CallState::Ended(reason);
        self.notices.push_back(CallNotice::Ended {
            call_id: call_id.clone(),
            reason,
            caller: call.info.caller.id.clone(),
            callees: call.info.callees.clone(),
        });
        let keep = self.config.recent_ended_per_user;
        let mut in_call = Vec::new();
        for (i, slot) in call.slots.iter_mut().enumerate() {
            if let Slot::Accepted { in_call: still, .. } = slot
                && std::mem::take(still)
            {
                in_call.push(call.info.callees[i].id.clone());
            }
        }
        let caller = call.info.caller.id.clone();
        for callee in in_call {
            let reason = forced.unwrap_or(Reason::HungUp);
            self.pending.push((
                callee.clone(),
                LogEvent::CallEnded {
                    call: call_id.clone(),
                    reason,
                }
                .with_data(data.clone()),
            ));
            if let Some(entry) = self.users.get_mut(&callee) {
                entry.end_call_with(call_id, reason, data.clone(), keep);
            }
        }
        self.pending.push((
            caller.clone(),
            LogEvent::CallEnded {
                call: call_id.clone(),
                reason,
            }
            .with_data(data.clone()),
        ));
        if let Some(entry) = self.users.get_mut(&caller) {
            entry.end_call_with(call_id, reason, data, keep);
        }
        self.tombstones
            .push_back((now + self.config.retention, call_id.clone()));
    }

    fn on_timer(&mut self, kind: TimerKind, call_id: CallId) {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        match kind {
            TimerKind::Ring => {
                if call.is_ringing() {
                    self.end_ringing(&call_id, Reason::Timeout);
                }
                // The ring timer left the index as it fired.
                self.stop_ringing(&call_id, false);
            }
            TimerKind::CallerGone => {
                if let CallState::Ringing { gone_at } = &mut call.state {
                    *gone_at = None; // it left the index as it fired
                }
                if call.is_ringing() {
                    self.end_ringing(&call_id, Reason::CallerGone);
                }
            }
        }
        self.settle_now(&call_id);
    }

    /// Moves the clock (never backwards), fires due timers, forgets expired
    /// history. Returns the effective now.
    pub(super) fn advance(&mut self, now: Instant) -> Instant {
        self.notices.clear();
        self.advance_keeping_notices(now)
    }

    /// [`Switchboard::advance`] for an input that is no call milestone (a
    /// device receipt): the notices of the last input stay queued.
    pub(super) fn advance_keeping_notices(&mut self, now: Instant) -> Instant {
        let now = match self.now {
            Some(prev) if prev > now => prev,
            _ => now,
        };
        self.now = Some(now);
        while let Some((_, kind, call_id)) = self.timers.pop_due(now) {
            self.on_timer(kind, call_id);
        }
        self.flush(now);
        self.forget_expired(now);
        now
    }

    fn forget_expired(&mut self, now: Instant) {
        while let Some((at, _)) = self.tombstones.front() {
            if *at > now && self.tombstones.len() <= self.config.max_tombstones {
                break;
            }
            let (_, call_id) = self.tombstones.pop_front().expect("front exists");
            if self.calls.get(&call_id).is_some_and(|c| c.is_ended()) {
                self.calls.remove(&call_id);
                self.forget_extras(&call_id);
            }
        }
        self.requests
            .forget(now, self.config.max_remembered_requests);
        self.idle_users
            .forget(&mut self.users, now, self.config.retention);
    }
}
