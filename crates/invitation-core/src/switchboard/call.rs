//! One invitation's state: the immutable facts shared with every event, and
//! the per-callee slots that move.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::id::{CallId, DeviceId, UserId};
use crate::model::{CallType, CustomData, Reason, User};

/// What never changes after the invite. Shared (`Arc`) by the call record and
/// every log entry that mentions it, so history costs a pointer per event.
/// Only `add` makes a new one (with the longer callee list), so earlier
/// log entries keep the list they were sent with.
#[derive(Debug, Clone)]
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
///                       accept on d                          hang_up / call ends
/// Ringing{rung, dl} ───────────▶ Accepted{d, in_call} ─────────────────────▶ Accepted{d, !in_call}
///   │ decline on d                          ──▶ Ended{declined | busy, Some(d)}
///   │ timeout, canceled, caller_gone, shutdown ──▶ Ended{reason, None}
///   ▼
/// Ended{reason, device}
///
/// while the call goes on:  Ended{..} or Accepted{_, !in_call} ── join on d ──▶ Accepted{d, in_call}
///                          Ended{..} ── added again ──▶ Ringing{rung, new dl}
/// ```
///
/// A callee busy or unreachable at invite time starts in `Ended{reason,
/// None}`; `rung` turns true when a device of a ringing callee is online.
/// `dl` is the slot's ring deadline: the invite's for the first callees,
/// a later one for callees added to a running call. The first outcome is
/// reported once (`callee_outcome`); a later join or re-ring of the same
/// callee is reported as what it is (`participant_joined`, a new
/// `incoming_call`), so the slot may move on from an outcome only through
/// those two doors, and only while the call goes on.
#[derive(Debug, Clone)]
pub(crate) enum Slot {
    /// No outcome yet. `rung`: the "ringing" receipt went to the caller (a
    /// device of the callee was online at invite time or came online
    /// since). Rings until `deadline`.
    Ringing { rung: bool, deadline: Instant },
    /// Accepted (or joined) on `device`; `in_call` until that callee hangs
    /// up or the call ends.
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

    /// The ring deadline, while ringing.
    pub(crate) fn ring_deadline(&self) -> Option<Instant> {
        match self {
            Self::Ringing { deadline, .. } => Some(*deadline),
            Self::Accepted { .. } | Self::Ended { .. } => None,
        }
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

/// Where the caller stands while callees ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Presence {
    /// Inviting, or in the call.
    Here,
    /// The device that invited vanished; the caller-gone timer at this
    /// instant is in the index.
    Away(Instant),
    /// Hung up; the others went on.
    Left,
}

/// The whole call's state. The timers a call has in the index follow from
/// it, so a call that ended with a deadline still armed cannot be written:
/// one ring timer per distinct deadline of a ringing slot, and the
/// caller-gone timer exactly while `Ringing { caller: Away(at) }`.
///
/// ```text
///            nobody rings, someone accepted (and ≥ 2 in the call)
/// Ringing ──────────────────────────────────────▶ InProgress
///    │  ◀──────────────────────────────────────────  │
///    │        a participant adds callees              │
///    │ nobody rings, nobody ever accepted             │ fewer than two left in it;
///    │ (all declined, timeout, canceled ...)          │ an allowed `end`; shutdown
///    ▼                                                ▼
/// Ended(reason) ◀─────────────────────────────────────┘
/// ```
///
/// Once someone accepted, the call ends as soon as fewer than two
/// participants are in it (still-ringing invitees are then canceled), from
/// `Ringing` as well as from `InProgress`. Every input that changes a slot
/// settles the call before it returns, so between inputs `Ringing` holds
/// exactly while a callee rings.
///
/// (Kept to 16 bytes: the caller's presence rides in the spare values of
/// the instant, so a call record stays at 40 bytes.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallState {
    /// A callee rings (or did until the current input).
    Ringing { caller: Presence },
    /// Nobody rings; no timer is armed. `caller_in`: the caller has not
    /// left.
    InProgress { caller_in: bool },
    /// Over for everyone: the reason the caller saw.
    Ended(Reason),
}

#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) info: Arc<CallInfo>,
    /// Aligned with `info.callees`; grows only when a participant adds
    /// callees (rare: the slice is then reallocated), so no spare capacity
    /// (a boxed slice is 8 bytes smaller than a `Vec`).
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
            CallState::Ringing { .. } | CallState::InProgress { .. } => None,
        }
    }

    pub(crate) fn is_ended(&self) -> bool {
        matches!(self.state, CallState::Ended(_))
    }

    /// The caller-gone grace deadline, when armed.
    pub(crate) fn caller_gone_at(&self) -> Option<Instant> {
        match self.state {
            CallState::Ringing {
                caller: Presence::Away(at),
            } => Some(at),
            _ => None,
        }
    }

    /// The latest ring deadline of a ringing slot (what the caller's ring
    /// time left counts down to).
    pub(crate) fn last_ring_deadline(&self) -> Option<Instant> {
        self.slots.iter().filter_map(Slot::ring_deadline).max()
    }

    /// A callee is in the call.
    pub(crate) fn anyone_in_call(&self) -> bool {
        self.slots.iter().any(Slot::in_call)
    }

    /// The caller has not left (inviting, or in the call) and the call is
    /// live.
    pub(crate) fn caller_in(&self) -> bool {
        match self.state {
            CallState::Ringing { caller } => caller != Presence::Left,
            CallState::InProgress { caller_in } => caller_in,
            CallState::Ended(_) => false,
        }
    }

    /// Someone accepted at some point: the call is (or was) a conversation,
    /// not only an invitation.
    pub(crate) fn established(&self) -> bool {
        self.slots
            .iter()
            .any(|s| matches!(s, Slot::Accepted { .. }))
    }

    /// How many are in the call now: the caller (unless they left) and
    /// every callee in it.
    pub(crate) fn present(&self) -> usize {
        usize::from(self.caller_in()) + self.slots.iter().filter(|s| s.in_call()).count()
    }

    /// Everyone in the call now, with their device: the caller first, then
    /// callees in slot order.
    pub(crate) fn participants(&self) -> Vec<(UserId, DeviceId)> {
        let mut out = Vec::new();
        if self.caller_in() {
            out.push((self.info.caller.id.clone(), self.info.caller_device.clone()));
        }
        for (u, s) in self.info.callees.iter().zip(self.slots.iter()) {
            if let Slot::Accepted {
                device,
                in_call: true,
            } = s
            {
                out.push((u.id.clone(), device.clone()));
            }
        }
        out
    }

    /// Everyone in the call now, but `except`: the caller first, then
    /// callees in slot order.
    pub(crate) fn present_except(&self, except: &UserId) -> Vec<UserId> {
        let mut out = Vec::new();
        if self.caller_in() && &self.info.caller.id != except {
            out.push(self.info.caller.id.clone());
        }
        for (u, s) in self.info.callees.iter().zip(self.slots.iter()) {
            if s.in_call() && &u.id != except {
                out.push(u.id.clone());
            }
        }
        out
    }

    pub(crate) fn slot_of(&self, user: &UserId) -> Option<usize> {
        self.info.callees.iter().position(|u| &u.id == user)
    }

    /// When `user`'s ring ends, while it rings.
    pub(crate) fn ring_deadline(&self, user: &UserId) -> Option<Instant> {
        match self.slots.get(self.slot_of(user)?)? {
            Slot::Ringing { deadline, .. } => Some(*deadline),
            _ => None,
        }
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
        assert!(
            size_of::<CallState>() <= 16,
            "CallState: {} bytes",
            size_of::<CallState>()
        );
    }
}
