//! Event sequence numbers: duplicates, the reorder buffer, gaps, and
//! asking for a full `sync` when the stream cannot be resumed.

use std::time::Instant;

use crate::protocol::{ClientMessage, Control, Event};

use super::ClientSession;

impl ClientSession {
    pub(super) fn on_event(&mut self, now: Instant, seq: u64, event: Event) {
        if self.awaiting_sync {
            return; // the sync will cover it
        }
        let last = self.last_seq.unwrap_or(0);
        if seq <= last {
            self.duplicates += 1;
            return;
        }
        if seq > last + 1 {
            if self.ahead.len() >= self.config.reorder_buffer {
                self.ahead.clear();
                self.gap_since = None;
                self.request_sync(now);
            } else {
                self.ahead.insert(seq, event);
                self.gap_since.get_or_insert(now);
            }
            return;
        }
        self.apply(now, event);
        self.last_seq = Some(seq);
        while let Some(entry) = self.ahead.first_entry() {
            let next = self.last_seq.unwrap_or(0) + 1;
            if *entry.key() < next {
                entry.remove();
                self.duplicates += 1;
            } else if *entry.key() == next {
                let event = entry.remove();
                self.apply(now, event);
                self.last_seq = Some(next);
            } else {
                break;
            }
        }
        if self.ahead.is_empty() {
            self.gap_since = None;
        }
    }

    pub(super) fn request_sync(&mut self, now: Instant) {
        if !self.awaiting_sync {
            self.awaiting_sync = true;
            self.sync_asked = Some(now);
            let id = self.fresh_request_id();
            self.transmit
                .push_back(ClientMessage::new(id, Control::Sync));
        }
    }
}
