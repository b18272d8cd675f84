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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use foldhash::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::error::CommandError;
use crate::id::{CallId, DeviceId, RequestId, UserId};
use crate::model::{CallType, CustomData, Reason, User};
use crate::protocol::{
    CallSnapshot, CalleeOutcome, ClientBody, ClientMessage, Command, Control, ErrorBody, Event,
    InviteRequest, ReplyResult, Role, ServerBody, ServerMessage, SnapshotState, SyncBody,
};

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
    /// its caller is told [`CommandError::TimedOut`] and it is never sent
    /// again. An invite given up on that the server had already taken is
    /// canceled by the session itself.
    pub command_deadline: Duration,
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
        }
    }
}

/// The connection as the app sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Connected and in step with the server.
    #[non_exhaustive]
    Connected {
        /// True when the event stream continued where it left off; false
        /// when a full resync was needed.
        resumed: bool,
    },
    /// The connection was lost; the driver is reconnecting.
    Reconnecting,
    /// The client stopped for good: it does not reconnect.
    Stopped {
        /// Why.
        reason: StopReason,
    },
}

/// Why a client stopped for good (see [`ConnectionState::Stopped`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StopReason {
    /// The server refused the token (garbage, wrong secret, expired, another
    /// user), and a fresh one from the token provider too, if there is one.
    Unauthorized,
    /// Another connection with the same user and device took over: the
    /// newest connection wins, this one stays down.
    Replaced,
    /// The token expired and nothing renewed it (no token provider).
    TokenExpired,
    /// The token provider failed to give a token.
    TokenProviderFailed,
    /// A failure that retrying cannot repair (invalid URL, refused upgrade,
    /// protocol error).
    Failed,
}

/// Everything that can happen to a device, as one typed stream. The first
/// ten variants are the ten callbacks of `InvitationEvents`; the rest are the
/// extras the ten do not cover.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AppEvent {
    /// Callee: an invitation rings on this device.
    #[non_exhaustive]
    IncomingCallReceived {
        /// The call.
        call_id: CallId,
        /// Who calls.
        caller: User,
        /// Voice or video.
        call_type: CallType,
        /// Everyone invited.
        callees: Arc<[User]>,
        /// The caller's data.
        custom_data: Option<CustomData>,
        /// Ring time left when it arrived.
        ring_remaining: Duration,
    },
    /// Callee: ringing stopped before this device answered (caller
    /// canceled, caller gone, answered or declined elsewhere).
    #[non_exhaustive]
    IncomingCallCanceled {
        /// The call.
        call_id: CallId,
        /// Who called.
        caller: User,
        /// The caller's data.
        custom_data: Option<CustomData>,
        /// Why: canceled, caller_gone, answered_elsewhere, declined_elsewhere ...
        reason: Reason,
    },
    /// Callee: nobody answered in time.
    #[non_exhaustive]
    IncomingCallTimeout {
        /// The call.
        call_id: CallId,
        /// Who called.
        caller: User,
    },
    /// Callee: this device accepted (confirmed by the server).
    #[non_exhaustive]
    IncomingCallAcceptButtonPressed {
        /// The call.
        call_id: CallId,
    },
    /// Callee: this device declined (confirmed by the server).
    #[non_exhaustive]
    IncomingCallDeclineButtonPressed {
        /// The call.
        call_id: CallId,
        /// Declined as busy.
        busy: bool,
    },
    /// Caller: this device canceled (confirmed by the server).
    #[non_exhaustive]
    OutgoingCallCancelButtonPressed {
        /// The call.
        call_id: CallId,
    },
    /// Caller: a callee accepted.
    #[non_exhaustive]
    OutgoingCallAccepted {
        /// The call.
        call_id: CallId,
        /// Who accepted.
        callee: UserId,
    },
    /// Caller: a callee was busy.
    #[non_exhaustive]
    OutgoingCallRejectedCauseBusy {
        /// The call.
        call_id: CallId,
        /// Who was busy.
        callee: UserId,
        /// Your data, as sent.
        custom_data: Option<CustomData>,
    },
    /// Caller: a callee declined.
    #[non_exhaustive]
    OutgoingCallDeclined {
        /// The call.
        call_id: CallId,
        /// Who declined.
        callee: UserId,
    },
    /// Caller: a callee did not answer in time (once per such callee).
    #[non_exhaustive]
    OutgoingCallTimeout {
        /// The call.
        call_id: CallId,
        /// Who did not answer.
        callee: UserId,
        /// Your data, as sent.
        custom_data: Option<CustomData>,
    },
    /// Callee: another device of yours accepted.
    #[non_exhaustive]
    AnsweredElsewhere {
        /// The call.
        call_id: CallId,
        /// The device that accepted.
        device: Option<DeviceId>,
    },
    /// Callee: another device of yours declined.
    #[non_exhaustive]
    DeclinedElsewhere {
        /// The call.
        call_id: CallId,
        /// The device that declined.
        device: Option<DeviceId>,
    },
    /// Caller: at least one device of this callee has the invitation.
    #[non_exhaustive]
    CalleeRinging {
        /// The call.
        call_id: CallId,
        /// The callee.
        callee: UserId,
    },
    /// Caller: a callee outcome not covered by the ten callbacks (canceled,
    /// caller gone, unreachable), or any outcome seen on a caller device
    /// that did not start the call.
    #[non_exhaustive]
    CalleeOutcome {
        /// The call.
        call_id: CallId,
        /// The callee.
        callee: UserId,
        /// The outcome.
        reason: Reason,
    },
    /// Caller: another device of yours started a call.
    #[non_exhaustive]
    OutgoingCallStarted {
        /// The call.
        call_id: CallId,
        /// The device that invited.
        device: DeviceId,
        /// Who was invited.
        callees: Arc<[User]>,
    },
    /// The call is over for you (hung up, or the invitation ended).
    #[non_exhaustive]
    CallEnded {
        /// The call.
        call_id: CallId,
        /// Why.
        reason: Reason,
    },
    /// The event stream could not be resumed; the local view was rebuilt
    /// from a full snapshot (events in between may be summarised).
    #[non_exhaustive]
    Resynced {
        /// Live calls in the snapshot.
        live_calls: usize,
    },
    /// The connection changed state. (Not `#[non_exhaustive]` itself, so
    /// that other crates can match `Connection(state)`; what can grow is
    /// [`ConnectionState`], which is.)
    Connection(ConnectionState),
}

impl AppEvent {
    /// The call the event is about, if any.
    pub fn call_id(&self) -> Option<&CallId> {
        use AppEvent::*;
        match self {
            IncomingCallReceived { call_id, .. }
            | IncomingCallCanceled { call_id, .. }
            | IncomingCallTimeout { call_id, .. }
            | IncomingCallAcceptButtonPressed { call_id }
            | IncomingCallDeclineButtonPressed { call_id, .. }
            | OutgoingCallCancelButtonPressed { call_id }
            | OutgoingCallAccepted { call_id, .. }
            | OutgoingCallRejectedCauseBusy { call_id, .. }
            | OutgoingCallDeclined { call_id, .. }
            | OutgoingCallTimeout { call_id, .. }
            | AnsweredElsewhere { call_id, .. }
            | DeclinedElsewhere { call_id, .. }
            | CalleeRinging { call_id, .. }
            | CalleeOutcome { call_id, .. }
            | OutgoingCallStarted { call_id, .. }
            | CallEnded { call_id, .. } => Some(call_id),
            Resynced { .. } | Connection(_) => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Local {
    /// Callee: ringing on this device.
    Ringing,
    /// Callee: known but not ringing here (too little time left).
    Silent,
    /// Callee: in the call (accepted here, or through glare).
    InCall,
    /// Caller: this device invited.
    Outgoing,
    /// Caller: another device of this user invited.
    OutgoingElsewhere,
}

#[derive(Debug, Clone)]
struct LocalCall {
    state: Local,
    caller: User,
    custom_data: Option<CustomData>,
    /// Caller side: each callee and its outcome once known.
    outcomes: Vec<(UserId, Option<Reason>)>,
    /// Local fallback deadline, while ringing.
    fallback_at: Option<Instant>,
    accept_fired: bool,
    decline_fired: bool,
    cancel_fired: bool,
}

impl LocalCall {
    fn new(state: Local, caller: User, custom_data: Option<CustomData>) -> Self {
        Self {
            state,
            caller,
            custom_data,
            outcomes: Vec::new(),
            fallback_at: None,
            accept_fired: false,
            decline_fired: false,
            cancel_fired: false,
        }
    }
}

/// Invites given up on, and calls disowned, remembered at most.
const ABANDONED_KEPT: usize = 64;

/// A command the session owns.
#[derive(Debug)]
struct Pending {
    body: ClientBody,
    /// Past this, the command is given up.
    deadline: Option<Instant>,
    /// Sent by the session on its own (no caller waits for it).
    internal: bool,
}

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
    /// When the awaited `sync` was (last) asked for, if this side asked.
    sync_asked: Option<Instant>,
    /// Since when a sequence gap is open.
    gap_since: Option<Instant>,
    /// The server does not know this link: the driver should reconnect.
    wants_reconnect: bool,
    /// The request id of this connection's `hello`.
    hello_id: Option<RequestId>,
    /// The server's error answer to that `hello`, if it refused it.
    refusal: Option<ErrorBody>,
    /// Next retry time and current backoff of each sent, unanswered command.
    retries: HashMap<RequestId, (Instant, Duration)>,
    ahead: BTreeMap<u64, Event>,
    calls: HashMap<CallId, LocalCall>,
    ended: HashSet<CallId>,
    ended_order: VecDeque<CallId>,
    /// Every command this session owns, from issue to answer or abandonment.
    pending: HashMap<RequestId, Pending>,
    pending_order: Vec<RequestId>,
    /// Invites given up on (newest last, bounded): a late answer or event
    /// showing the server took one gets its call canceled.
    abandoned: VecDeque<(RequestId, InviteRequest)>,
    /// Calls the session cancels on its own (from abandoned invites): the app
    /// hears nothing of them.
    disowned: VecDeque<CallId>,
    next_request: u64,
    request_prefix: String,
    connected: bool,
    fallbacks: BTreeSet<(Instant, CallId)>,
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
            sync_asked: None,
            gap_since: None,
            wants_reconnect: false,
            hello_id: None,
            refusal: None,
            retries: HashMap::default(),
            ahead: BTreeMap::new(),
            calls: HashMap::default(),
            ended: HashSet::default(),
            ended_order: VecDeque::new(),
            pending: HashMap::default(),
            pending_order: Vec::new(),
            abandoned: VecDeque::new(),
            disowned: VecDeque::new(),
            next_request: 1,
            request_prefix: request_prefix
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(32)
                .collect(),
            connected: false,
            fallbacks: BTreeSet::new(),
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
            .is_some_and(|c| c.state == Local::Ringing)
    }

    // ----- inputs -------------------------------------------------------

    /// The transport is (re)connected: queues `hello` (resuming from the
    /// last sequence number) and every unanswered command, with its
    /// original request id.
    pub fn handle_connected(&mut self, now: Instant, token: Option<String>) {
        self.connected = true;
        self.wants_reconnect = false;
        self.gap_since = None;
        self.sync_asked = None;
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
        self.refusal = None;
        self.transmit.push_back(ClientMessage::new(id, hello));
        for id in &self.pending_order {
            if let Some(p) = self.pending.get(id) {
                self.transmit
                    .push_back(ClientMessage::new(id.clone(), p.body.clone()));
                let backoff = self.config.command_retry;
                self.retries.insert(id.clone(), (now + backoff, backoff));
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
            self.retries.clear();
            self.gap_since = None;
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

    fn issue(&mut self, now: Instant, command: ClientBody, internal: bool) -> RequestId {
        let id = self.fresh_request_id();
        let pending = Pending {
            body: command.clone(),
            deadline: now.checked_add(self.config.command_deadline),
            internal,
        };
        self.pending.insert(id.clone(), pending);
        self.pending_order.push(id.clone());
        if self.connected {
            self.transmit
                .push_back(ClientMessage::new(id.clone(), command));
            let backoff = self.config.command_retry;
            self.retries.insert(id.clone(), (now + backoff, backoff));
        }
        id
    }

    /// A message from the server.
    pub fn handle_message(&mut self, now: Instant, message: ServerMessage) {
        match message.body {
            ServerBody::Welcome { seq, resumed, .. } => {
                if resumed {
                    self.awaiting_sync = false;
                    if self.last_seq.is_none() {
                        self.last_seq = Some(seq);
                    }
                } else {
                    self.awaiting_sync = true;
                    self.sync_asked = Some(now);
                }
                self.events
                    .push_back(AppEvent::Connection(ConnectionState::Connected { resumed }));
            }
            ServerBody::Reply { re, result } => self.on_reply(now, re, Ok(result)),
            ServerBody::Error(body) => self.on_error(now, body),
            ServerBody::Event { seq, event } => self.on_event(now, seq, event),
            ServerBody::Sync(sync) => self.on_sync(now, sync),
            ServerBody::Pong { seq: Some(seq), .. } => {
                // Events lost at the tail of the stream show up here.
                if !self.awaiting_sync && seq > self.last_seq.unwrap_or(0) {
                    self.gap_since.get_or_insert(now);
                }
            }
            ServerBody::Pong { .. } | ServerBody::Closing { .. } => {}
        }
    }

    /// Fires the timers due at `now`: command retries, gap and sync
    /// recovery, and the local fallback ring timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        let expired: Vec<RequestId> = self
            .pending_order
            .iter()
            .filter(|id| {
                self.pending
                    .get(*id)
                    .and_then(|p| p.deadline)
                    .is_some_and(|at| at <= now)
            })
            .cloned()
            .collect();
        for id in expired {
            if let Some(p) = self.give_up(&id) {
                if !p.internal {
                    self.completions
                        .push_back((id, Err(CommandError::TimedOut)));
                }
            }
        }
        if self.connected {
            let due: Vec<RequestId> = self
                .pending_order
                .iter()
                .filter(|id| self.retries.get(*id).is_some_and(|(at, _)| *at <= now))
                .cloned()
                .collect();
            for id in due {
                let Some(p) = self.pending.get(&id) else {
                    continue;
                };
                self.transmit
                    .push_back(ClientMessage::new(id.clone(), p.body.clone()));
                let (_, backoff) = self.retries[&id];
                let backoff = (backoff * 2).min(self.config.command_retry_max);
                self.retries.insert(id, (now + backoff, backoff));
            }
            if self
                .gap_since
                .is_some_and(|t| t + self.config.gap_timeout <= now)
            {
                self.gap_since = None;
                self.ahead.clear();
                self.request_sync(now);
            }
            if self.awaiting_sync
                && self
                    .sync_asked
                    .is_some_and(|t| t + self.config.sync_retry <= now)
            {
                self.awaiting_sync = false;
                self.request_sync(now);
            }
        }
        self.fire_fallbacks(now);
    }

    fn fire_fallbacks(&mut self, now: Instant) {
        while let Some((at, call_id)) = self.fallbacks.first().cloned() {
            if at > now {
                break;
            }
            self.fallbacks.pop_first();
            let Some(call) = self.calls.get(&call_id) else {
                continue;
            };
            if call.fallback_at != Some(at) {
                continue;
            }
            match call.state {
                Local::Ringing => {
                    let caller = call.caller.clone();
                    self.events.push_back(AppEvent::IncomingCallTimeout {
                        call_id: call_id.clone(),
                        caller,
                    });
                    self.finish(&call_id);
                }
                Local::Outgoing => {
                    let data = call.custom_data.clone();
                    let silent: Vec<UserId> = call
                        .outcomes
                        .iter()
                        .filter(|(_, r)| r.is_none())
                        .map(|(u, _)| u.clone())
                        .collect();
                    for callee in silent {
                        self.events.push_back(AppEvent::OutgoingCallTimeout {
                            call_id: call_id.clone(),
                            callee,
                            custom_data: data.clone(),
                        });
                    }
                    self.finish(&call_id);
                }
                _ => {
                    if let Some(c) = self.calls.get_mut(&call_id) {
                        c.fallback_at = None;
                    }
                }
            }
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

    /// The next timer: a fallback ring deadline, a command retry, gap or
    /// sync recovery. `None` when nothing rings and nothing is outstanding.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next = self.fallbacks.first().map(|(at, _)| *at);
        let mut consider = |t: Instant| {
            next = Some(next.map_or(t, |n| n.min(t)));
        };
        for p in self.pending.values() {
            if let Some(at) = p.deadline {
                consider(at);
            }
        }
        if self.connected {
            for (at, _) in self.retries.values() {
                consider(*at);
            }
            if let Some(t) = self.gap_since {
                consider(t + self.config.gap_timeout);
            }
            if let (true, Some(t)) = (self.awaiting_sync, self.sync_asked) {
                consider(t + self.config.sync_retry);
            }
        }
        next
    }

    // ----- internals ----------------------------------------------------

    fn fresh_request_id(&mut self) -> RequestId {
        let id = format!("{}r{}", self.request_prefix, self.next_request);
        self.next_request += 1;
        RequestId::new(id).expect("prefix is alphanumeric and short")
    }

    fn arm(&mut self, call_id: &CallId, at: Instant) {
        if let Some(call) = self.calls.get_mut(call_id) {
            if let Some(old) = call.fallback_at.replace(at) {
                self.fallbacks.remove(&(old, call_id.clone()));
            }
            self.fallbacks.insert((at, call_id.clone()));
        }
    }

    /// The call is over on this device: forget it, remember its id.
    fn finish(&mut self, call_id: &CallId) {
        if let Some(call) = self.calls.remove(call_id) {
            if let Some(at) = call.fallback_at {
                self.fallbacks.remove(&(at, call_id.clone()));
            }
        }
        if self.ended.insert(call_id.clone()) {
            self.ended_order.push_back(call_id.clone());
            while self.ended_order.len() > self.config.remembered_calls {
                if let Some(old) = self.ended_order.pop_front() {
                    self.ended.remove(&old);
                }
            }
        }
    }

    fn should_ring(&self, remaining: Duration, total: Duration) -> bool {
        remaining >= self.config.min_ring_left.min(total / 2) && !remaining.is_zero()
    }

    fn on_reply(&mut self, now: Instant, re: RequestId, result: Result<ReplyResult, CommandError>) {
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
        self.pending_order.retain(|r| r != &re);
        self.retries.remove(&re);
        if pending.internal {
            // Our own clean-up: a cancel that lost the race to an accept
            // hangs up instead.
            if let (
                ClientBody::Command(Command::Cancel { call_id }),
                Err(CommandError::Ended {
                    reason: Reason::Accepted,
                }),
            ) = (&pending.body, &result)
            {
                let call_id = call_id.clone();
                self.issue(now, Command::HangUp { call_id }.into(), true);
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
    fn give_up(&mut self, id: &RequestId) -> Option<Pending> {
        let pending = self.pending.remove(id)?;
        self.pending_order.retain(|r| r != id);
        self.retries.remove(id);
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
    fn disown(&mut self, now: Instant, call_id: CallId, joined: bool) {
        if self.disowned.contains(&call_id) {
            return;
        }
        if self.disowned.len() >= ABANDONED_KEPT {
            self.disowned.pop_front();
        }
        self.disowned.push_back(call_id.clone());
        self.finish(&call_id);
        let command = if joined {
            Command::HangUp { call_id }
        } else {
            Command::Cancel { call_id }
        };
        self.issue(now, command.into(), true);
    }

    /// Our device started `call_id` for these callees, and this session
    /// knows nothing of it: it is an invite given up on whose answer was
    /// lost. Takes the matching abandoned invite out.
    fn is_abandoned_invite(&mut self, callees: &[User]) -> bool {
        let found = self.abandoned.iter().position(|(_, req)| {
            req.callees.len() == callees.len()
                && req
                    .callees
                    .iter()
                    .all(|c| callees.iter().any(|u| u.id == *c))
        });
        found.map(|i| self.abandoned.remove(i)).is_some()
    }

    fn on_error(&mut self, now: Instant, body: ErrorBody) {
        let Some(re) = body.re.clone() else { return };
        if self.hello_id.as_ref() == Some(&re) {
            // The hello itself was refused: no session on this link.
            self.refusal = Some(body);
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

    fn on_success(&mut self, now: Instant, command: &ClientBody, result: &ReplyResult) {
        let ClientBody::Command(command) = command else {
            return; // renew: nothing to apply
        };
        match (command, result) {
            (
                Command::Invite(req),
                ReplyResult::Invited {
                    call_id,
                    ring_remaining_ms,
                    callees,
                },
            ) => {
                if self.ended.contains(call_id) {
                    return;
                }
                let me = User {
                    id: self.user.clone(),
                    name: "".into(),
                };
                let call = self.calls.entry(call_id.clone()).or_insert_with(|| {
                    LocalCall::new(Local::Outgoing, me, req.custom_data.clone())
                });
                call.state = Local::Outgoing;
                for c in callees {
                    if !call.outcomes.iter().any(|(u, _)| u == &c.user) {
                        call.outcomes.push((c.user.clone(), None));
                    }
                }
                let at =
                    now + Duration::from_millis(*ring_remaining_ms) + self.config.fallback_margin;
                self.arm(call_id, at);
            }
            (Command::Invite(_), ReplyResult::Joined { call_id, caller })
                if !self.ended.contains(call_id) =>
            {
                self.calls
                    .entry(call_id.clone())
                    .or_insert_with(|| LocalCall::new(Local::Silent, caller.clone(), None));
                self.mark_joined(call_id, caller);
            }
            (Command::Accept { call_id }, _) => self.mark_accepted(call_id),
            (Command::Decline { call_id, busy }, _) => self.mark_declined(call_id, *busy),
            (Command::Cancel { call_id }, _) => {
                let fire = match self.calls.get_mut(call_id) {
                    Some(call) => !std::mem::replace(&mut call.cancel_fired, true),
                    // Confirmed for a call this device never knew live (it
                    // had already ended): fire once, then remember it as
                    // finished so a repeated cancel does not fire again.
                    None => {
                        let first = !self.ended.contains(call_id);
                        self.finish(call_id);
                        first
                    }
                };
                if fire {
                    self.events
                        .push_back(AppEvent::OutgoingCallCancelButtonPressed {
                            call_id: call_id.clone(),
                        });
                }
            }
            _ => {}
        }
    }

    /// An invite of ours to exactly `caller` is unanswered: an "accepted by
    /// this device" for `caller`'s call is then our invite merged by glare.
    fn glare_invite_pending(&self, caller: &UserId) -> bool {
        self.pending.values().any(|p| {
            matches!(&p.body, ClientBody::Command(Command::Invite(req)) if req.callees.len() == 1 && &req.callees[0] == caller)
        })
    }

    /// Glare: our invite became the acceptance of `caller`'s call. The app
    /// sees its outgoing call accepted, once, whichever of the reply and the
    /// event arrives first.
    fn mark_joined(&mut self, call_id: &CallId, caller: &User) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        call.state = Local::InCall;
        if let Some(at) = call.fallback_at.take() {
            self.fallbacks.remove(&(at, call_id.clone()));
        }
        if !std::mem::replace(&mut call.accept_fired, true) {
            self.events.push_back(AppEvent::OutgoingCallAccepted {
                call_id: call_id.clone(),
                callee: caller.id.clone(),
            });
        }
    }

    fn mark_accepted(&mut self, call_id: &CallId) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        call.state = Local::InCall;
        if let Some(at) = call.fallback_at.take() {
            self.fallbacks.remove(&(at, call_id.clone()));
        }
        if !std::mem::replace(&mut call.accept_fired, true) {
            self.events
                .push_back(AppEvent::IncomingCallAcceptButtonPressed {
                    call_id: call_id.clone(),
                });
        }
    }

    fn mark_declined(&mut self, call_id: &CallId, busy: bool) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        if !std::mem::replace(&mut call.decline_fired, true) {
            self.events
                .push_back(AppEvent::IncomingCallDeclineButtonPressed {
                    call_id: call_id.clone(),
                    busy,
                });
        }
        self.finish(call_id);
    }

    fn on_event(&mut self, now: Instant, seq: u64, event: Event) {
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

    fn request_sync(&mut self, now: Instant) {
        if !self.awaiting_sync {
            self.awaiting_sync = true;
            self.sync_asked = Some(now);
            let id = self.fresh_request_id();
            self.transmit
                .push_back(ClientMessage::new(id, Control::Sync));
        }
    }

    fn apply(&mut self, now: Instant, event: Event) {
        let call_id = event.call_id().clone();
        if self.ended.contains(&call_id) {
            return; // late news about a call this device finished
        }
        match event {
            Event::IncomingCall {
                call_id,
                caller,
                call_type,
                callees,
                custom_data,
                ring_remaining_ms,
                ring_timeout_ms,
            } => {
                if self.calls.contains_key(&call_id) {
                    return;
                }
                let remaining = Duration::from_millis(ring_remaining_ms);
                let ring = self.should_ring(remaining, Duration::from_millis(ring_timeout_ms));
                let state = if ring { Local::Ringing } else { Local::Silent };
                self.calls.insert(
                    call_id.clone(),
                    LocalCall::new(state, caller.clone(), custom_data.clone()),
                );
                if ring {
                    self.arm(&call_id, now + remaining + self.config.fallback_margin);
                    self.events.push_back(AppEvent::IncomingCallReceived {
                        call_id,
                        caller,
                        call_type,
                        callees,
                        custom_data,
                        ring_remaining: remaining,
                    });
                }
            }
            Event::IncomingEnded {
                call_id,
                reason,
                device,
            } => self.incoming_ended(&call_id, reason, device),
            Event::OutgoingCall {
                call_id,
                device,
                callees,
                custom_data,
                ring_remaining_ms,
                ..
            } => {
                if self.calls.contains_key(&call_id) || self.disowned.contains(&call_id) {
                    return;
                }
                let mine = device == self.device;
                if mine && !self.ended.contains(&call_id) && self.is_abandoned_invite(&callees) {
                    return self.disown(now, call_id, false);
                }
                let me = User {
                    id: self.user.clone(),
                    name: "".into(),
                };
                let state = if mine {
                    Local::Outgoing
                } else {
                    Local::OutgoingElsewhere
                };
                let mut call = LocalCall::new(state, me, custom_data);
                call.outcomes = callees.iter().map(|u| (u.id.clone(), None)).collect();
                self.calls.insert(call_id.clone(), call);
                if mine {
                    let at = now
                        + Duration::from_millis(ring_remaining_ms)
                        + self.config.fallback_margin;
                    self.arm(&call_id, at);
                } else {
                    self.events.push_back(AppEvent::OutgoingCallStarted {
                        call_id,
                        device,
                        callees,
                    });
                }
            }
            Event::CalleeRinging { call_id, callee } => {
                if self.calls.contains_key(&call_id) {
                    self.events
                        .push_back(AppEvent::CalleeRinging { call_id, callee });
                }
            }
            Event::CalleeOutcome {
                call_id,
                callee,
                reason,
            } => self.callee_outcome(&call_id, callee, reason),
            Event::CallEnded { call_id, reason } => {
                if self.calls.contains_key(&call_id) {
                    self.finish(&call_id);
                    self.events
                        .push_back(AppEvent::CallEnded { call_id, reason });
                }
            }
        }
    }

    fn incoming_ended(&mut self, call_id: &CallId, reason: Reason, device: Option<DeviceId>) {
        let Some(call) = self.calls.get(call_id) else {
            // Ended before it ever arrived (reordered): never ring for it.
            self.finish(call_id);
            return;
        };
        let mine = device.as_ref() == Some(&self.device);
        let rang = call.state == Local::Ringing;
        let (caller, data) = (call.caller.clone(), call.custom_data.clone());
        match reason {
            Reason::Accepted if mine => {
                if self.glare_invite_pending(&caller.id) {
                    self.mark_joined(call_id, &caller);
                } else {
                    self.mark_accepted(call_id);
                }
                return;
            }
            Reason::Declined | Reason::Busy if mine => {
                self.mark_declined(call_id, reason == Reason::Busy);
                return;
            }
            Reason::Accepted => {
                if call.state == Local::InCall {
                    return; // glare: our own invite accepted it
                }
                self.events.push_back(AppEvent::AnsweredElsewhere {
                    call_id: call_id.clone(),
                    device: device.clone(),
                });
                if rang {
                    self.events.push_back(AppEvent::IncomingCallCanceled {
                        call_id: call_id.clone(),
                        caller,
                        custom_data: data,
                        reason: Reason::AnsweredElsewhere,
                    });
                }
            }
            Reason::Declined | Reason::Busy => {
                self.events.push_back(AppEvent::DeclinedElsewhere {
                    call_id: call_id.clone(),
                    device: device.clone(),
                });
                if rang {
                    self.events.push_back(AppEvent::IncomingCallCanceled {
                        call_id: call_id.clone(),
                        caller,
                        custom_data: data,
                        reason: Reason::DeclinedElsewhere,
                    });
                }
            }
            Reason::Timeout => {
                if rang {
                    self.events.push_back(AppEvent::IncomingCallTimeout {
                        call_id: call_id.clone(),
                        caller,
                    });
                }
            }
            other => {
                if rang {
                    self.events.push_back(AppEvent::IncomingCallCanceled {
                        call_id: call_id.clone(),
                        caller,
                        custom_data: data,
                        reason: other,
                    });
                }
            }
        }
        self.finish(call_id);
    }

    fn callee_outcome(&mut self, call_id: &CallId, callee: UserId, reason: Reason) {
        let Some(call) = self.calls.get_mut(call_id) else {
            return;
        };
        match call.outcomes.iter_mut().find(|(u, _)| u == &callee) {
            Some((_, slot @ None)) => *slot = Some(reason),
            Some((_, Some(_))) => return, // already known: never twice
            None => call.outcomes.push((callee.clone(), Some(reason))),
        }
        let data = call.custom_data.clone();
        let call_id = call_id.clone();
        let event = if call.state != Local::Outgoing {
            AppEvent::CalleeOutcome {
                call_id,
                callee,
                reason,
            }
        } else {
            match reason {
                Reason::Accepted => AppEvent::OutgoingCallAccepted { call_id, callee },
                Reason::Declined => AppEvent::OutgoingCallDeclined { call_id, callee },
                Reason::Busy => AppEvent::OutgoingCallRejectedCauseBusy {
                    call_id,
                    callee,
                    custom_data: data,
                },
                Reason::Timeout => AppEvent::OutgoingCallTimeout {
                    call_id,
                    callee,
                    custom_data: data,
                },
                other => AppEvent::CalleeOutcome {
                    call_id,
                    callee,
                    reason: other,
                },
            }
        };
        if let Some(call) = self.calls.get_mut(event.call_id().expect("has one")) {
            if call.outcomes.iter().all(|(_, r)| r.is_some()) {
                if let Some(at) = call.fallback_at.take() {
                    self.fallbacks
                        .remove(&(at, event.call_id().expect("has one").clone()));
                }
            }
        }
        self.events.push_back(event);
    }

    fn on_sync(&mut self, now: Instant, sync: SyncBody) {
        self.awaiting_sync = false;
        self.sync_asked = None;
        self.gap_since = None;
        self.ahead.clear();
        self.last_seq = Some(sync.seq);
        let live: HashSet<CallId> = sync.calls.iter().map(|c| c.call_id.clone()).collect();
        // Calls this device thinks live but the server does not: they ended.
        let mut gone: Vec<CallId> = self
            .calls
            .keys()
            .filter(|id| !live.contains(*id))
            .cloned()
            .collect();
        gone.sort(); // deterministic event order
        for call_id in gone {
            let ended = sync.ended.iter().find(|e| e.call_id == call_id);
            let reason = ended.map_or(Reason::Failed, |e| e.reason);
            let outcomes = ended.map(|e| e.outcomes.clone()).unwrap_or_default();
            self.end_from_sync(&call_id, reason, &outcomes);
        }
        let count = sync.calls.len();
        for snap in sync.calls {
            self.merge_snapshot(now, snap);
        }
        self.events
            .push_back(AppEvent::Resynced { live_calls: count });
    }

    fn end_from_sync(&mut self, call_id: &CallId, reason: Reason, outcomes: &[CalleeOutcome]) {
        let Some(call) = self.calls.get(call_id) else {
            return;
        };
        match call.state {
            Local::Ringing | Local::Silent => {
                let reason = match reason {
                    Reason::HungUp | Reason::Accepted => Reason::AnsweredElsewhere,
                    other => other,
                };
                self.incoming_ended(call_id, reason, None);
            }
            Local::Outgoing | Local::OutgoingElsewhere => {
                let pending: Vec<UserId> = call
                    .outcomes
                    .iter()
                    .filter(|(_, r)| r.is_none())
                    .map(|(u, _)| u.clone())
                    .collect();
                // Only outcomes the server still knows: a guess could
                // contradict the truth (a group's overall reason is not each
                // callee's).
                for callee in pending {
                    if let Some(o) = outcomes.iter().find(|o| o.callee == callee) {
                        self.callee_outcome(call_id, callee, o.reason);
                    }
                }
                self.finish(call_id);
                self.events.push_back(AppEvent::CallEnded {
                    call_id: call_id.clone(),
                    reason,
                });
            }
            Local::InCall => {
                self.finish(call_id);
                self.events.push_back(AppEvent::CallEnded {
                    call_id: call_id.clone(),
                    reason,
                });
            }
        }
    }

    fn merge_snapshot(&mut self, now: Instant, snap: CallSnapshot) {
        if self.ended.contains(&snap.call_id) {
            return;
        }
        let remaining = Duration::from_millis(snap.ring_remaining_ms);
        match snap.role {
            Role::Callee => match (snap.state, self.calls.get(&snap.call_id).map(|c| c.state)) {
                (SnapshotState::Ringing, None) => {
                    self.apply(
                        now,
                        Event::IncomingCall {
                            call_id: snap.call_id,
                            caller: snap.caller,
                            call_type: snap.call_type,
                            callees: snap.callees,
                            custom_data: snap.custom_data,
                            ring_remaining_ms: snap.ring_remaining_ms,
                            ring_timeout_ms: snap.ring_timeout_ms,
                        },
                    );
                }
                (SnapshotState::Accepted, Some(Local::Ringing | Local::Silent)) => {
                    self.incoming_ended(&snap.call_id, Reason::Accepted, snap.device);
                }
                (SnapshotState::Accepted, None) => {
                    let mine = snap.device.as_ref() == Some(&self.device);
                    if mine {
                        let mut call = LocalCall::new(Local::InCall, snap.caller, snap.custom_data);
                        call.accept_fired = true;
                        self.calls.insert(snap.call_id, call);
                    }
                }
                _ => {}
            },
            Role::Caller => {
                if !self.calls.contains_key(&snap.call_id) {
                    let mine = snap.caller_device == self.device;
                    let state = if mine {
                        Local::Outgoing
                    } else {
                        Local::OutgoingElsewhere
                    };
                    let mut call = LocalCall::new(state, snap.caller, snap.custom_data);
                    call.outcomes = snap.callees.iter().map(|u| (u.id.clone(), None)).collect();
                    self.calls.insert(snap.call_id.clone(), call);
                    if mine && snap.state == SnapshotState::Ringing {
                        self.arm(&snap.call_id, now + remaining + self.config.fallback_margin);
                    }
                    if !mine {
                        self.events.push_back(AppEvent::OutgoingCallStarted {
                            call_id: snap.call_id.clone(),
                            device: snap.caller_device,
                            callees: snap.callees,
                        });
                    }
                }
                for o in snap.outcomes {
                    self.callee_outcome(&snap.call_id, o.callee, o.reason);
                }
            }
        }
    }
}
