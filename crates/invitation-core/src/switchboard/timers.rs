//! One ordered deadline index for the whole switchboard.
//!
//! Each live invitation has at most two deadlines (ring timeout, caller-gone
//! grace); they sit in one `BTreeSet` ordered by instant, so finding the next
//! deadline is O(log n) and firing k due timers costs O(k log n): a million
//! pending invitations cost no scans.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::id::CallId;

/// What a deadline is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum TimerKind {
    /// The ring timeout of a call.
    Ring,
    /// The caller's device vanished; cancel the call unless it comes back.
    CallerGone,
}

#[derive(Debug, Default)]
pub(crate) struct Timers {
    index: BTreeSet<(Instant, TimerKind, CallId)>,
}

impl Timers {
    pub(crate) fn insert(&mut self, at: Instant, kind: TimerKind, call: CallId) {
        self.index.insert((at, kind, call));
    }

    pub(crate) fn remove(&mut self, at: Instant, kind: TimerKind, call: &CallId) {
        // BTreeSet::remove needs an owned key; the clone is an Arc bump.
        self.index.remove(&(at, kind, call.clone()));
    }

    pub(crate) fn next(&self) -> Option<Instant> {
        self.index.first().map(|(at, _, _)| *at)
    }

    /// Removes and returns the earliest timer due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, TimerKind, CallId)> {
        if self.index.first()?.0 <= now {
            self.index.pop_first()
        } else {
            None
        }
    }

    /// Every timer, earliest first (for snapshots).
    pub(crate) fn iter(&self) -> impl Iterator<Item = &(Instant, TimerKind, CallId)> {
        self.index.iter()
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }
}
