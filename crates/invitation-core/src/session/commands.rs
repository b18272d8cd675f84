//! The commands the session owns, from issue to answer, deadline or
//! abandonment, and the clean-up of invites given up on.

use std::time::{Duration, Instant};

use crate::error::CommandError;
use crate::id::{CallId, RequestId, UserId};
use crate::model::{Reason, User};
use crate::protocol::{ClientBody, ClientMessage, Command, ErrorBody, ReplyResult};

use super::{ClientSession, TimerKey};

/// Invites given up on, and calls disowned, remembered at most.
pub(super) const ABANDONED_KEPT: usize = 64;

/// A command the session owns.
#[derive(Debug)]
pub(super) struct Pending {
    pub(super) body: ClientBody,
    /// Its issue number: its place in issue order, and its timers' key.
    pub(super) n: u64,
    /// The wait before the next retry (doubles up to the maximum).
    pub(super) backoff: Duration,
    /// Sent by the session on its own (no caller waits for it).
    pub(super) internal: bool,
}

impl ClientSession {
    pub(super) fn issue(&mut self, now: Instant, command: ClientBody, internal: bool) -> RequestId {
        let n = self.next_request;
        let id = self.fresh_request_id();
        let backoff = self.config.command_retry;
        let pending = Pending {
            body: command.clone(),
            n,
            backoff,
            internal,
        };
        self.pending.insert(id.clone(), pending);
        self.pending_order.insert(n, id.clone());
        if let Some(at) = now.checked_add(self.config.command_deadline) {
            self.timers.arm(TimerKey::Deadline(n), at);
        }
        if self.connected {
            self.transmit
                .push_back(ClientMessage::new(id.clone(), command));
            self.arm_timer(TimerKey::Retry(n), now + backoff);
        }
        id
    }

    pub(super) fn fresh_request_id(&mut self) -> RequestId {
        let id = format!("{}r{}", self.request_prefix, self.next_request);
        self.next_request += 1;
        RequestId::new(id).expect("prefix is alphanumeric and short")
    }

    /// Command `n` is still unanswered: send it again, with its request id,
    /// and wait twice as long (up to the maximum) for the next try.
    pub(super) fn fire_retry(&mut self, now: Instant, n: u64) {
        let Some(id) = self.pending_order.get(&n) else {
            return;
        };
        let Some(p) = self.pending.get_mut(id) else {
            return;
        };
        self.transmit
            .push_back(ClientMessage::new(id.clone(), p.body.clone()));
        p.backoff = (p.backoff * 2).min(self.config.command_retry_max);
        let at = now + p.backoff;
        self.arm_timer(TimerKey::Retry(n), at);
    }

    /// Command `n` passed its deadline: give it up and tell its caller.
    pub(super) fn fire_deadline(&mut self, n: u64) {
        let Some(id) = self.pending_order.get(&n).cloned() else {
            return;
        };
        if let Some(p) = self.give_up(&id) {
            if !p.internal {
                self.completions
                    .push_back((id, Err(CommandError::TimedOut)));
            }
        }
    }

    /// Forgets pending command `n`'s place in the order and its timers.
    fn forget(&mut self, n: u64) {
        self.pending_order.remove(&n);
        self.timers.disarm(&TimerKey::Retry(n));
        self.timers.disarm(&TimerKey::Deadline(n));
    }

    pub(super) fn on_reply(
        &mut self,
        now: Instant,
        re: RequestId,
        result: Result<ReplyResult, CommandError>,
    ) {
        let Some(pending) = self.pending.remove(&re) else {
            // A duplicate, the answer to a hello, or to a command given up
            // on: an invite the server took after all is canceled.
            if let Some(i) = self.abandoned.iter().position(|(id, _)| *id == re) {
                self.abandoned.remove(i);
                match result {
                    Ok(ReplyResult::Invited { call_id, .. }) => {
                        self.disown(now, call_id, false);
                    }
                    Ok(ReplyResult::Joined { call_id, .. }) => self.disown(now, call_id, true),
                    _ => {}
                }
            }
            return;
        };
        self.forget(pending.n);
        if pending.internal {
            // Our own clean-up: a cancel that lost the race to an accept
            // hangs up instead.
            if let (
                ClientBody::Command(Command::Cancel { call_id, .. }),
                Err(CommandError::Ended {
                    reason: Reason::Accepted,
                }),
            ) = (&pending.body, &result)
            {
                let call_id = call_id.clone();
                self.issue(now, Command::hang_up(call_id).into(), true);
            }
            return;
        }
        if let Ok(ok) = &result {
            self.on_success(now, &pending.body, ok);
        }
        self.completions.push_back((re, result));
    }

    /// Stops owning command `id`: never sent again. An invite is remembered
    /// (bounded) so that a late sign that the server took it cancels the call.
    pub(super) fn give_up(&mut self, id: &RequestId) -> Option<Pending> {
        let pending = self.pending.remove(id)?;
        self.forget(pending.n);
        self.transmit.retain(|m| m.id != *id);
        if let ClientBody::Command(Command::Invite(req)) = &pending.body {
            if self.abandoned.len() >= ABANDONED_KEPT {
                self.abandoned.pop_front();
            }
            self.abandoned.push_back((id.clone(), req.clone()));
        }
        Some(pending)
    }

    /// The server took an invite this session gave up on: end the call (the
    /// app was told the invite failed) and keep its events from the app.
    pub(super) fn disown(&mut self, now: Instant, call_id: CallId, joined: bool) {
        if self.disowned.contains(&call_id) {
            return;
        }
        if self.disowned.len() >= ABANDONED_KEPT {
            self.disowned.pop_front();
        }
        self.disowned.push_back(call_id.clone());
        self.finish(&call_id);
        let command = if joined {
            Command::hang_up(call_id)
        } else {
            Command::cancel(call_id)
        };
        self.issue(now, command.into(), true);
    }

    /// Our device started `call_id` for these callees, and this session
    /// knows nothing of it: it is an invite given up on whose answer was
    /// lost. Takes the matching abandoned invite out.
    pub(super) fn is_abandoned_invite(&mut self, callees: &[User]) -> bool {
        let found = self.abandoned.iter().position(|(_, req)| {
            req.callees.len() == callees.len()
                && req
                    .callees
                    .iter()
                    .all(|c| callees.iter().any(|u| u.id == *c))
        });
        found.map(|i| self.abandoned.remove(i)).is_some()
    }

    pub(super) fn on_error(&mut self, now: Instant, body: ErrorBody) {
        let Some(re) = body.re.clone() else { return };
        if self.hello_id.as_ref() == Some(&re) {
            // The hello itself was refused: no session on this link. Once
            // welcomed, an error about the hello answers a duplicate of it
            // (a link that repeats messages): the session stands.
            if !self.welcomed {
                self.refusal = Some(body);
            }
            return;
        }
        if body.code == crate::error::ErrorCode::NotConnected && self.pending.contains_key(&re) {
            // The server has no session for this link (our hello was lost):
            // keep the command, it is resent after the reconnect.
            self.wants_reconnect = true;
            return;
        }
        let error = body
            .to_command_error()
            .unwrap_or_else(|| CommandError::Rejected {
                code: body.code,
                message: body.message.clone(),
            });
        self.on_reply(now, re, Err(error));
    }

    /// An invite of ours to exactly `caller` is unanswered: an "accepted by
    /// this device" for `caller`'s call is then our invite merged by glare.
    pub(super) fn glare_invite_pending(&self, caller: &UserId) -> bool {
        self.pending.values().any(|p| {
            matches!(&p.body, ClientBody::Command(Command::Invite(req)) if req.callees.len() == 1 && &req.callees[0] == caller)
        })
    }
}
