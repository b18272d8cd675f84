//! What the switchboard shows its owner: call milestones, counters, and
//! read-only views of calls, users and connections.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::call::Call;
use super::{ConnId, Switchboard};
use crate::id::{CallId, DeviceId, UserId};
use crate::model::{Reason, User};

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
}

impl CallView<'_> {
    /// The call id.
    pub fn call_id(&self) -> &CallId {
        &self.call.info.call_id
    }
    /// The caller.
    pub fn caller(&self) -> &User {
        &self.call.info.caller
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
    /// The ring deadline.
    pub fn deadline(&self) -> Instant {
        self.call.info.deadline
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
        self.calls.get(call_id).map(|call| CallView { call })
    }

    /// Every call still held (live and recently ended).
    pub fn calls(&self) -> impl Iterator<Item = CallView<'_>> {
        self.calls.values().map(|call| CallView { call })
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
