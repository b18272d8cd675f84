//! The session's one timer table.
//!
//! Every deadline the session keeps (command retries and deadlines, gap and
//! `sync` recovery, the fallback ring timers) is one entry here, keyed by
//! what it is for. Entries are ordered by instant, so the next wake-up is
//! the first entry and firing `k` due timers costs O(k log n); a key maps to
//! its instant, so re-arming or disarming one is O(log n). No timeout scans
//! the pending commands or the calls.
//!
//! Retries, the gap timer and the `sync` retry need the link: they are armed
//! only while connected and all disarmed when the link drops (see
//! [`TimerKey::needs_link`]). Command deadlines and fallback ring timers run
//! whatever the link does.

use std::collections::BTreeSet;
use std::time::Instant;

use foldhash::HashMap;

use crate::id::CallId;

/// What a timer is for. Commands are named by their issue number (the
/// counter behind their request id), so that timers due at the same instant
/// fire in issue order, as the commands were sent.
///
/// The variant order is the firing order of timers due at the same instant.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) enum TimerKey {
    /// The command's deadline: past it, the command is given up.
    Deadline(u64),
    /// The command is sent again (same request id) if still unanswered.
    Retry(u64),
    /// A sequence gap stayed open too long: ask for a `sync`.
    Gap,
    /// The awaited `sync` did not come: ask again.
    SyncRetry,
    /// The local fallback that ends a ring the server never ended.
    Fallback(CallId),
}

impl TimerKey {
    /// True for timers that only make sense while the link is up.
    pub(super) fn needs_link(&self) -> bool {
        matches!(self, Self::Retry(_) | Self::Gap | Self::SyncRetry)
    }
}

/// Timers by instant, and each armed key's instant.
#[derive(Debug, Default)]
pub(super) struct Timers {
    queue: BTreeSet<(Instant, TimerKey)>,
    armed: HashMap<TimerKey, Instant>,
}

impl Timers {
    /// Arms `key` at `at`, replacing its previous instant if it was armed.
    pub(super) fn arm(&mut self, key: TimerKey, at: Instant) {
        if let Some(old) = self.armed.insert(key.clone(), at) {
            self.queue.remove(&(old, key.clone()));
        }
        self.queue.insert((at, key));
    }

    /// Disarms `key`; a no-op if it was not armed.
    pub(super) fn disarm(&mut self, key: &TimerKey) {
        if let Some(at) = self.armed.remove(key) {
            self.queue.remove(&(at, key.clone()));
        }
    }

    pub(super) fn is_armed(&self, key: &TimerKey) -> bool {
        self.armed.contains_key(key)
    }

    /// The earliest armed instant.
    pub(super) fn next(&self) -> Option<Instant> {
        self.queue.first().map(|(at, _)| *at)
    }

    /// Disarms and returns every timer due at `now`, earliest first. Timers
    /// armed while these are handled wait for the next call, so a zero
    /// backoff cannot spin.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<TimerKey> {
        let mut due = Vec::new();
        while self.queue.first().is_some_and(|(at, _)| *at <= now) {
            if let Some((_, key)) = self.queue.pop_first() {
                self.armed.remove(&key);
                due.push(key);
            }
        }
        due
    }

    /// Disarms every timer that needs the link (the link dropped).
    pub(super) fn disarm_linked(&mut self) {
        self.queue.retain(|(_, key)| !key.needs_link());
        self.armed.retain(|key, _| !key.needs_link());
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rearming_moves_the_entry_and_due_timers_come_out_in_order() {
        #[allow(clippy::disallowed_methods)] // the origin of test time
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut timers = Timers::default();
        timers.arm(TimerKey::Retry(2), t0 + s(2));
        timers.arm(TimerKey::Retry(1), t0 + s(2));
        timers.arm(TimerKey::Gap, t0 + s(1));
        timers.arm(TimerKey::Gap, t0 + s(5)); // re-armed: one entry
        timers.arm(TimerKey::Deadline(1), t0 + s(2));
        assert_eq!(timers.len(), 4);
        assert_eq!(timers.next(), Some(t0 + s(2)));
        assert!(timers.take_due(t0 + s(1)).is_empty());
        assert_eq!(
            timers.take_due(t0 + s(3)),
            [
                TimerKey::Deadline(1),
                TimerKey::Retry(1),
                TimerKey::Retry(2)
            ]
        );
        assert_eq!(timers.next(), Some(t0 + s(5)));
        timers.disarm(&TimerKey::Gap);
        assert_eq!(timers.next(), None);
        assert_eq!(timers.len(), 0);
    }

    #[test]
    fn a_dropped_link_disarms_only_the_link_timers() {
        #[allow(clippy::disallowed_methods)] // the origin of test time
        let t0 = Instant::now();
        let call = CallId::new("c1").unwrap();
        let mut timers = Timers::default();
        for key in [
            TimerKey::Retry(1),
            TimerKey::Gap,
            TimerKey::SyncRetry,
            TimerKey::Deadline(1),
            TimerKey::Fallback(call.clone()),
        ] {
            timers.arm(key, t0);
        }
        timers.disarm_linked();
        assert_eq!(
            timers.take_due(t0),
            [TimerKey::Deadline(1), TimerKey::Fallback(call)]
        );
        assert!(!timers.is_armed(&TimerKey::Gap));
    }
}
