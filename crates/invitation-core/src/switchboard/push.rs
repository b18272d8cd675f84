//! Push for devices that are not connected: who gets woken, when, and when
//! they are told to stop ringing.
//!
//! The rule is one sentence: when a callee is rung and none of their
//! devices is connected in the foreground, every device of theirs with push
//! credentials gets a `ring` push; when that callee's ring ends, for
//! whatever reason, the same devices get a `stop` push (except the device
//! that answered or declined, which knows). The decision hangs on the two
//! events that start and end a callee's ring (`incoming_call` and
//! `incoming_ended` in the callee's event log), so every way a ring starts
//! (invite, add, a backend's invite) or ends (accept here or elsewhere,
//! decline, busy, cancel, timeout, caller gone, shutdown) is covered by the
//! same two lines of code, and by nothing else.
//!
//! What the switchboard keeps is bounded: per user at most
//! [`SwitchboardConfig::max_push_devices`](super::SwitchboardConfig)
//! registrations (the oldest goes), and per live call the devices it
//! pushed to (callees × that bound), dropped as each ring ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::user::LogEvent;
use super::{ConnId, Switchboard};
use crate::error::{CommandError, ValidationError};
use crate::id::{CallId, DeviceId, UserId};
use crate::model::{CallType, CustomData, Reason, User};
use crate::protocol::{PushRegistration, ReplyResult};
use crate::switchboard::BACKEND_DEVICE;

/// A push the owner must hand to its push gateway. Drained with
/// [`Switchboard::poll_push`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PushNotice {
    /// The call (also the collapse id: a `stop` replaces its `ring`).
    pub call_id: CallId,
    /// The callee whose device this is.
    pub user: UserId,
    /// The device.
    pub device: DeviceId,
    /// Its credentials (for a `stop`, the ones its `ring` went to).
    pub registration: PushRegistration,
    /// How long the push is worth delivering: the ring time left (for a
    /// `stop`, what was left of the ring it stops; zero once it would have
    /// timed out anyway).
    pub ttl: Duration,
    /// Ring or stop.
    pub what: PushWhat,
}

/// What a push says.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PushWhat {
    /// The call rings for this user: wake up and show it.
    Ring {
        /// Who calls.
        caller: User,
        /// Voice or video.
        call_type: CallType,
        /// Everyone invited (as the `incoming_call` event lists them).
        callees: Arc<[User]>,
        /// The invite's custom data.
        custom_data: Option<CustomData>,
    },
    /// The ring ended for this user: stop ringing.
    Stop {
        /// Why (accepted or declined on another device, canceled, timeout ...).
        reason: Reason,
    },
}

/// One device a live call pushed to: the stop goes to the same credentials
/// even if the device registered new ones meanwhile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Pushed {
    pub(crate) user: UserId,
    pub(crate) device: DeviceId,
    pub(crate) registration: PushRegistration,
    /// The end of the ring the push announced.
    pub(crate) deadline: Instant,
}

impl Switchboard {
    /// The next push to send, until `None` (only with
    /// [`SwitchboardConfig::push`](super::SwitchboardConfig) on). Cleared at
    /// the start of every input: drain after every input.
    pub fn poll_push(&mut self) -> Option<PushNotice> {
        self.pushes.pop_front()
    }

    /// The devices of `user` with push credentials, oldest first.
    pub fn push_devices(&self, user: &UserId) -> &[(DeviceId, PushRegistration)] {
        self.push_devices.get(user).map_or(&[], Vec::as_slice)
    }

    /// Registers (`Some`) or forgets (`None`) the push credentials of one
    /// device of `user`: what the `register_push` / `unregister_push`
    /// commands do, and what an app's backend does for a device (the
    /// server's HTTP API). The reserved backend device is refused.
    pub fn handle_backend_push(
        &mut self,
        now: Instant,
        user: &UserId,
        device: &DeviceId,
        registration: Option<PushRegistration>,
    ) -> Result<(), CommandError> {
        self.advance(now);
        self.set_push(user, device, registration).map(|_| ())
    }

    pub(super) fn set_push(
        &mut self,
        user: &UserId,
        device: &DeviceId,
        registration: Option<PushRegistration>,
    ) -> Result<ReplyResult, CommandError> {
        if device.as_str() == BACKEND_DEVICE {
            return Err(ValidationError::Reserved {
                field: "device",
                value: BACKEND_DEVICE,
            }
            .into());
        }
        let Some(registration) = registration else {
            if let Some(list) = self.push_devices.get_mut(user) {
                list.retain(|(d, _)| d != device);
                if list.is_empty() {
                    self.push_devices.remove(user);
                }
            }
            return Ok(ReplyResult::Done);
        };
        registration.validate()?;
        let cap = self.config.max_push_devices.max(1);
        let list = self.push_devices.entry(user.clone()).or_default();
        list.retain(|(d, _)| d != device);
        while list.len() >= cap {
            list.remove(0);
        }
        list.push((device.clone(), registration));
        Ok(ReplyResult::Done)
    }

    /// The `app_state` command of connection `conn`.
    pub(super) fn set_background(
        &mut self,
        conn: Option<ConnId>,
        background: bool,
    ) -> Result<ReplyResult, CommandError> {
        let entry = conn
            .and_then(|c| self.conns.get_mut(&c))
            .ok_or(CommandError::WrongRole)?;
        entry.background = background;
        Ok(ReplyResult::Done)
    }

    /// Whether `user` would be woken by push now: credentials registered
    /// and no device connected in the foreground.
    pub(super) fn wants_push(&self, user: &UserId) -> bool {
        if !self.config.push || !self.push_devices.contains_key(user) {
            return false;
        }
        let Some(entry) = self.users.get(user) else {
            return true;
        };
        !entry
            .devices
            .iter()
            .any(|(_, c)| self.conns.get(c).is_some_and(|c| !c.background))
    }

    /// Turns the start or end of a callee's ring into pushes (called for
    /// every event as it is appended to `user`'s log).
    pub(super) fn note_push(&mut self, user: &UserId, event: &LogEvent, now: Instant) {
        match event {
            LogEvent::WithData(inner) => self.note_push(user, &inner.0, now),
            LogEvent::Incoming(info) => {
                if !self.wants_push(user) {
                    return;
                }
                let Some(deadline) = self
                    .calls
                    .get(&info.call_id)
                    .and_then(|call| call.ring_deadline(user))
                else {
                    return;
                };
                let list = self.pushed.entry(info.call_id.clone()).or_default();
                // Rung again (added back): the earlier pushes are replaced.
                list.retain(|p| p.user != *user);
                for (device, registration) in &self.push_devices[user] {
                    self.pushes.push_back(PushNotice {
                        call_id: info.call_id.clone(),
                        user: user.clone(),
                        device: device.clone(),
                        registration: registration.clone(),
                        ttl: deadline.saturating_duration_since(now),
                        what: PushWhat::Ring {
                            caller: info.caller.clone(),
                            call_type: info.call_type,
                            callees: info.callees.clone(),
                            custom_data: info.custom_data.clone(),
                        },
                    });
                    list.push(Pushed {
                        user: user.clone(),
                        device: device.clone(),
                        registration: registration.clone(),
                        deadline,
                    });
                }
            }
            LogEvent::IncomingEnded {
                call,
                reason,
                device: by,
            } => {
                let Some(list) = self.pushed.get_mut(call) else {
                    return;
                };
                let pushes = &mut self.pushes;
                list.retain(|p| {
                    if p.user != *user {
                        return true;
                    }
                    // The device that answered or declined knows already.
                    if by.as_ref() != Some(&p.device) {
                        pushes.push_back(PushNotice {
                            call_id: call.clone(),
                            user: user.clone(),
                            device: p.device.clone(),
                            registration: p.registration.clone(),
                            ttl: p.deadline.saturating_duration_since(now),
                            what: PushWhat::Stop { reason: *reason },
                        });
                    }
                    false
                });
                if list.is_empty() {
                    self.pushed.remove(call);
                }
            }
            _ => {}
        }
    }
}
