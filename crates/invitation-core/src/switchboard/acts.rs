//! What a call keeps beyond its slots, only when there is some: the custom
//! data each callee answered with, and the device receipts (`received`).
//!
//! Kept beside the call, not in it: a call record and its slots are counted
//! by the million in the memory budget of pending invitations, and most
//! calls carry neither answer data nor (while their callees are offline)
//! receipts. A call with nothing here has no entry.

use std::time::Instant;

use super::call::Slot;
use super::user::LogEvent;
use super::{CallNotice, ConnId, Switchboard};
use crate::error::{CommandError, ValidationError};
use crate::id::{CallId, DeviceId};
use crate::model::CustomData;
use crate::protocol::Delivery;

/// A call's extras, per callee slot index.
#[derive(Debug, Default)]
pub(crate) struct CallExtras {
    /// The data each callee answered (accepted, declined) with.
    answers: Vec<(usize, CustomData)>,
    /// The callee devices that confirmed receipt, in the order they did.
    delivered: Vec<(usize, DeviceId)>,
}

impl CallExtras {
    /// Answer data and receipts, per slot index, in order (for snapshots).
    #[allow(clippy::type_complexity)]
    pub(crate) fn parts(&self) -> (&[(usize, CustomData)], &[(usize, DeviceId)]) {
        (&self.answers, &self.delivered)
    }

    /// Extras as a snapshot kept them.
    pub(crate) fn from_parts(
        answers: Vec<(usize, CustomData)>,
        delivered: Vec<(usize, DeviceId)>,
    ) -> Self {
        Self { answers, delivered }
    }
}

impl Switchboard {
    /// Checks an action's custom data against the invite's limit; empty data
    /// is no data.
    pub(super) fn valid_data(
        &self,
        data: Option<CustomData>,
    ) -> Result<Option<CustomData>, CommandError> {
        match data {
            Some(d) if d.len() > self.config.max_custom_data => {
                Err(CommandError::Invalid(ValidationError::TooLong {
                    field: "custom_data",
                    max: self.config.max_custom_data,
                    len: d.len(),
                }))
            }
            Some(d) if d.is_empty() => Ok(None),
            other => Ok(other),
        }
    }

    /// Remembers the data callee `slot` answered with (for the caller's
    /// snapshots while the call is held).
    pub(super) fn note_answer(&mut self, call_id: &CallId, slot: usize, data: &Option<CustomData>) {
        if let Some(data) = data {
            let extras = self.extras.entry(call_id.clone()).or_default();
            extras.answers.push((slot, data.clone()));
        }
    }

    /// The data callee `slot` answered with, if any.
    pub(super) fn answer_data(&self, call_id: &CallId, slot: usize) -> Option<CustomData> {
        let extras = self.extras.get(call_id)?;
        extras
            .answers
            .iter()
            .find(|(i, _)| *i == slot)
            .map(|(_, d)| d.clone())
    }

    /// The devices that confirmed receipt of `call_id`, in order.
    pub(super) fn deliveries(&self, call_id: &CallId) -> Vec<Delivery> {
        let (Some(extras), Some(call)) = (self.extras.get(call_id), self.calls.get(call_id)) else {
            return Vec::new();
        };
        extras
            .delivered
            .iter()
            .map(|(i, d)| Delivery::new(call.info.callees[*i].id.clone(), d.clone()))
            .collect()
    }

    /// A receipt from connection `conn`: its device has `call_id`'s
    /// invitation. Counted once per device while the device's user still
    /// rings; anything else (an unknown or foreign call, a call that no
    /// longer rings for the user, a repeat, a device past
    /// [`super::SwitchboardConfig::max_receipts_per_callee`]) changes
    /// nothing. Never answered.
    ///
    /// A receipt is no call milestone: the notices of the previous input
    /// stay queued ([`Switchboard::poll_notice`]).
    pub fn handle_receipt(&mut self, now: Instant, conn: ConnId, call_id: &CallId) {
        let now = self.advance_keeping_notices(now);
        if !self.receipt(conn, call_id) {
            self.stats.ignored_receipts += 1;
        }
        self.flush(now);
    }

    fn receipt(&mut self, conn: ConnId, call_id: &CallId) -> bool {
        let Some(entry) = self.conns.get(&conn) else {
            return false;
        };
        let Some(call) = self.calls.get(call_id) else {
            return false;
        };
        let Some(i) = call.slot_of(&entry.user) else {
            return false;
        };
        if call.is_ended() || !matches!(call.slots[i], Slot::Ringing { .. }) {
            return false;
        }
        let (user, device) = (entry.user.clone(), entry.device.clone());
        let caller = call.info.caller.id.clone();
        let max = self.config.max_receipts_per_callee;
        let extras = self.extras.entry(call_id.clone()).or_default();
        let mine = || extras.delivered.iter().filter(|(s, _)| *s == i);
        if mine().any(|(_, d)| *d == device) || mine().count() >= max {
            return false;
        }
        extras.delivered.push((i, device.clone()));
        self.notices.push_back(CallNotice::Delivered {
            call_id: call_id.clone(),
            caller: caller.clone(),
            callee: user.clone(),
            device: device.clone(),
        });
        if !self.config.hide_callee_status {
            self.pending.push((
                caller,
                LogEvent::CalleeDelivered(Box::new((call_id.clone(), user, device))),
            ));
        }
        true
    }

    /// The call is forgotten: so are its extras.
    pub(super) fn forget_extras(&mut self, call_id: &CallId) {
        self.extras.remove(call_id);
        self.pushed.remove(call_id);
    }
}
