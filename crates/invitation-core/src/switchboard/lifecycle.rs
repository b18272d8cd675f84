//! How slots and calls end: a callee's outcome, the call's end once nobody
//! rings and nobody is in it, the timers that fire, and the history that
//! expires as the clock moves.

use std::time::Instant;

use super::call::{CallState, Presence, Slot};
use super::timers::TimerKind;
use super::user::LogEvent;
use super::{CallNotice, Switchboard};
use crate::id::{CallId, DeviceId};
use crate::model::{CustomData, Reason};

impl Switchboard {
    /// Every callee still ringing gets `reason` (canceled, caller gone,
    /// shutdown).
    pub(super) fn end_ringing(&mut self, call_id: &CallId, reason: Reason) {
        self.end_ringing_full(call_id, reason, None, None);
    }

    /// [`Switchboard::end_ringing`] by an action carrying `data` (a cancel,
    /// the caller's hang-up): each callee whose ring it stops gets it.
    pub(super) fn end_ringing_with(
        &mut self,
        call_id: &CallId,
        reason: Reason,
        data: Option<CustomData>,
    ) {
        self.end_ringing_full(call_id, reason, None, data);
    }

    /// Every callee ringing with a deadline at or before `due` (all of
    /// them when `None`) gets `reason`; their ring timers leave the index.
    pub(super) fn end_ringing_until(
        &mut self,
        call_id: &CallId,
        reason: Reason,
        due: Option<Instant>,
    ) {
        self.end_ringing_full(call_id, reason, due, None);
    }

    /// The callees ringing until `due` (all when `None`) get `reason`, and
    /// `data` (the action's) in their `incoming_ended`.
    fn end_ringing_full(
        &mut self,
        call_id: &CallId,
        reason: Reason,
        due: Option<Instant>,
        data: Option<CustomData>,
    ) {
        let call = self.calls.get_mut(call_id).expect("live call");
        let ringing: Vec<usize> = (0..call.slots.len())
            .filter(|&i| {
                call.slots[i]
                    .ring_deadline()
                    .is_some_and(|d| due.is_none_or(|due| d <= due))
            })
            .collect();
        let mut deadlines = Vec::new();
        for &i in &ringing {
            let old = std::mem::replace(&mut call.slots[i], Slot::decided(reason));
            deadlines.extend(old.ring_deadline());
        }
        deadlines.dedup();
        for d in deadlines {
            self.disarm_ring(call_id, d);
        }
        for i in ringing {
            self.close_slot_with(call_id, i, reason, None, data.clone(), None);
        }
    }

    /// A slot rang until `deadline` and no longer does: the ring timer at
    /// that instant leaves the index unless another slot still rings until
    /// it. (Removing a timer that already fired is a no-op.)
    pub(super) fn disarm_ring(&mut self, call_id: &CallId, deadline: Instant) {
        let call = &self.calls[call_id];
        let shared = call
            .slots
            .iter()
            .any(|s| s.ring_deadline() == Some(deadline));
        if !shared {
            self.timers.remove(deadline, TimerKind::Ring, call_id);
        }
    }

    /// Announces a callee's terminal outcome (already written in the slot)
    /// to the callee's devices and to everyone in the call (before anyone
    /// accepted, that is the caller); the call leaves the callee's live
    /// list. The data of the action behind it goes along: `for_callee` in
    /// the callee's `incoming_ended` (a cancel's, a decline's), `for_caller`
    /// in the `callee_outcome`s (the callee's own answer data only).
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
        let watchers = call.present_except(&callee);
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
        for watcher in watchers {
            self.pending.push((
                watcher,
                LogEvent::CalleeOutcome {
                    call: call_id.clone(),
                    callee: callee.clone(),
                    reason,
                }
                .with_data(for_caller.clone()),
            ));
        }
        let keep = self.config.recent_ended_per_user;
        if let Some(entry) = self.users.get_mut(&callee) {
            entry.end_call_with(call_id, reason, for_callee, keep);
        }
    }

    pub(super) fn settle_now(&mut self, call_id: &CallId) {
        let now = self.now.expect("an input set the time");
        self.settle(now, call_id);
    }

    /// Ends the call when its rules say so, and otherwise moves it between
    /// `Ringing` and `InProgress`: once someone accepted, the call ends as
    /// soon as fewer than two are in it (still-ringing invitees are
    /// canceled); before that, once nobody rings.
    pub(super) fn settle(&mut self, now: Instant, call_id: &CallId) {
        let call = &self.calls[call_id];
        if call.is_ended() {
            return;
        }
        if call.established() && call.present() < 2 {
            self.end_ringing(call_id, Reason::Canceled);
            self.end_call(now, call_id, None);
        } else if !call.is_ringing() {
            if call.established() {
                self.stop_ringing(call_id);
            } else {
                self.end_call(now, call_id, None);
            }
        }
    }

    /// The server stops: every ringing callee got `forced` already; the
    /// call ends now for everyone still in it, with that reason.
    pub(super) fn end_now(&mut self, call_id: &CallId, forced: Option<Reason>) {
        let now = self.now.expect("an input set the time");
        if !self.calls[call_id].is_ended() && !self.calls[call_id].is_ringing() {
            self.end_call(now, call_id, forced);
        }
    }

    /// Leaves [`CallState::Ringing`] (nobody rings any more), taking the
    /// caller-gone timer out of the index.
    fn stop_ringing(&mut self, call_id: &CallId) {
        let call = self.calls.get_mut(call_id).expect("live call");
        if let CallState::Ringing { caller } = call.state {
            call.state = CallState::InProgress {
                caller_in: caller != Presence::Left,
            };
            if let Presence::Away(at) = caller {
                self.timers.remove(at, TimerKind::CallerGone, call_id);
            }
        }
    }

    /// Ends a live call nobody rings any more: `forced`, or else the natural
    /// reason, for the caller (unless they left before) and every callee
    /// still in it.
    pub(super) fn end_call(&mut self, now: Instant, call_id: &CallId, forced: Option<Reason>) {
        let data = self.ending_data.take();
        self.stop_ringing(call_id);
        let call = self.calls.get_mut(call_id).expect("live call");
        debug_assert!(!call.slots.iter().any(Slot::is_ringing), "ring first");
        let caller_in = call.caller_in();
        let reason = forced.unwrap_or_else(|| call.final_reason());
        call.state = CallState::Ended(reason);
        self.record_end(now, call_id, reason);
        let call = self.calls.get_mut(call_id).expect("live call");
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
        if caller_in {
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
        }
        self.tombstones
            .push_back((now + self.config.retention, call_id.clone()));
    }

    fn on_timer(&mut self, kind: FiredTimer, call_id: CallId) {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        if call.is_ended() {
            return;
        }
        match kind {
            // Ends the slots ringing until this instant (the timer left
            // the index as it fired); slots added later ring on.
            FiredTimer::Ring(at) => self.end_ringing_until(&call_id, Reason::Timeout, Some(at)),
            FiredTimer::CallerGone => {
                if let CallState::Ringing { caller } = &mut call.state {
                    *caller = Presence::Here; // it left the index as it fired
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
        self.pushes.clear();
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
        while let Some((at, kind, call_id)) = self.timers.pop_due(now) {
            let kind = match kind {
                TimerKind::Ring => FiredTimer::Ring(at),
                TimerKind::CallerGone => FiredTimer::CallerGone,
            };
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
                self.regrown.remove(&call_id);
            }
        }
        self.requests
            .forget(now, self.config.max_remembered_requests);
        self.idle_users
            .forget(&mut self.users, now, self.config.retention);
    }
}

/// A timer that fired, with its instant for ring timers.
enum FiredTimer {
    Ring(Instant),
    CallerGone,
}
