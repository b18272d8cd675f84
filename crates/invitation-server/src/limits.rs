//! What the hub makes each user pay: every command and sync that reaches the
//! hub takes a token from its user's bucket (invites one more from the
//! invite bucket), and a user may have at most so many devices online. Each
//! connection's own bucket (every message, pings included) is the
//! connection machine's (`ConnectionConfig::message_rate`), charged before
//! anything reaches the hub.

use std::time::{Duration, Instant};

use invitation_core::UserId;
use invitation_core::protocol::Command;

use crate::config::Config;
use crate::rate::KeyedLimiter;

/// The hub's per-user limits.
#[derive(Debug)]
pub(crate) struct HubLimits {
    per_user: KeyedLimiter<UserId>,
    invites: KeyedLimiter<UserId>,
    max_devices: usize,
}

impl HubLimits {
    /// The limits of `config`.
    pub(crate) fn from_config(config: &Config) -> Self {
        Self::new(
            (config.command_rate_per_user, config.command_burst_per_user),
            (config.invite_rate_per_user, config.invite_burst_per_user),
            config.max_devices_per_user,
        )
    }

    /// `(rate per second, burst)` for commands per user and invites per
    /// user; most devices online per user.
    pub(crate) fn new(per_user: (f64, f64), invites: (f64, f64), max_devices: usize) -> Self {
        Self {
            per_user: KeyedLimiter::new(per_user.0, per_user.1),
            invites: KeyedLimiter::new(invites.0, invites.1),
            max_devices: max_devices.max(1),
        }
    }

    /// Limits that never bite (for tests of other things).
    #[cfg(test)]
    pub(crate) fn unlimited() -> Self {
        let big = (1e9, 1e9);
        Self::new(big, big, usize::MAX)
    }

    /// Charges a command (or a `sync`: `command` is `None`) of `user`, read
    /// at `at`; the wait before a retry when a bucket is empty.
    pub(crate) fn charge(
        &mut self,
        user: &UserId,
        command: Option<&Command>,
        at: Instant,
    ) -> Result<(), Duration> {
        self.per_user.check(user, at)?;
        // `add` rings people too: it draws on the same bucket.
        if matches!(command, Some(Command::Invite(_) | Command::Add { .. })) {
            self.invites.check(user, at)?;
        }
        Ok(())
    }

    /// May a device join a user who has `online` devices connected
    /// (`replacing`: the same device reconnects, taking its own place)?
    pub(crate) fn device_allowed(&self, online: usize, replacing: bool) -> bool {
        replacing || online < self.max_devices
    }

    /// The per-user device cap.
    pub(crate) fn max_devices(&self) -> usize {
        self.max_devices
    }
}
