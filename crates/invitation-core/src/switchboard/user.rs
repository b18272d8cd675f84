//! Per-user state: online devices, the sequenced event log (the resume
//! buffer) and the user's live calls.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use foldhash::HashMap;

use super::ConnId;
use super::call::CallInfo;
use crate::id::{CallId, DeviceId, UserId};
use crate::model::{CustomData, Reason, User};
use crate::protocol::LeaveReason;

/// One entry of a user's event log. Kept compact: the big events point at
/// the shared [`CallInfo`]; ring time left is computed when sent.
#[derive(Debug, Clone)]
pub(crate) enum LogEvent {
    Incoming(Arc<CallInfo>),
    Outgoing(Arc<CallInfo>),
    IncomingEnded {
        call: CallId,
        reason: Reason,
        device: Option<DeviceId>,
    },
    CalleeRinging {
        call: CallId,
        callee: UserId,
    },
    CalleeOutcome {
        call: CallId,
        callee: UserId,
        reason: Reason,
    },
    CallEnded {
        call: CallId,
        reason: Reason,
    },
    /// Any of the above with an action's custom data. Boxed so that data
    /// nobody sent costs no log space (every entry is as big as the biggest
    /// variant).
    WithData(Box<(LogEvent, CustomData)>),
    /// A callee device confirmed receipt: call, callee, device (boxed for
    /// the same reason).
    CalleeDelivered(Box<(CallId, UserId, DeviceId)>),
    /// Boxed: rare, and three ids would make every log entry bigger.
    ParticipantJoined(Box<(CallId, UserId, DeviceId)>),
    ParticipantLeft {
        call: CallId,
        user: UserId,
        reason: LeaveReason,
    },
}

impl LogEvent {
    /// This event carrying `data`, when there is some.
    pub(crate) fn with_data(self, data: Option<CustomData>) -> Self {
        match data {
            Some(data) => LogEvent::WithData(Box::new((self, data))),
            None => self,
        }
    }
}

/// A call that recently ended for a user: its id, the reason, and the data
/// of the action that ended it (for `sync`).
pub(crate) type RecentEnded = (CallId, Reason, Option<CustomData>);

#[derive(Debug)]
pub(crate) struct UserEntry {
    pub(crate) user: User,
    /// Online devices and their current connection.
    pub(crate) devices: Vec<(DeviceId, ConnId)>,
    /// The newest events, ending with sequence number `seq`: `log[i]` has
    /// `first_seq() + i`.
    pub(crate) log: VecDeque<LogEvent>,
    /// The newest sequence number assigned (0: none yet).
    pub(crate) seq: u64,
    /// Live calls the user takes part in (ringing for them, or in call).
    pub(crate) calls: Vec<CallId>,
    /// Calls that recently ended for this user, for `sync`. Boxed and made
    /// on first use: an offline callee with one pending invitation (a
    /// million of them is the memory benchmark) never needs it. (The box
    /// is the point: 8 bytes here instead of a 32-byte empty deque.)
    #[allow(clippy::box_collection)]
    recent_ended: Option<Box<VecDeque<RecentEnded>>>,
    /// Since when the user has had no device and no call.
    pub(crate) idle_since: Option<Instant>,
}

impl UserEntry {
    pub(crate) fn new(user: User) -> Self {
        Self {
            user,
            devices: Vec::new(),
            log: VecDeque::new(),
            seq: 0,
            calls: Vec::new(),
            recent_ended: None,
            idle_since: None,
        }
    }

    /// Sequence number of `log[0]` (`seq + 1` while the log is empty).
    pub(crate) fn first_seq(&self) -> u64 {
        self.seq + 1 - self.log.len() as u64
    }

    /// Appends an event, evicting the oldest past `cap`; returns its seq.
    pub(crate) fn append(&mut self, event: LogEvent, cap: usize) -> u64 {
        self.seq += 1;
        // Grow one slot at a time while small: most users have a handful of
        // events, and the default growth (to 4, 8, ...) would dominate the
        // memory of a million pending invitations.
        if self.log.len() == self.log.capacity() && self.log.len() < 8 {
            self.log.reserve_exact(1);
        }
        self.log.push_back(event);
        while self.log.len() > cap.max(1) {
            self.log.pop_front();
        }
        self.seq
    }

    /// True when every event after `last_seq` is still in the buffer.
    pub(crate) fn can_resume(&self, last_seq: u64) -> bool {
        if last_seq > self.seq {
            return false; // the server forgot this user (restart, purge)
        }
        last_seq == self.seq || last_seq + 1 >= self.first_seq()
    }

    /// Events after `last_seq`, with their sequence numbers.
    pub(crate) fn since(&self, last_seq: u64) -> impl Iterator<Item = (u64, &LogEvent)> {
        let first = self.first_seq();
        let skip = (last_seq + 1).saturating_sub(first) as usize;
        self.log
            .iter()
            .enumerate()
            .skip(skip)
            .map(move |(i, e)| (first + i as u64, e))
    }

    pub(crate) fn add_call(&mut self, call: &CallId) {
        if !self.calls.contains(call) {
            if self.calls.len() == self.calls.capacity() && self.calls.len() < 4 {
                self.calls.reserve_exact(1);
            }
            self.calls.push(call.clone());
        }
    }

    /// The user is in (or rings for) a call again after it ended for them:
    /// live again, and no longer listed as ended.
    pub(crate) fn rejoin_call(&mut self, call: &CallId) {
        self.add_call(call);
        if let Some(recent) = self.recent_ended.as_mut() {
            recent.retain(|(c, ..)| c != call);
        }
    }

    /// The call ended for this user: forget it as live, remember the reason.
    #[allow(dead_code)] // for endings no action data goes with
    pub(crate) fn end_call(&mut self, call: &CallId, reason: Reason, keep: usize) {
        self.end_call_with(call, reason, None, keep);
    }

    /// [`UserEntry::end_call`], remembering the data of the action that
    /// ended it.
    pub(crate) fn end_call_with(
        &mut self,
        call: &CallId,
        reason: Reason,
        data: Option<CustomData>,
        keep: usize,
    ) {
        if let Some(i) = self.calls.iter().position(|c| c == call) {
            self.calls.swap_remove(i);
            if keep > 0 {
                let recent = self.recent_ended.get_or_insert_default();
                if recent.len() >= keep {
                    recent.pop_front();
                }
                if recent.len() == recent.capacity() && recent.len() < 4 {
                    recent.reserve_exact(1);
                }
                recent.push_back((call.clone(), reason, data));
            }
        }
    }

    /// Calls that recently ended for this user, oldest first.
    pub(crate) fn recent_ended(&self) -> impl Iterator<Item = &RecentEnded> {
        self.recent_ended.iter().flat_map(|r| r.iter())
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.devices.is_empty() && self.calls.is_empty()
    }

    /// The recently ended list as it is (for snapshots): `None` until
    /// first used.
    pub(crate) fn recent_ended_list(&self) -> Option<&VecDeque<RecentEnded>> {
        self.recent_ended.as_deref()
    }

    /// Puts back a recently ended list (restoring a snapshot).
    pub(crate) fn set_recent_ended(&mut self, list: Option<VecDeque<RecentEnded>>) {
        self.recent_ended = list.map(Box::new);
    }
}

/// Users with no device and no live call, in the order they became so.
///
/// Every user record the switchboard makes (a connecting device, or a callee
/// named in an invite, who may be an id nobody will ever use) is noted here
/// whenever it turns idle, and forgotten once it stayed idle for the window.
/// A user who becomes busy again is skipped when their old note comes up
/// (notes are checked against `idle_since`, not removed).
#[derive(Debug, Default)]
pub(crate) struct IdleUsers {
    queue: VecDeque<(Instant, UserId)>,
}

impl IdleUsers {
    /// Notes `user` as idle since `now` if it is idle and not noted yet.
    pub(crate) fn note(&mut self, user: &UserId, entry: &mut UserEntry, now: Instant) {
        if entry.is_idle() && entry.idle_since.is_none() {
            entry.idle_since = Some(now);
            self.queue.push_back((now, user.clone()));
        }
    }

    /// The notes, oldest first (for snapshots).
    pub(crate) fn notes(&self) -> impl Iterator<Item = &(Instant, UserId)> {
        self.queue.iter()
    }

    /// Notes as a snapshot kept them, oldest first.
    pub(crate) fn from_notes(queue: VecDeque<(Instant, UserId)>) -> Self {
        Self { queue }
    }

    /// Forgets the users idle for at least `window` at `now`.
    pub(crate) fn forget(
        &mut self,
        users: &mut HashMap<UserId, Box<UserEntry>>,
        now: Instant,
        window: Duration,
    ) {
        while let Some((since, _)) = self.queue.front() {
            if since.checked_add(window).is_none_or(|at| at > now) {
                break;
            }
            let (since, user) = self.queue.pop_front().expect("front exists");
            if users
                .get(&user)
                .is_some_and(|e| e.is_idle() && e.idle_since == Some(since))
            {
                users.remove(&user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every log entry is as big as the biggest variant, and a pending
    /// invitation holds two: action data, device receipts and the events of
    /// calls that grow are boxed so that they cost nothing when absent (40
    /// bytes, as before them).
    #[test]
    fn log_events_stay_compact() {
        assert!(
            size_of::<LogEvent>() <= 40,
            "LogEvent: {} bytes",
            size_of::<LogEvent>()
        );
    }
}
