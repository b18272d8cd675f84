//! What the switchboard shows its owner: call milestones, counters, and
//! read-only views of calls, users and connections.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::call::Call;
use super::{ConnId, Switchboard};
use crate::id::{CallId, DeviceId, UserId};
use crate::model::{CallType, Reason, User};

/// A call's milestones, for the owner's logs and metrics (not for clients:
/// they get events). Drained with [`Switchboard::poll_notice`]; only what
/// the last input produced is held. Each names the call and the users
/// involved (always the caller; the callee, or every callee; the device
/// that acted, when one did), so that a log of them can be filtered by call
/// id and still say who did what.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallNotice {
    /// An invitation was created.
    Started {
        /// The call.
        call_id: CallId,
        /// Who invited.
        caller: UserId,
        /// Everyone invited.
        callees: Arc<[User]>,
        /// The caller's device that invited.
        device: DeviceId,
    },
    /// A callee's outcome was decided.
    Outcome {
        /// The call.
        call_id: CallId,
        /// The callee.
        callee: UserId,
        /// The outcome.
        reason: Reason,
        /// The caller.
        caller: UserId,
        /// The callee's device that accepted or declined, if one did.
        device: Option<DeviceId>,
    },
    /// Someone entered a call that goes on (a late join, a glare add, or
    /// an accept while others are already in it; the first accept is an
    /// `Outcome`).
    Joined {
        /// The call.
        call_id: CallId,
        /// Who.
        user: UserId,
    },
    /// Someone left a call that goes on without them.
    Left {
        /// The call.
        call_id: CallId,
        /// Who.
        user: UserId,
    },
    /// The call is over for everyone.
    Ended {
        /// The call.
        call_id: CallId,
        /// The call's overall reason (as the caller sees it).
        reason: Reason,
        /// The caller.
        caller: UserId,
        /// Everyone invited.
        callees: Arc<[User]>,
    },
    /// A device of the callee has the invitation (at invite time, or when
    /// the first device of an offline callee connects). Once per callee.
    Ringing {
        /// The call.
        call_id: CallId,
        /// The caller.
        caller: UserId,
        /// The callee.
        callee: UserId,
    },
    /// A device of a ringing callee confirmed it has the invitation (its
    /// `received` receipt): once per device.
    Delivered {
        /// The call.
        call_id: CallId,
        /// The caller.
        caller: UserId,
        /// The callee.
        callee: UserId,
        /// The callee's device.
        device: DeviceId,
    },
    /// A participant hung up (before the [`CallNotice::Ended`] it may cause).
    HungUp {
        /// The call.
        call_id: CallId,
        /// The caller.
        caller: UserId,
        /// Who hung up (the caller or a callee).
        user: UserId,
        /// The device they hung up from.
        device: DeviceId,
    },
}

/// Counters for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SwitchboardStats {
    /// Invitations created.
    pub invitations: u64,
    /// Per-callee outcomes so far, indexed by [`Reason::index`]; read
    /// with [`SwitchboardStats::outcome_count`].
    pub outcomes: [u64; Reason::COUNT],
    /// Invites merged into an existing call by glare resolution.
    pub glare_merges: u64,
    /// Commands answered from the request-id memory (retries).
    pub duplicate_requests: u64,
    /// Device receipts that changed nothing (unknown or foreign call, no
    /// longer ringing, repeated, past the per-callee cap).
    pub ignored_receipts: u64,
}

impl SwitchboardStats {
    /// How many callees ended with `reason` so far.
    pub fn outcome_count(&self, reason: Reason) -> u64 {
        self.outcomes[reason.index()]
    }
}

/// A read-only view of one call, for inspection and tests.
#[derive(Debug, Clone, Copy)]
pub struct CallView<'a> {
    call: &'a Call,
    regrown: &'a [super::Regrown],
    answered_at: Option<Instant>,
}

impl CallView<'_> {
    /// When someone first accepted, while the call goes on (the ended
    /// call's record keeps it after).
    pub fn answered_at(&self) -> Option<Instant> {
        self.answered_at
    }

    /// The call id.
    pub fn call_id(&self) -> &CallId {
        &self.call.info.call_id
    }
    /// The caller.
    pub fn caller(&self) -> &User {
        &self.call.info.caller
    }
    /// The device the caller invited from.
    pub fn caller_device(&self) -> &DeviceId {
        &self.call.info.caller_device
    }
    /// Voice or video.
    pub fn call_type(&self) -> CallType {
        self.call.info.call_type
    }
    /// When the invitation was made (the ring deadline less the ring
    /// timeout).
    pub fn invited_at(&self) -> Instant {
        self.call
            .info
            .deadline
            .checked_sub(self.call.info.ring_for)
            .unwrap_or(self.call.info.deadline)
    }
    /// The callees, in invite order.
    pub fn callees(&self) -> &[User] {
        &self.call.info.callees
    }
    /// A callee's outcome (`None` while ringing or not a callee).
    pub fn outcome(&self, callee: &UserId) -> Option<Reason> {
        self.call
            .slot_of(callee)
            .and_then(|i| self.call.slots[i].outcome())
    }
    /// The device that accepted or declined for a callee.
    pub fn answered_by(&self, callee: &UserId) -> Option<&DeviceId> {
        self.call
            .slot_of(callee)
            .and_then(|i| self.call.slots[i].device())
    }
    /// At least one callee is still ringing.
    pub fn is_ringing(&self) -> bool {
        self.call.is_ringing()
    }
    /// The caller-gone grace deadline, when armed.
    pub fn caller_gone_at(&self) -> Option<Instant> {
        self.call.caller_gone_at()
    }
    /// The ring deadline of the invite (callees added later ring until
    /// their own: [`CallView::ring_deadline`]).
    pub fn deadline(&self) -> Instant {
        self.call.info.deadline
    }
    /// When a callee's ring ends, while it rings.
    pub fn ring_deadline(&self, callee: &UserId) -> Option<Instant> {
        self.call
            .slot_of(callee)
            .and_then(|i| self.call.slots[i].ring_deadline())
    }
    /// Everyone in the call now: the caller first (unless they left),
    /// then callees in the call, in invitation order, with the device each
    /// is in it on. Empty once the call ended.
    pub fn participants(&self) -> Vec<(UserId, DeviceId)> {
        self.call.participants()
    }
    /// How many times `callee` was rung again after a first outcome (a
    /// participant added them once more).
    pub fn rung_again(&self, callee: &UserId) -> u32 {
        self.regrown
            .iter()
            .find(|r| &r.user == callee)
            .map_or(0, |r| r.rung_again)
    }
    /// How many times `callee` entered the call other than by accepting a
    /// ring (a late join, or added while ringing the adder).
    pub fn joined_late(&self, callee: &UserId) -> u32 {
        self.regrown
            .iter()
            .find(|r| &r.user == callee)
            .map_or(0, |r| r.joined_late)
    }
    /// `callee` was invited by `add` into the running call, not by the
    /// invite (so rings until a later deadline than [`CallView::deadline`]).
    pub fn added_later(&self, callee: &UserId) -> bool {
        self.regrown.iter().any(|r| &r.user == callee && r.added)
    }
    /// Someone accepted at some point.
    pub fn established(&self) -> bool {
        self.call.established()
    }
    /// The caller has not left (and the call is live).
    pub fn caller_in(&self) -> bool {
        self.call.caller_in()
    }
    /// The whole ring timeout chosen at invite time.
    pub fn ring_timeout(&self) -> Duration {
        self.call.info.ring_for
    }
    /// The reason the whole call ended, once it has.
    pub fn ended(&self) -> Option<Reason> {
        self.call.ended()
    }
}

impl Switchboard {
    /// One call, live or recently ended.
    pub fn call(&self, call_id: &CallId) -> Option<CallView<'_>> {
        self.calls.get(call_id).map(|call| self.view(call))
    }

    /// Every call still held (live and recently ended).
    pub fn calls(&self) -> impl Iterator<Item = CallView<'_>> {
        self.calls.values().map(|call| self.view(call))
    }

    fn view<'a>(&'a self, call: &'a Call) -> CallView<'a> {
        let regrown = self
            .regrown
            .get(&call.info.call_id)
            .map_or(&[][..], Vec::as_slice);
        let answered_at = self.answered_at.get(&call.info.call_id).copied();
        CallView {
            call,
            regrown,
            answered_at,
        }
    }

    /// Connections currently open.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// The user and device behind an open connection.
    pub fn connection(&self, conn: ConnId) -> Option<(&UserId, &DeviceId)> {
        self.conns.get(&conn).map(|c| (&c.user, &c.device))
    }

    /// Online devices of a user.
    pub fn online_devices(&self, user: &UserId) -> Vec<DeviceId> {
        self.users
            .get(user)
            .map(|e| e.devices.iter().map(|(d, _)| d.clone()).collect())
            .unwrap_or_default()
    }

    /// The live calls a user takes part in (ringing for them, calling, or
    /// in the call), oldest first; empty for a user the switchboard does
    /// not hold.
    pub fn live_calls(&self, user: &UserId) -> &[CallId] {
        self.users.get(user).map_or(&[][..], |e| e.calls.as_slice())
    }

    /// The newest event sequence number of a user (0 if none).
    pub fn last_seq(&self, user: &UserId) -> u64 {
        self.users.get(user).map_or(0, |e| e.seq)
    }

    /// Counters.
    pub fn stats(&self) -> &SwitchboardStats {
        &self.stats
    }

    /// Users, calls and timers held: for memory accounting.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.users.len(), self.calls.len(), self.timers.len())
    }

    /// Answers held in the request-id memory: for memory accounting.
    pub fn remembered_requests(&self) -> usize {
        self.requests.len()
    }
}
