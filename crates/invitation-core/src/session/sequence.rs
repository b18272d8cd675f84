//! Event sequence numbers: duplicates, the reorder buffer, gaps, and
//! asking for a full `sync` when the stream cannot be resumed.

use std::time::Instant;

use crate::protocol::{ClientMessage, Control, Event};

use super::{ClientSession, TimerKey};

impl ClientSession {
    /// Event `seq` arrived; `None` is an event of a type this version does
    /// not know: it takes its place in the order like any other (so the
    /// position moves past it) but nothing is applied.
    pub(super) fn on_event(&mut self, now: Instant, seq: u64, event: Option<Event>) {
        if self.awaiting_sync {
            // The sync covers what came before it; what comes after it may
            // arrive first (a reordering link): keep it for then.
            if self.ahead.len() < self.config.reorder_buffer {
                self.ahead.insert(seq, event);
            }
            return;
        }
        let last = self.last_seq.unwrap_or(0);
        if seq <= last {
            self.duplicates += 1;
            return;
        }
        if seq > last + 1 {
            if self.ahead.len() >= self.config.reorder_buffer {
                self.ahead.clear();
                self.timers.disarm(&TimerKey::Gap);
                self.request_sync(now);
            } else {
                self.ahead.insert(seq, event);
                self.open_gap(now);
            }
            return;
        }
        if let Some(event) = event {
            self.applying_seq = Some(seq);
            self.apply(now, event);
            self.applying_seq = None;
        }
        self.last_seq = Some(seq);
        self.apply_ahead(now);
    }

    /// Applies the buffered events that now follow `last_seq` in order;
    /// drops those it already covers.
    pub(super) fn apply_ahead(&mut self, now: Instant) {
        while let Some(entry) = self.ahead.first_entry() {
            let next = self.last_seq.unwrap_or(0) + 1;
            if *entry.key() < next {
                entry.remove();
                self.duplicates += 1;
            } else if *entry.key() == next {
                if let Some(event) = entry.remove() {
                    self.applying_seq = Some(next);
                    self.apply(now, event);
                    self.applying_seq = None;
                }
                self.last_seq = Some(next);
            } else {
                break;
            }
        }
        if self.ahead.is_empty() {
            self.timers.disarm(&TimerKey::Gap);
        }
    }

    /// A pong says how far the server's stream is: events lost at its tail
    /// show up here.
    pub(super) fn on_pong(&mut self, now: Instant, seq: u64) {
        if !self.awaiting_sync && seq > self.last_seq.unwrap_or(0) {
            self.open_gap(now);
        }
    }

    /// A sequence gap is open from `now`, unless one already was.
    pub(super) fn open_gap(&mut self, now: Instant) {
        if !self.timers.is_armed(&TimerKey::Gap) {
            self.arm_timer(TimerKey::Gap, now + self.config.gap_timeout);
        }
    }

    /// The gap stayed open: drop what waits behind it and ask for a `sync`.
    pub(super) fn fire_gap(&mut self, now: Instant) {
        self.ahead.clear();
        self.request_sync(now);
    }

    /// The awaited `sync` did not come: ask again.
    pub(super) fn fire_sync_retry(&mut self, now: Instant) {
        if self.awaiting_sync {
            self.awaiting_sync = false;
            self.request_sync(now);
        }
    }

    pub(super) fn request_sync(&mut self, now: Instant) {
        if !self.awaiting_sync {
            self.awaiting_sync = true;
            self.arm_timer(TimerKey::SyncRetry, now + self.config.sync_retry);
            let id = self.fresh_request_id();
            self.transmit
                .push_back(ClientMessage::new(id, Control::Sync));
        }
    }
}
