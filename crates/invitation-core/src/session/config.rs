//! Client-side settings.

use std::time::Duration;

/// Client-side settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SessionConfig {
    /// A late invitation rings only with at least this much ring time left
    /// (5 s), or half its whole ring timeout when that is shorter.
    pub min_ring_left: Duration,
    /// The local fallback ends a ring this long after the server-relative
    /// deadline (the server normally says so first).
    pub fallback_margin: Duration,
    /// Events buffered while waiting for a missing sequence number; past
    /// this, the session asks for a full `sync`.
    pub reorder_buffer: usize,
    /// Ended calls remembered to drop late events about them.
    pub remembered_calls: usize,
    /// An unanswered command is sent again (same request id) after this
    /// long, doubling up to `command_retry_max` (2 s .. 16 s). Over a reliable
    /// link the answer comes first; over a lossy one this is what recovers.
    pub command_retry: Duration,
    /// Upper bound of the command retry backoff.
    pub command_retry_max: Duration,
    /// A sequence gap not filled within this long triggers a `sync` (1 s).
    pub gap_timeout: Duration,
    /// A `sync` asked for and not received within this long is asked again (2 s).
    pub sync_retry: Duration,
    /// A command unanswered this long after it was issued is given up (30 s):
    /// its caller is told [`CommandError::TimedOut`](crate::CommandError::TimedOut)
    /// and it is never sent again. An invite given up on that the server had
    /// already taken is canceled by the session itself.
    pub command_deadline: Duration,
    /// Acknowledge every invitation that rings on this device with a
    /// `received` receipt, so the caller learns it was delivered (on by
    /// default). Off, the device looks to callers like a frozen app: the
    /// server says `callee_ringing`, and no `callee_delivered` follows.
    pub send_receipts: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            min_ring_left: Duration::from_secs(5),
            fallback_margin: Duration::from_secs(5),
            reorder_buffer: 64,
            remembered_calls: 1024,
            command_retry: Duration::from_secs(2),
            command_retry_max: Duration::from_secs(16),
            gap_timeout: Duration::from_secs(1),
            sync_retry: Duration::from_secs(2),
            command_deadline: Duration::from_secs(30),
            send_receipts: true,
        }
    }
}
