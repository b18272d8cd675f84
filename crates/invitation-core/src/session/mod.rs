//! One device's side of the protocol, sans-IO: what the client driver runs.
//!
//! It keeps the device's local view of every call, sends commands with
//! request ids (and resends the unanswered ones, with the same ids, after a
//! reconnect), dedups server events by sequence number, turns them into
//! [`AppEvent`]s, and runs a fallback timer per ringing call so that a ring
//! ends even if the connection died and the server cannot say so.
//!
//! Run loop: feed [`ClientSession::handle_connected`],
//! [`ClientSession::handle_message`], [`ClientSession::handle_disconnected`]
//! and [`ClientSession::handle_timeout`]; issue commands with
//! [`ClientSession::command`]; after each, drain [`ClientSession::poll_transmit`]
//! (messages to send), [`ClientSession::poll_event`] (for the app) and
//! [`ClientSession::poll_completion`] (command results); sleep until
//! [`ClientSession::poll_timeout`].
//!
//! The code is split by concern: `events` holds the public types the app
//! sees, `config` the settings, `commands` the commands the session owns
//! (issue, retry, deadline, abandonment), `sequence` event ordering and gap
//! recovery, `sync` the merge of a full snapshot, `calls` the local view of
//! each call, and `timers` the one table of every deadline: `poll_timeout`
//! is its first entry, and a timeout pops only the entries that are due.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use foldhash::HashMap;

use crate::error::CommandError;
use crate::id::{CallId, DeviceId, RequestId, UserId};
use crate::protocol::{
    ClientBody, ClientMessage, Control, ErrorBody, Event, InviteRequest, ReplyResult, ServerBody,
    ServerMessage,
};

mod calls;
mod commands;
mod config;
mod events;
mod sequence;
mod sync;
mod timers;

use calls::{Local, LocalCall};
use commands::Pending;
pub use config::SessionConfig;
pub use events::{AppEvent, ConnectionState, StopReason};
use timers::{TimerKey, Timers};

/// One device's client-side protocol state. See the [module docs](self).
#[derive(Debug)]
pub struct ClientSession {
    config: SessionConfig,
    user: UserId,
    device: DeviceId,
    /// Highest sequence number applied in order.
    last_seq: Option<u64>,
    /// After a non-resumed welcome, events wait for the `sync`.
    awaiting_sync: bool,
    /// The server does not know this link: the driver should reconnect.
    wants_reconnect: bool,
    /// The request id of this connection's `hello`.
    hello_id: Option<RequestId>,
    /// This connection's `hello` was answered by a `welcome`: a later error
    /// about the same id answers a duplicate of it, not a refusal.
    welcomed: bool,
    /// The server's error answer to that `hello`, if it refused it.
    refusal: Option<ErrorBody>,
    /// Events received ahead of a gap, by `seq`; `None` holds the place of
    /// an event of a type this version does not know (skipped, but counted).
    ahead: BTreeMap<u64, Option<Event>>,
    calls: HashMap<CallId, LocalCall>,
    /// Calls over on this device (bounded), each with the stream position
    /// its end belongs to: a snapshot older than that cannot ring it again.
    ended: HashMap<CallId, u64>,
    ended_order: VecDeque<CallId>,
    /// The sequence number of the event being applied (or whose folded
    /// answer is), while it is: where a call that ends now ended.
    applying_seq: Option<u64>,
    /// Every command this session owns, from issue to answer or abandonment.
    pending: HashMap<RequestId, Pending>,
    /// The pending commands in issue order, by issue number.
    pending_order: BTreeMap<u64, RequestId>,
    /// Invites given up on (newest last, bounded): a late answer or event
    /// showing the server took one gets its call canceled.
    abandoned: VecDeque<(RequestId, InviteRequest)>,
    /// Calls the session cancels on its own (from abandoned invites): the app
    /// hears nothing of them.
    disowned: VecDeque<CallId>,
    next_request: u64,
    request_prefix: String,
    connected: bool,
    /// Every deadline: command retries and deadlines, gap and `sync`
    /// recovery, fallback ring timers.
    timers: Timers,
    transmit: VecDeque<ClientMessage>,
    events: VecDeque<AppEvent>,
    completions: VecDeque<(RequestId, Result<ReplyResult, CommandError>)>,
    duplicates: u64,
}

impl ClientSession {
    /// A session for `device` of `user`. `request_prefix` makes request ids
    /// unique across restarts of the app (e.g. a random or time-based tag).
    pub fn new(
        user: UserId,
        device: DeviceId,
        request_prefix: &str,
        config: SessionConfig,
    ) -> Self {
        Self {
            config,
            user,
            device,
            last_seq: None,
            awaiting_sync: false,
            wants_reconnect: false,
            hello_id: None,
            welcomed: false,
            refusal: None,
            ahead: BTreeMap::new(),
            calls: HashMap::default(),
            ended: HashMap::default(),
            ended_order: VecDeque::new(),
            applying_seq: None,
            pending: HashMap::default(),
            pending_order: BTreeMap::new(),
            abandoned: VecDeque::new(),
            disowned: VecDeque::new(),
            next_request: 1,
            request_prefix: request_prefix
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(32)
                .collect(),
            connected: false,
            timers: Timers::default(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            completions: VecDeque::new(),
            duplicates: 0,
        }
    }

    /// This device.
    pub fn device(&self) -> &DeviceId {
        &self.device
    }

    /// This user.
    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// The last event sequence number applied, for resuming.
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// True when the server said it has no session for this link (our
    /// `hello` was lost): the driver should drop the link and reconnect.
    pub fn wants_reconnect(&self) -> bool {
        self.wants_reconnect
    }

    /// The server's error answer to this connection's `hello` (for example
    /// `unauthorized`: a garbage, expired or wrong-secret token). The
    /// connection will not open; the driver decides whether to try again
    /// (with a fresh token) or give up. Cleared by the next
    /// [`ClientSession::handle_connected`].
    pub fn refusal(&self) -> Option<&ErrorBody> {
        self.refusal.as_ref()
    }

    /// Server events dropped as duplicates so far.
    pub fn duplicates_dropped(&self) -> u64 {
        self.duplicates
    }

    /// Calls this device currently considers live.
    pub fn live_calls(&self) -> impl Iterator<Item = &CallId> {
        self.calls.keys()
    }

    /// True while an incoming call rings on this device.
    pub fn is_ringing(&self, call_id: &CallId) -> bool {
        self.calls
            .get(call_id)
            .is_some_and(|c| matches!(c.state, Local::Ringing))
    }

    // ----- inputs -------------------------------------------------------

    /// The transport is (re)connected: queues `hello` (resuming from the
    /// last sequence number) and every unanswered command, with its
    /// original request id.
    pub fn handle_connected(&mut self, now: Instant, token: Option<String>) {
        self.connected = true;
        self.wants_reconnect = false;
        self.timers.disarm(&TimerKey::Gap);
        self.timers.disarm(&TimerKey::SyncRetry);
        // A `sync` asked for on the old link will never come; the new link's
        // `welcome` says whether one follows. Until then events are taken
        // by sequence number (a resumed link's replay can overtake it).
        self.awaiting_sync = false;
        let hello = Control::Hello {
            device: self.device.clone(),
            token,
            last_seq: self.last_seq,
        };
        let id = self.fresh_request_id();
        self.hello_id = Some(id.clone());
        self.welcomed = false;
        self.refusal = None;
        self.transmit.push_back(ClientMessage::new(id, hello));
        let backoff = self.config.command_retry;
        for (n, id) in &self.pending_order {
            if let Some(p) = self.pending.get_mut(id) {
                self.transmit
                    .push_back(ClientMessage::new(id.clone(), p.body.clone()));
                p.backoff = backoff;
                self.timers.arm(TimerKey::Retry(*n), now + backoff);
            }
        }
    }

    /// The transport dropped. Queued messages are discarded (they will be
    /// resent from the pending table on reconnect).
    pub fn handle_disconnected(&mut self, _now: Instant) {
        if self.connected {
            self.connected = false;
            self.transmit.clear();
            self.ahead.clear();
            self.timers.disarm_linked();
            self.events
                .push_back(AppEvent::Connection(ConnectionState::Reconnecting));
        }
    }

    /// Issues a command: returns its request id; the message is queued for
    /// [`ClientSession::poll_transmit`] (or for the next connection) and the
    /// result arrives through [`ClientSession::poll_completion`].
    ///
    /// Call commands and `renew` go through here (both are retried until
    /// answered); `hello`, `ping` and `sync` are the session's own business.
    ///
    /// The session owns the command until it is answered, abandoned
    /// ([`ClientSession::abandon`]) or past its deadline
    /// ([`SessionConfig::command_deadline`]), whichever comes first.
    pub fn command(&mut self, now: Instant, command: impl Into<ClientBody>) -> RequestId {
        self.issue(now, command.into(), false)
    }

    /// The caller of command `id` gave up on it (its future was dropped): it
    /// is never sent again, its answer is dropped, and if it was an invite
    /// the server took, the session cancels that call. No completion follows.
    pub fn abandon(&mut self, id: &RequestId) {
        self.give_up(id);
    }

    /// A message from the server.
    pub fn handle_message(&mut self, now: Instant, message: ServerMessage) {
        match message.body {
            ServerBody::Welcome { seq, resumed, .. } => {
                self.welcomed = true;
                if resumed {
                    self.awaiting_sync = false;
                    self.timers.disarm(&TimerKey::SyncRetry);
                    if self.last_seq.is_none() {
                        self.last_seq = Some(seq);
                    }
                } else {
                    self.awaiting_sync = true;
                    self.arm_timer(TimerKey::SyncRetry, now + self.config.sync_retry);
                }
                self.events
                    .push_back(AppEvent::Connection(ConnectionState::Connected { resumed }));
            }
            ServerBody::Reply { re, result } => self.on_reply(now, re, Ok(result)),
            ServerBody::Error(body) => self.on_error(now, body),
            ServerBody::Event {
                seq,
                re,
                result,
                event,
            } => {
                // The answer first, as if its `reply` had come just before;
                // what it ends belongs to this event's place in the stream.
                if let Some(re) = re {
                    self.applying_seq = Some(seq);
                    self.on_reply(now, re, Ok(result.unwrap_or(ReplyResult::Done)));
                    self.applying_seq = None;
                }
                self.on_event(now, seq, Some(event))
            }
            // A newer server's event: its place in the stream counts (and
            // the answer it carries, if any), the app hears nothing of it.
            ServerBody::UnknownEvent { seq, re, .. } => {
                if let Some(re) = re {
                    self.on_reply(now, re, Ok(ReplyResult::Done));
                }
                self.on_event(now, seq, None)
            }
            ServerBody::Sync(sync) => self.on_sync(now, sync),
            ServerBody::Pong { seq: Some(seq), .. } => self.on_pong(now, seq),
            ServerBody::Pong { .. } | ServerBody::Closing { .. } | ServerBody::Unknown { .. } => {}
        }
    }

    /// Fires the timers due at `now`, earliest first: command deadlines and
    /// retries, gap and sync recovery, and the local fallback ring timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        for key in self.timers.take_due(now) {
            match key {
                TimerKey::Deadline(n) => self.fire_deadline(n),
                TimerKey::Retry(n) => self.fire_retry(now, n),
                TimerKey::Gap => self.fire_gap(now),
                TimerKey::SyncRetry => self.fire_sync_retry(now),
                TimerKey::Fallback(call_id) => self.fire_fallback(&call_id),
            }
        }
    }

    /// Arms `key` at `at`, unless it needs the link and the link is down
    /// (such timers are all disarmed when it drops, and the next
    /// [`ClientSession::handle_connected`] starts them afresh).
    fn arm_timer(&mut self, key: TimerKey, at: Instant) {
        if self.connected || !key.needs_link() {
            self.timers.arm(key, at);
        }
    }

    // ----- outputs ------------------------------------------------------

    /// The next message to send.
    pub fn poll_transmit(&mut self) -> Option<ClientMessage> {
        self.transmit.pop_front()
    }

    /// The next event for the app.
    pub fn poll_event(&mut self) -> Option<AppEvent> {
        while let Some(event) = self.events.pop_front() {
            let disowned = event.call_id().is_some_and(|id| self.disowned.contains(id));
            if !disowned {
                return Some(event);
            }
        }
        None
    }

    /// The next command result.
    pub fn poll_completion(&mut self) -> Option<(RequestId, Result<ReplyResult, CommandError>)> {
        self.completions.pop_front()
    }

    /// The next timer: a fallback ring deadline, a command deadline or
    /// retry, gap or sync recovery. `None` when nothing rings and nothing is
    /// outstanding.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }
}
