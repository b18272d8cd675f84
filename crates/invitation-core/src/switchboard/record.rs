//! Call records: what a call was, once it is over, for the owner to keep
//! (billing, support, history). One per call, built when the call ends,
//! drained with [`Switchboard::poll_record`], when
//! [`super::SwitchboardConfig::call_records`] is on.
//!
//! The switchboard knows only [`Instant`]s, so its records carry them
//! (`CallRecord<Instant>`); an owner that stores records maps the times to
//! its own clock with [`CallRecord::map_times`] (the server keeps unix
//! nanoseconds: `CallRecord<i64>`, which serde writes as JSON).

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Switchboard;
use super::call::Slot;
use crate::id::{CallId, DeviceId, UserId};
use crate::model::{CallType, CustomData, Reason};

/// One ended call. `T` is the time type: [`Instant`] as the switchboard
/// emits it, or whatever an owner maps it to (unix nanoseconds in the
/// server's store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CallRecord<T = Instant> {
    /// The call.
    pub call_id: CallId,
    /// Who invited.
    pub caller: UserId,
    /// The caller's device that invited.
    pub caller_device: DeviceId,
    /// Voice or video.
    pub call_type: CallType,
    /// The invite's custom data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_data: Option<CustomData>,
    /// Everyone invited, in invitation order (the invite's callees, then
    /// those added later), each with their final outcome.
    pub callees: Vec<CalleeRecord>,
    /// When the invitation was made.
    pub invited_at: T,
    /// The first accept, if anyone ever accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_at: Option<T>,
    /// When the call ended for everyone.
    pub ended_at: T,
    /// From the first accept to the end; zero when nobody accepted.
    /// Written as whole nanoseconds (`duration_ns`).
    #[serde(rename = "duration_ns", with = "nanos")]
    pub duration: Duration,
    /// Why the call ended, as the caller saw it: `hung_up` once anyone
    /// accepted, `server_shutdown` when the server stopped, otherwise the
    /// callees' outcome (`declined`, `busy`, `timeout`, `canceled`,
    /// `caller_gone`, `unreachable`; the first of these that occurred when
    /// a group's callees differ).
    pub reason: Reason,
}

/// One callee of a [`CallRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CalleeRecord {
    /// The callee.
    pub user: UserId,
    /// The final outcome: `accepted` (also when they left or joined late),
    /// `declined`, `busy`, `timeout`, `canceled`, `caller_gone`,
    /// `unreachable`, `server_shutdown`. A callee rung again after a first
    /// outcome has the outcome of the last ring.
    pub outcome: Reason,
    /// The device that accepted (or joined) or declined, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceId>,
    /// Invited with `add` into the running call, not by the invite.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub added: bool,
}

impl CalleeRecord {
    /// A callee with `outcome`, no device, invited by the invite.
    pub fn new(user: UserId, outcome: Reason) -> Self {
        Self {
            user,
            outcome,
            device: None,
            added: false,
        }
    }
}

impl<T> CallRecord<T> {
    /// A record without custom data, callees or answer; set the public
    /// fields for the rest.
    pub fn new(
        call_id: CallId,
        caller: UserId,
        caller_device: DeviceId,
        call_type: CallType,
        invited_at: T,
        ended_at: T,
        reason: Reason,
    ) -> Self {
        Self {
            call_id,
            caller,
            caller_device,
            call_type,
            custom_data: None,
            callees: Vec::new(),
            invited_at,
            answered_at: None,
            ended_at,
            duration: Duration::ZERO,
            reason,
        }
    }

    /// The same record with every time mapped by `f` (for instance to unix
    /// nanoseconds); the duration is kept as measured.
    pub fn map_times<U>(self, mut f: impl FnMut(T) -> U) -> CallRecord<U> {
        CallRecord {
            call_id: self.call_id,
            caller: self.caller,
            caller_device: self.caller_device,
            call_type: self.call_type,
            custom_data: self.custom_data,
            callees: self.callees,
            invited_at: f(self.invited_at),
            answered_at: self.answered_at.map(&mut f),
            ended_at: f(self.ended_at),
            duration: self.duration,
            reason: self.reason,
        }
    }

    /// Whether `user` took part: the caller or one of the callees.
    pub fn involves(&self, user: &UserId) -> bool {
        &self.caller == user || self.callees.iter().any(|c| &c.user == user)
    }
}

impl Switchboard {
    /// `call_id` just ended at `now` with `reason`: queue its record. The
    /// first-accept time leaves its side table here.
    pub(super) fn record_end(&mut self, now: Instant, call_id: &CallId, reason: Reason) {
        let answered_at = self.answered_at.remove(call_id);
        if !self.config.call_records {
            return;
        }
        let call = &self.calls[call_id];
        let info = &call.info;
        let regrown = self.regrown.get(call_id).map_or(&[][..], Vec::as_slice);
        let callees = info
            .callees
            .iter()
            .zip(call.slots.iter())
            .map(|(user, slot)| CalleeRecord {
                user: user.id.clone(),
                // Nobody rings once a call ends (`end_call` asserts it).
                outcome: slot.outcome().unwrap_or(Reason::Failed),
                device: slot.device().cloned(),
                added: regrown.iter().any(|r| r.user == user.id && r.added),
            })
            .collect();
        debug_assert!(!call.slots.iter().any(Slot::is_ringing));
        // The deadline was made as invite time + ring time: exact.
        let invited_at = info.deadline.checked_sub(info.ring_for).unwrap_or(now);
        self.records.push_back(CallRecord {
            call_id: call_id.clone(),
            caller: info.caller.id.clone(),
            caller_device: info.caller_device.clone(),
            call_type: info.call_type,
            custom_data: info.custom_data.clone(),
            callees,
            invited_at,
            answered_at,
            ended_at: now,
            duration: answered_at.map_or(Duration::ZERO, |a| now.saturating_duration_since(a)),
            reason,
        });
    }

    /// The first accept of `call_id` happened at `now` (later accepts and
    /// joins keep the first): for the live call's view, then its record.
    pub(super) fn note_answered(&mut self, call_id: &CallId, now: Instant) {
        self.answered_at.entry(call_id.clone()).or_insert(now);
    }
}

/// A [`Duration`] as whole nanoseconds (saturating at `u64::MAX`, 584
/// years).
mod nanos {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_nanos)
    }
}
