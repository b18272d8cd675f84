//! The server side of a long-polled session, sans-IO: the messages written
//! for a client and not yet acknowledged by it.
//!
//! Over HTTP a client cannot be written to; it asks (polls) for what is
//! there. Every message written on a session gets the next number from 0;
//! a poll says `from`, the number of messages the client holds so far,
//! which acknowledges everything before it, and is answered with the
//! messages from `from` on. A poll answer lost on its way is repeated by
//! asking with the same `from` again: nothing is lost, nothing doubled.
//!
//! [`FrameLog`] keeps the unacknowledged messages, capped in bytes (one
//! message always fits, so a large one cannot wedge the log), and tells
//! apart the messages *written* from those *flushed* (visible to a poll):
//! a shell writes a batch, then flushes once, and a poll answers with the
//! whole batch. The server's HTTP transport and the simulation's long-poll
//! links both run on it.

use std::collections::VecDeque;

/// Why a poll's `from` cannot be served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PollError {
    /// Messages before `from` were already acknowledged and dropped: the
    /// client went back (a bug, or a replayed request).
    #[error("messages before {from} were acknowledged already (kept from {base})")]
    Acknowledged {
        /// The poll's `from`.
        from: u64,
        /// The first message kept.
        base: u64,
    },
    /// `from` is past what was flushed: the client claims messages it was
    /// never sent.
    #[error("{from} is past the {flushed} messages sent")]
    Ahead {
        /// The poll's `from`.
        from: u64,
        /// Messages flushed so far.
        flushed: u64,
    },
}

/// Messages written for one client and not yet acknowledged (see the
/// [module docs](self)).
#[derive(Debug, Clone, Default)]
pub struct FrameLog {
    frames: VecDeque<String>,
    /// The number of `frames[0]`.
    base: u64,
    /// Their size in bytes.
    bytes: usize,
    /// Messages numbered below this are visible to polls.
    flushed: u64,
    cap: usize,
}

impl FrameLog {
    /// An empty log keeping at most `cap` bytes (but always one message).
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            ..Self::default()
        }
    }

    /// The number the next message gets.
    pub fn end(&self) -> u64 {
        self.base + self.frames.len() as u64
    }

    /// Messages visible to polls so far.
    pub fn flushed(&self) -> u64 {
        self.flushed
    }

    /// Bytes kept.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// True when written messages are not flushed yet.
    pub fn has_unflushed(&self) -> bool {
        self.flushed != self.end()
    }

    /// Whether `frame` fits now.
    pub fn fits(&self, frame: &str) -> bool {
        self.frames.is_empty() || self.bytes + frame.len() <= self.cap
    }

    /// Writes a message (not visible until [`FrameLog::flush`]); gives it
    /// back when it does not fit (wait for an acknowledgement).
    pub fn push(&mut self, frame: String) -> Result<(), String> {
        if !self.fits(&frame) {
            return Err(frame);
        }
        self.bytes += frame.len();
        self.frames.push_back(frame);
        Ok(())
    }

    /// Makes every written message visible to polls.
    pub fn flush(&mut self) {
        self.flushed = self.end();
    }

    /// Drops every message (the client is gone); numbering goes on.
    pub fn clear(&mut self) {
        self.base = self.end();
        self.frames.clear();
        self.bytes = 0;
        self.flushed = self.base;
    }

    /// A poll from `from`: acknowledges (drops) the messages before it.
    pub fn ack(&mut self, from: u64) -> Result<(), PollError> {
        if from < self.base {
            return Err(PollError::Acknowledged {
                from,
                base: self.base,
            });
        }
        if from > self.flushed {
            return Err(PollError::Ahead {
                from,
                flushed: self.flushed,
            });
        }
        while self.base < from {
            if let Some(f) = self.frames.pop_front() {
                self.bytes -= f.len();
            }
            self.base += 1;
        }
        Ok(())
    }

    /// The flushed messages from `from` on (after [`FrameLog::ack`] of the
    /// same `from`: the ones a poll answers with).
    pub fn visible_from(&self, from: u64) -> impl Iterator<Item = &str> {
        let skip = from.saturating_sub(self.base) as usize;
        let take = self.flushed.saturating_sub(from.max(self.base)) as usize;
        self.frames.iter().skip(skip).take(take).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(log: &FrameLog, from: u64) -> Vec<&str> {
        log.visible_from(from).collect()
    }

    #[test]
    fn numbered_acknowledged_and_repeated() {
        let mut log = FrameLog::new(1000);
        log.push("a".into()).unwrap();
        log.push("b".into()).unwrap();
        assert!(texts(&log, 0).is_empty(), "not flushed yet");
        assert!(log.has_unflushed());
        log.flush();
        assert_eq!(texts(&log, 0), ["a", "b"]);
        // The answer was lost: the same `from` gets the same messages.
        log.ack(0).unwrap();
        assert_eq!(texts(&log, 0), ["a", "b"]);
        log.push("c".into()).unwrap();
        log.flush();
        log.ack(2).unwrap();
        assert_eq!(texts(&log, 2), ["c"]);
        assert_eq!(log.bytes(), 1);
        assert_eq!(
            log.ack(1),
            Err(PollError::Acknowledged { from: 1, base: 2 })
        );
        assert_eq!(
            log.ack(4),
            Err(PollError::Ahead {
                from: 4,
                flushed: 3
            })
        );
        log.ack(3).unwrap();
        assert!(texts(&log, 3).is_empty());
        assert_eq!((log.end(), log.bytes()), (3, 0));
    }

    #[test]
    fn capped_in_bytes_but_one_always_fits() {
        let mut log = FrameLog::new(4);
        log.push("toolarge".into()).unwrap();
        assert_eq!(log.push("x".into()), Err("x".to_owned()));
        log.flush();
        log.ack(1).unwrap();
        log.push("ab".into()).unwrap();
        log.push("cd".into()).unwrap();
        assert!(!log.fits("e"));
        log.clear();
        assert_eq!((log.end(), log.flushed(), log.bytes()), (3, 3, 0));
        assert!(log.fits("e"));
    }
}
