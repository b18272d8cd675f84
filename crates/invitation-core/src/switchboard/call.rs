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

/// One callee's progress. Each state carries exactly what it knows, so a
/// callee in the call without the device that accepted, or an outcome that
/// still waits for a ringing receipt, cannot be written.
///
/// ```text
///               accept on d                          hang_up / call ends
/// Ringing{rung} ───────────▶ Accepted{d, in_call} ─────────────────────▶ Accepted{d, !in_call}
///   │ decline on d                          ──▶ Ended{declined | busy, Some(d)}
///   │ timeout, canceled, caller_gone, shutdown ──▶ Ended{reason, None}
///   ▼
/// Ended{reason, device}
/// ```
///
/// A callee busy or unreachable at invite time starts in `Ended{reason,
/// None}`; `rung` turns true when a device of a ringing callee is online.
/// The outcome (accepted, or the `Ended` reason) is written once and never
/// changes.
#[derive(Debug, Clone)]
pub(crate) enum Slot {
    /// No outcome yet. `rung`: the "ringing" receipt went to the caller (a
    /// device of the callee was online at invite time or came online since).
    Ringing { rung: bool },
    /// Accepted on `device`; `in_call` until that callee hangs up or the
    /// call ends.
    Accepted { device: DeviceId, in_call: bool },
    /// Any other outcome (never `accepted`); `device` is the one that
    /// declined, when a device did.
    Ended {
        reason: Reason,
        device: Option<DeviceId>,
    },
}

impl Slot {
    /// An outcome the switchboard decided, not a device (busy or
    /// unreachable at invite time, timeout, canceled ...).
    pub(crate) fn decided(reason: Reason) -> Self {
        Self::Ended {
            reason,
            device: None,
        }
    }

    pub(crate) fn is_ringing(&self) -> bool {
        matches!(self, Self::Ringing { .. })
    }

    /// The terminal outcome, `None` while ringing.
    pub(crate) fn outcome(&self) -> Option<Reason> {
        match self {
            Self::Ringing { .. } => None,
            Self::Accepted { .. } => Some(Reason::Accepted),
            Self::Ended { reason, .. } => Some(*reason),
        }
    }

    /// The device that accepted or declined, if one did.
    pub(crate) fn device(&self) -> Option<&DeviceId> {
        match self {
            Self::Ringing { .. } => None,
            Self::Accepted { device, .. } => Some(device),
            Self::Ended { device, .. } => device.as_ref(),
        }
    }

    /// Accepted and not yet hung up.
    pub(crate) fn in_call(&self) -> bool {
        matches!(self, Self::Accepted { in_call: true, .. })
    }

    /// How this callee's ending looks from one of its devices.
    pub(crate) fn reason_seen_by(&self, device: &DeviceId) -> Option<Reason> {
        Some(match self {
            Self::Ringing { .. } => return None,
            Self::Accepted { device: d, in_call } if d == device && !in_call => Reason::HungUp,
            Self::Accepted { device: d, .. } if d != device => Reason::AnsweredElsewhere,
            Self::Accepted { .. } => Reason::Accepted,
            Self::Ended { reason, device: d } => match reason {
                Reason::Declined | Reason::Busy if d.as_ref() != Some(device) => {
                    Reason::DeclinedElsewhere
                }
                other => *other,
            },
        })
    }
}

/// The whole call's state. The timers a call has in the index follow from
/// it, so a call that ended with a deadline still armed cannot be written.
///
/// ```text
///            nobody rings, a callee in the call
/// Ringing ──────────────────────────────────────▶ InProgress
///    │ nobody rings, nobody in the call               │ the caller or the last callee
///    │ (all declined, timeout, canceled ...)          │ hangs up; server shutdown
///    ▼                                                ▼
/// Ended(reason) ◀─────────────────────────────────────┘
/// ```
///
/// Every input that changes a slot settles the call before it returns, so
/// between inputs `Ringing` holds exactly while a callee rings, and
/// `InProgress` while the caller and a callee are in the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallState {
    /// A callee rings (or did until the current input). The ring timer is
    /// in the index, and the caller-gone one at `gone_at` once the caller's
    /// device vanished.
    Ringing { gone_at: Option<Instant> },
    /// Nobody rings; no timer is armed.
    InProgress,
    /// Over for everyone: the reason the caller saw.
    Ended(Reason),
}

#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) info: Arc<CallInfo>,
    /// Aligned with `info.callees`; never grows, so no spare capacity (a
    /// boxed slice is 8 bytes smaller than a `Vec`).
    pub(crate) slots: Box<[Slot]>,
    pub(crate) state: CallState,
}

impl Call {
    pub(crate) fn is_ringing(&self) -> bool {
        !self.is_ended() && self.slots.iter().any(Slot::is_ringing)
    }

    /// The reason the whole call ended, once it has.
    pub(crate) fn ended(&self) -> Option<Reason> {
        match self.state {
            CallState::Ended(reason) => Some(reason),
            CallState::Ringing { .. } | CallState::InProgress => None,
        }
    }

    pub(crate) fn is_ended(&self) -> bool {
        matches!(self.state, CallState::Ended(_))
    }

    /// The caller-gone grace deadline, when armed.
    pub(crate) fn caller_gone_at(&self) -> Option<Instant> {
        match self.state {
            CallState::Ringing { gone_at } => gone_at,
            CallState::InProgress | CallState::Ended(_) => None,
        }
    }

    /// A callee is in the call. The caller is too unless the call ended,
    /// and an ended call has nobody in it.
    pub(crate) fn anyone_in_call(&self) -> bool {
        self.slots.iter().any(Slot::in_call)
    }

    pub(crate) fn slot_of(&self, user: &UserId) -> Option<usize> {
        self.info.callees.iter().position(|u| &u.id == user)
    }

    /// The caller's reason when the call ends: `hung_up` if anyone ever
    /// accepted; otherwise the shared outcome, or for mixed group outcomes
    /// the first of declined, busy, timeout, canceled, caller_gone,
    /// unreachable that occurred.
    pub(crate) fn final_reason(&self) -> Reason {
        let outcomes = || self.slots.iter().filter_map(Slot::outcome);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A pending invitation holds one `Call` and a `Slot` per callee (the
    /// memory benchmark counts them by the million): the state enums must
    /// cost no more than the flags and options they replaced (24 bytes per
    /// slot; 56 per call, now 40: the state is one enum and the slots a
    /// boxed slice, which puts a boxed call in a smaller allocator class).
    #[test]
    fn states_stay_compact() {
        assert!(size_of::<Slot>() <= 24, "Slot: {} bytes", size_of::<Slot>());
        assert!(size_of::<Call>() <= 40, "Call: {} bytes", size_of::<Call>());
    }
}
