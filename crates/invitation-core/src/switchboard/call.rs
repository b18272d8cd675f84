//! One invitation's state: the immutable facts shared with every event, and
//! the per-callee slots that move.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::id::{CallId, DeviceId, UserId};
use crate::model::{CallType, CustomData, Reason, User};

/// What never changes after the invite. Shared (`Arc`) by the call record and
/// every log entry that mentions it, so history costs a pointer per event.
#[derive(Debug)]
pub(crate) struct CallInfo {
    pub(crate) call_id: CallId,
    pub(crate) caller: User,
    pub(crate) caller_device: DeviceId,
    pub(crate) call_type: CallType,
    pub(crate) callees: Arc<[User]>,
    pub(crate) custom_data: Option<CustomData>,
    pub(crate) deadline: Instant,
    pub(crate) ring_for: Duration,
}

/// One callee's progress.
///
/// ```text
///            accept (device d)           hang_up / call ends
/// Ringing ─────────────────────▶ Accepted{d, in_call} ──────────▶ Accepted{d, !in_call}
///    │ decline / busy / timeout / canceled / caller_gone
///    ▼
///  Ended(reason)            (outcome is written once and never changes)
/// ```
#[derive(Debug, Clone, Default)]
pub(crate) struct Slot {
    /// `None` while ringing; the terminal outcome afterwards.
    pub(crate) outcome: Option<Reason>,
    /// The device that accepted or declined, if one did.
    pub(crate) device: Option<DeviceId>,
    /// Accepted and not yet hung up.
    pub(crate) in_call: bool,
    /// The "ringing" receipt was sent to the caller.
    pub(crate) rung: bool,
}

impl Slot {
    pub(crate) fn is_ringing(&self) -> bool {
        self.outcome.is_none()
    }

    /// How this callee's ending looks from one of its devices.
    pub(crate) fn reason_seen_by(&self, device: &DeviceId) -> Option<Reason> {
        let outcome = self.outcome?;
        let mine = self.device.as_ref() == Some(device);
        Some(match outcome {
            Reason::Accepted if mine && !self.in_call => Reason::HungUp,
            Reason::Accepted if !mine => Reason::AnsweredElsewhere,
            Reason::Declined | Reason::Busy if !mine => Reason::DeclinedElsewhere,
            other => other,
        })
    }
}

#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) info: Arc<CallInfo>,
    /// Aligned with `info.callees`.
    pub(crate) slots: Vec<Slot>,
    /// The caller has not hung up.
    pub(crate) caller_in_call: bool,
    /// Set once the whole call is over: the reason the caller saw.
    pub(crate) ended: Option<Reason>,
    /// The ring timer is in the index.
    pub(crate) ring_armed: bool,
    /// The caller-gone grace deadline, when armed.
    pub(crate) gone_at: Option<Instant>,
}

impl Call {
    pub(crate) fn is_ringing(&self) -> bool {
        self.ended.is_none() && self.slots.iter().any(Slot::is_ringing)
    }

    pub(crate) fn anyone_in_call(&self) -> bool {
        self.caller_in_call && self.slots.iter().any(|s| s.in_call)
    }

    pub(crate) fn slot_of(&self, user: &UserId) -> Option<usize> {
        self.info.callees.iter().position(|u| &u.id == user)
    }

    /// The caller's reason when the call ends: `hung_up` if anyone ever
    /// accepted; otherwise the shared outcome, or for mixed group outcomes
    /// the first of declined, busy, timeout, canceled, caller_gone,
    /// unreachable that occurred.
    pub(crate) fn final_reason(&self) -> Reason {
        let outcomes = || self.slots.iter().filter_map(|s| s.outcome);
        if outcomes().any(|r| r == Reason::Accepted) {
            return Reason::HungUp;
        }
        for r in [
            Reason::Declined,
            Reason::Busy,
            Reason::Timeout,
            Reason::Canceled,
            Reason::CallerGone,
            Reason::Unreachable,
        ] {
            if outcomes().any(|o| o == r) {
                return r;
            }
        }
        Reason::Failed
    }
}
