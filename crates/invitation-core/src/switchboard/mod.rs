//! The authoritative switchboard: every invitation's state and timer, for
//! every user and device. The server and the in-process memory hub both run
//! exactly this.
//!
//! # Run loop
//!
//! The switchboard is sans-IO. Its owner:
//!
//! 1. feeds one input: [`Switchboard::connect`], [`Switchboard::disconnect`],
//!    [`Switchboard::handle_command`] or [`Switchboard::handle_timeout`],
//!    each with the current time;
//! 2. drains [`Switchboard::poll_output`] until it returns `None`, sending
//!    each message to its connection and closing connections as told;
//! 3. sleeps until [`Switchboard::poll_timeout`] (or the next input), then
//!    calls `handle_timeout(now)`. Early or spurious calls are harmless.
//!
//! Every input first fires the timers already due at `now`, so a command
//! that arrives after a deadline but before the owner's timer woke up still
//! sees the timeout (an accept 1 ms late is refused as `ended: timeout`).
//!
//! The output queue holds what one input produced (bounded by callees ×
//! devices of the calls it touched); it must be drained after every input.

mod call;
mod policy;
mod requests;
mod timers;
mod user;

use std::collections::VecDeque;

use foldhash::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::connection::SwitchboardInput;
use crate::error::{CommandError, ValidationError};
use crate::id::{CallId, CallIdGenerator, DeviceId, RequestId, UserId};
use crate::model::{CustomData, DEFAULT_MAX_CUSTOM_DATA, RING_TIMEOUT_BOUNDS_S, Reason, User};
use crate::protocol::{
    CallSnapshot, CalleeOutcome, CalleeStatus, CloseReason, Command, EndedCall, ErrorBody, Event,
    InitialStatus, InviteRequest, ReplyResult, Role, ServerBody, ServerMessage, SnapshotState,
    SyncBody,
};

use call::{Call, CallInfo, Slot};
pub use policy::ContactPolicy;
use requests::Requests;
use timers::{TimerKind, Timers};
use user::{IdleUsers, LogEvent, UserEntry};

/// A connection (one device's session) as the switchboard knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(u64);

impl ConnId {
    /// A connection id chosen by the owner (the server, the memory hub):
    /// unique among the connections open at once.
    pub const fn new(raw: u64) -> Self {
        Self(raw)
    }

    /// The raw number.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conn#{}", self.0)
    }
}

/// What the owner must do after an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this message on this connection.
    Send {
        /// Where to.
        conn: ConnId,
        /// What.
        message: ServerMessage,
    },
    /// Close this connection (after sending a `closing` message with the
    /// reason). The switchboard already forgot it.
    Close {
        /// Which.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
    },
}

/// A call's milestones, for the owner's logs and metrics (not for clients:
/// they get events). Drained with [`Switchboard::poll_notice`]; only what
/// the last input produced is held.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallNotice {
    /// An invitation was created.
    Started {
        /// The call.
        call_id: CallId,
        /// Who invited.
        caller: UserId,
        /// Everyone invited.
        callees: Arc<[User]>,
    },
    /// A callee's outcome was decided.
    Outcome {
        /// The call.
        call_id: CallId,
        /// The callee.
        callee: UserId,
        /// The outcome.
        reason: Reason,
    },
    /// The call is over for everyone.
    Ended {
        /// The call.
        call_id: CallId,
        /// The call's overall reason (as the caller sees it).
        reason: Reason,
    },
}

/// What happens to an invitation for a callee who is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum BusyPolicy {
    /// Reject at once with outcome `busy` (the origin's behaviour). Busy
    /// means: in an accepted call, inviting someone (ringing outgoing), or
    /// already ringing for another invitation (so nobody rings twice).
    #[default]
    RejectBusy,
    /// Ring anyway (call waiting); the app decides.
    RingAnyway,
}

/// What happens to an invitation for a callee with no device online.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OfflinePolicy {
    /// Hold it until the ring timeout; a device that connects in time gets it.
    #[default]
    Hold,
    /// Reject at once with outcome `unreachable`.
    Reject,
}

/// Switchboard settings. The defaults follow docs/product.md.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SwitchboardConfig {
    /// Most callees per invitation (9).
    pub max_callees: usize,
    /// Ring timeout when the invite names none (60 s).
    pub default_ring_timeout_s: u32,
    /// Smallest ring timeout accepted (1 s; at least
    /// [`RING_TIMEOUT_BOUNDS_S`]'s start).
    pub min_ring_timeout_s: u32,
    /// Largest ring timeout accepted (600 s; at most
    /// [`RING_TIMEOUT_BOUNDS_S`]'s end).
    pub max_ring_timeout_s: u32,
    /// Largest custom data, bytes (8 KiB).
    pub max_custom_data: usize,
    /// Busy handling.
    pub busy_policy: BusyPolicy,
    /// Offline handling.
    pub offline_policy: OfflinePolicy,
    /// How long a ringing invitation survives its caller's device vanishing (15 s).
    pub caller_gone_grace: Duration,
    /// Events kept per user for resume (300); older gaps get a full `sync`.
    pub resume_buffer: usize,
    /// How long ended calls and request ids are remembered (10 min), so late
    /// duplicates get the same answer; also how long a user record with no
    /// device and no live call is kept (for resume) before it is forgotten,
    /// whether the user ever connected or was only named as a callee.
    pub retention: Duration,
    /// Most ended calls remembered at once; the oldest are forgotten first.
    pub max_tombstones: usize,
    /// Most request ids remembered at once; the oldest are forgotten first.
    pub max_remembered_requests: usize,
    /// Most request ids remembered per user (1,000): past it, that user's
    /// oldest answer is forgotten, so no user can push others' out. Only
    /// answers to commands that changed something are remembered.
    pub max_remembered_requests_per_user: usize,
    /// Ended calls listed per user in `sync` (32).
    pub recent_ended_per_user: usize,
    /// Who may call whom, asked for every callee of every invite (default:
    /// anyone may call anyone).
    pub contact_policy: ContactPolicy,
    /// Hide callees' presence from callers (off by default): the invite's
    /// reply says `ringing` for every callee whether online, offline, held
    /// or not, and no `callee_ringing` receipt is sent; the caller learns
    /// only outcomes (accepted, declined, timeout ...). Outcomes decided at
    /// invite time (`busy` under [`BusyPolicy::RejectBusy`], `unreachable`
    /// under [`OfflinePolicy::Reject`]) still arrive at once: pair it with
    /// `RingAnyway` and `Hold` to hide those too.
    pub hide_callee_status: bool,
}

impl Default for SwitchboardConfig {
    fn default() -> Self {
        Self {
            max_callees: 9,
            default_ring_timeout_s: 60,
            min_ring_timeout_s: *RING_TIMEOUT_BOUNDS_S.start(),
            max_ring_timeout_s: *RING_TIMEOUT_BOUNDS_S.end(),
            max_custom_data: DEFAULT_MAX_CUSTOM_DATA,
            busy_policy: BusyPolicy::RejectBusy,
            offline_policy: OfflinePolicy::Hold,
            caller_gone_grace: Duration::from_secs(15),
            resume_buffer: 300,
            retention: Duration::from_secs(600),
            max_tombstones: 1_000_000,
            max_remembered_requests: 1_000_000,
            max_remembered_requests_per_user: 1_000,
            recent_ended_per_user: 32,
            contact_policy: ContactPolicy::anyone(),
            hide_callee_status: false,
        }
    }
}

/// Counters for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SwitchboardStats {
    /// Invitations created.
    pub invitations: u64,
    /// Per-callee outcomes so far, indexed by [`Reason::index`]; read
    /// with [`SwitchboardStats::outcome_count`].
    pub outcomes: [u64; Reason::COUNT],
    /// Invites merged into an existing call by glare resolution.
    pub glare_merges: u64,
    /// Commands answered from the request-id memory (retries).
    pub duplicate_requests: u64,
}

impl SwitchboardStats {
    /// How many callees ended with `reason` so far.
    pub fn outcome_count(&self, reason: Reason) -> u64 {
        self.outcomes[reason.index()]
    }
}

/// A read-only view of one call, for inspection and tests.
#[derive(Debug, Clone, Copy)]
pub struct CallView<'a> {
    call: &'a Call,
}

impl CallView<'_> {
    /// The call id.
    pub fn call_id(&self) -> &CallId {
        &self.call.info.call_id
    }
    /// The caller.
    pub fn caller(&self) -> &User {
        &self.call.info.caller
    }
    /// The callees, in invite order.
    pub fn callees(&self) -> &[User] {
        &self.call.info.callees
    }
    /// A callee's outcome (`None` while ringing or not a callee).
    pub fn outcome(&self, callee: &UserId) -> Option<Reason> {
        self.call
            .slot_of(callee)
            .and_then(|i| self.call.slots[i].outcome)
    }
    /// The device that accepted or declined for a callee.
    pub fn answered_by(&self, callee: &UserId) -> Option<&DeviceId> {
        self.call
            .slot_of(callee)
            .and_then(|i| self.call.slots[i].device.as_ref())
    }
    /// At least one callee is still ringing.
    pub fn is_ringing(&self) -> bool {
        self.call.is_ringing()
    }
    /// The caller-gone grace deadline, when armed.
    pub fn caller_gone_at(&self) -> Option<Instant> {
        self.call.gone_at
    }
    /// The ring deadline.
    pub fn deadline(&self) -> Instant {
        self.call.info.deadline
    }
    /// The whole ring timeout chosen at invite time.
    pub fn ring_timeout(&self) -> Duration {
        self.call.info.ring_for
    }
    /// The reason the whole call ended, once it has.
    pub fn ended(&self) -> Option<Reason> {
        self.call.ended
    }
}

#[derive(Debug)]
struct ConnEntry {
    user: UserId,
    device: DeviceId,
}

/// The authoritative call-invitation state machine. See the
/// [module docs](self) for the run loop.
pub struct Switchboard {
    config: SwitchboardConfig,
    ids: Box<dyn CallIdGenerator>,
    now: Option<Instant>,
    conns: HashMap<ConnId, ConnEntry>,
    // Values are boxed: a hash table's buckets are sized to the next power
    // of two and sit there whether used or not, so small buckets keep a
    // million pending invitations compact.
    users: HashMap<UserId, Box<UserEntry>>,
    calls: HashMap<CallId, Box<Call>>,
    timers: Timers,
    tombstones: VecDeque<(Instant, CallId)>,
    requests: Requests,
    idle_users: IdleUsers,
    out: VecDeque<Output>,
    notices: VecDeque<CallNotice>,
    /// Events produced while a call is borrowed, emitted afterwards.
    pending: Vec<(UserId, LogEvent)>,
    stats: SwitchboardStats,
}

impl fmt::Debug for Switchboard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Switchboard")
            .field("connections", &self.conns.len())
            .field("users", &self.users.len())
            .field("calls", &self.calls.len())
            .field("timers", &self.timers.len())
            .finish_non_exhaustive()
    }
}

impl Switchboard {
    /// A switchboard with these settings, taking call ids from `ids`.
    pub fn new(config: SwitchboardConfig, ids: impl CallIdGenerator + 'static) -> Self {
        Self {
            config,
            ids: Box::new(ids),
            now: None,
            conns: HashMap::default(),
            users: HashMap::default(),
            calls: HashMap::default(),
            timers: Timers::default(),
            tombstones: VecDeque::new(),
            requests: Requests::default(),
            idle_users: IdleUsers::default(),
            out: VecDeque::new(),
            notices: VecDeque::new(),
            pending: Vec::new(),
            stats: SwitchboardStats::default(),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &SwitchboardConfig {
        &self.config
    }

    // ----- inputs -------------------------------------------------------

    /// A device of `user` connected (already authenticated by the owner).
    ///
    /// With `last_seq`, the events after it are replayed when the resume
    /// buffer still holds them (`welcome.resumed = true`); otherwise, and on
    /// a fresh start, a full `sync` follows the `welcome`. If the same device
    /// was still connected, its old connection is closed (`replaced`): the
    /// newest wins. Invitations held for an offline user ring now.
    ///
    /// `conn` is chosen by the owner and must not be open already (if it
    /// is, the old connection is disconnected first). `hello` is the request
    /// id the `welcome` answers.
    pub fn connect(
        &mut self,
        now: Instant,
        conn: ConnId,
        user: User,
        device: DeviceId,
        last_seq: Option<u64>,
        hello: Option<RequestId>,
    ) {
        if self.conns.contains_key(&conn) {
            self.disconnect(now, conn);
        }
        let now = self.advance(now);
        let user_id = user.id.clone();
        let entry = self
            .users
            .entry(user_id.clone())
            .or_insert_with(|| Box::new(UserEntry::new(user.clone())));
        entry.user = user.clone();
        entry.idle_since = None;
        match entry.devices.iter_mut().find(|(d, _)| *d == device) {
            Some(slot) => {
                let old = std::mem::replace(&mut slot.1, conn);
                self.conns.remove(&old);
                self.out.push_back(Output::Close {
                    conn: old,
                    reason: CloseReason::Replaced,
                });
            }
            None => entry.devices.push((device.clone(), conn)),
        }
        self.conns.insert(
            conn,
            ConnEntry {
                user: user_id.clone(),
                device: device.clone(),
            },
        );

        let entry = &self.users[&user_id];
        let seq = entry.seq;
        let resumed = last_seq.is_some_and(|l| entry.can_resume(l));
        let replay: Vec<ServerBody> = match last_seq {
            Some(l) if resumed => entry
                .since(l)
                .map(|(seq, ev)| ServerBody::Event {
                    seq,
                    event: render(&self.calls, &user_id, ev, now),
                })
                .collect(),
            _ => vec![ServerBody::Sync(self.snapshot(&user_id, now, None))],
        };
        self.send(
            conn,
            ServerBody::Welcome {
                re: hello,
                user,
                device: device.clone(),
                seq,
                resumed,
            },
        );
        for body in replay {
            self.send(conn, body);
        }

        // Held invitations now ring: tell their callers; a returning caller
        // device disarms its caller-gone timer.
        let live = self.users[&user_id].calls.clone();
        for call_id in live {
            let Some(call) = self.calls.get_mut(&call_id) else {
                continue;
            };
            if let Some(i) = call.slot_of(&user_id) {
                let slot = &mut call.slots[i];
                // The receipt tells the caller a device is online: not
                // sent when callee status is hidden.
                if slot.is_ringing() && !slot.rung {
                    slot.rung = true;
                    if !self.config.hide_callee_status {
                        let caller = call.info.caller.id.clone();
                        self.pending.push((
                            caller,
                            LogEvent::CalleeRinging {
                                call: call_id.clone(),
                                callee: user_id.clone(),
                            },
                        ));
                    }
                }
            }
            if call.info.caller.id == user_id && call.info.caller_device == device {
                if let Some(at) = call.gone_at.take() {
                    self.timers.remove(at, TimerKind::CallerGone, &call_id);
                }
            }
        }
        self.flush(now);
    }

    /// A connection ended (closed, lost, or timed out by heartbeats).
    /// Unknown or already-replaced connections are ignored.
    pub fn disconnect(&mut self, now: Instant, conn: ConnId) {
        let now = self.advance(now);
        let Some(ConnEntry { user, device }) = self.conns.remove(&conn) else {
            return;
        };
        let Some(entry) = self.users.get_mut(&user) else {
            return;
        };
        entry.devices.retain(|(_, c)| *c != conn);
        for call_id in &entry.calls {
            let Some(call) = self.calls.get_mut(call_id) else {
                continue;
            };
            if call.info.caller.id == user
                && call.info.caller_device == device
                && call.is_ringing()
                && call.gone_at.is_none()
            {
                let at = now + self.config.caller_gone_grace;
                call.gone_at = Some(at);
                self.timers
                    .insert(at, TimerKind::CallerGone, call_id.clone());
            }
        }
        self.idle_users.note(&user, entry, now);
    }

    /// What a connection machine ([`crate::connection`]) hands over, for
    /// connection `conn`: one entry point for every shell.
    pub fn handle_input(&mut self, now: Instant, conn: ConnId, input: SwitchboardInput) {
        match input {
            SwitchboardInput::Connect {
                user,
                device,
                last_seq,
                hello,
            } => self.connect(now, conn, user, device, last_seq, Some(hello)),
            SwitchboardInput::Command { id, command } => {
                let _ = self.handle_command(now, conn, id, command);
            }
            SwitchboardInput::Sync { id } => self.handle_sync(now, conn, id),
            SwitchboardInput::Disconnect => self.disconnect(now, conn),
        }
    }

    /// A `sync` request: the connection gets a full snapshot answering `id`.
    pub fn handle_sync(&mut self, now: Instant, conn: ConnId, id: RequestId) {
        let now = self.advance(now);
        let Some(entry) = self.conns.get(&conn) else {
            return self.reply(conn, &id, &Err(CommandError::NotConnected));
        };
        let user = entry.user.clone();
        let sync = self.snapshot(&user, now, Some(id));
        self.send(conn, ServerBody::Sync(sync));
    }

    /// A call command from a connection. The reply (or error) is queued as
    /// an output *before* the events the command caused, and also returned.
    ///
    /// A request id seen before from the same device within the retention
    /// period gets the stored answer and changes nothing.
    pub fn handle_command(
        &mut self,
        now: Instant,
        conn: ConnId,
        request: RequestId,
        command: Command,
    ) -> Result<ReplyResult, CommandError> {
        let now = self.advance(now);
        let Some(entry) = self.conns.get(&conn) else {
            let e = Err(CommandError::NotConnected);
            self.reply(conn, &request, &e);
            return e;
        };
        let (user, device) = (entry.user.clone(), entry.device.clone());
        let key = self.requests.key(&user, &device, &request);
        if let Some(stored) = self.requests.get(&key) {
            self.stats.duplicate_requests += 1;
            self.reply(conn, &request, &stored);
            return stored;
        }
        let result = match command {
            Command::Invite(req) => self.invite(now, &user, &device, req),
            Command::Cancel { call_id } => self.cancel(&user, &call_id),
            Command::Accept { call_id } => self.accept(&user, &device, &call_id),
            Command::Decline { call_id, busy } => self.decline(&user, &device, &call_id, busy),
            Command::HangUp { call_id } => self.hang_up(&user, &call_id),
        };
        // Every state change queues events for someone.
        let changed = !self.pending.is_empty();
        if requests::worth_remembering(&result, changed) {
            self.remember(now, key, &result);
        }
        self.reply(conn, &request, &result);
        self.flush(now);
        result
    }

    /// The server is stopping without keeping its state: every live call
    /// ends now with [`Reason::ServerShutdown`] for every party (ringing
    /// callees, accepted callees, the caller), so that both sides learn it
    /// before their connections close.
    pub fn shutdown(&mut self, now: Instant) {
        let now = self.advance(now);
        let mut live: Vec<CallId> = self
            .calls
            .iter()
            .filter(|(_, c)| c.ended.is_none())
            .map(|(id, _)| id.clone())
            .collect();
        live.sort_unstable(); // a deterministic order of events
        for call_id in live {
            self.end_ringing(&call_id, Reason::ServerShutdown);
            self.settle_as(now, &call_id, Some(Reason::ServerShutdown));
        }
        self.flush(now);
    }

    /// Fires every timer due at `now`. Spurious or early calls are no-ops.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
    }

    // ----- outputs ------------------------------------------------------

    /// The next thing to do, until `None`.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The next call milestone, until `None`. Optional to drain: the queue
    /// is cleared at the start of every input.
    pub fn poll_notice(&mut self) -> Option<CallNotice> {
        self.notices.pop_front()
    }

    /// When [`Switchboard::handle_timeout`] must be called next. `None`
    /// exactly when no invitation is ringing and no caller-gone grace runs.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }

    // ----- getters ------------------------------------------------------

    /// One call, live or recently ended.
    pub fn call(&self, call_id: &CallId) -> Option<CallView<'_>> {
        self.calls.get(call_id).map(|call| CallView { call })
    }

    /// Every call still held (live and recently ended).
    pub fn calls(&self) -> impl Iterator<Item = CallView<'_>> {
        self.calls.values().map(|call| CallView { call })
    }

    /// Connections currently open.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// The user and device behind an open connection.
    pub fn connection(&self, conn: ConnId) -> Option<(&UserId, &DeviceId)> {
        self.conns.get(&conn).map(|c| (&c.user, &c.device))
    }

    /// Online devices of a user.
    pub fn online_devices(&self, user: &UserId) -> Vec<DeviceId> {
        self.users
            .get(user)
            .map(|e| e.devices.iter().map(|(d, _)| d.clone()).collect())
            .unwrap_or_default()
    }

    /// The newest event sequence number of a user (0 if none).
    pub fn last_seq(&self, user: &UserId) -> u64 {
        self.users.get(user).map_or(0, |e| e.seq)
    }

    /// Counters.
    pub fn stats(&self) -> &SwitchboardStats {
        &self.stats
    }

    /// Users, calls and timers held: for memory accounting.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (self.users.len(), self.calls.len(), self.timers.len())
    }

    /// Answers held in the request-id memory: for memory accounting.
    pub fn remembered_requests(&self) -> usize {
        self.requests.len()
    }

    // ----- commands -----------------------------------------------------

    fn validate_invite(
        &self,
        caller: &UserId,
        req: InviteRequest,
    ) -> Result<ValidInvite, ValidationError> {
        let call_type = req.call_type;
        let mut callees: Vec<UserId> = Vec::with_capacity(req.callees.len());
        for c in req.callees {
            if !callees.contains(&c) {
                callees.push(c);
            }
        }
        if callees.is_empty() || callees.len() > self.config.max_callees {
            return Err(ValidationError::CalleeCount {
                max: self.config.max_callees,
                got: callees.len(),
            });
        }
        if callees.contains(caller) {
            return Err(ValidationError::CallerAmongCallees);
        }
        let timeout_s = req.timeout_s.unwrap_or(self.config.default_ring_timeout_s);
        if timeout_s < self.config.min_ring_timeout_s || timeout_s > self.config.max_ring_timeout_s
        {
            return Err(ValidationError::RingTimeout {
                min_s: self.config.min_ring_timeout_s,
                max_s: self.config.max_ring_timeout_s,
                got_s: timeout_s,
            });
        }
        if let Some(data) = &req.custom_data {
            let max = self.config.max_custom_data;
            if data.len() > max {
                return Err(ValidationError::TooLong {
                    field: "custom_data",
                    max,
                    len: data.len(),
                });
            }
        }
        Ok(ValidInvite {
            callees,
            ring_for: Duration::from_secs(u64::from(timeout_s)),
            custom_data: req.custom_data.filter(|d| !d.is_empty()),
            call_type,
        })
    }

    /// Busy as a callee: in an accepted call, inviting, or already ringing.
    fn is_busy(&self, user: &UserId) -> bool {
        self.busy(user, true)
    }

    /// Busy as a caller: in an accepted call or inviting (being rung is fine).
    fn is_busy_caller(&self, user: &UserId) -> bool {
        self.busy(user, false)
    }

    fn busy(&self, user: &UserId, ringing_counts: bool) -> bool {
        let Some(entry) = self.users.get(user) else {
            return false;
        };
        entry.calls.iter().any(|id| {
            self.calls.get(id).is_some_and(|call| {
                if call.ended.is_some() {
                    return false;
                }
                if &call.info.caller.id == user {
                    return call.is_ringing() || call.anyone_in_call();
                }
                call.slot_of(user).is_some_and(|i| {
                    call.slots[i].in_call || (ringing_counts && call.slots[i].is_ringing())
                })
            })
        })
    }

    /// Glare: `callee` is ringing `caller` right now.
    fn glare_call(&self, caller: &UserId, callee: &UserId) -> Option<CallId> {
        let entry = self.users.get(caller)?;
        entry.calls.iter().find_map(|id| {
            let call = self.calls.get(id)?;
            let ringing_me = call.ended.is_none()
                && &call.info.caller.id == callee
                && call
                    .slot_of(caller)
                    .is_some_and(|i| call.slots[i].is_ringing());
            ringing_me.then(|| id.clone())
        })
    }

    fn invite(
        &mut self,
        now: Instant,
        caller: &UserId,
        device: &DeviceId,
        req: InviteRequest,
    ) -> Result<ReplyResult, CommandError> {
        let ValidInvite {
            callees,
            ring_for,
            custom_data,
            call_type,
        } = self.validate_invite(caller, req)?;
        if let Some(callee) = callees
            .iter()
            .find(|c| !self.config.contact_policy.allows(caller, c))
        {
            return Err(CommandError::Forbidden {
                callee: callee.clone(),
            });
        }
        if let [callee] = callees.as_slice() {
            if let Some(call_id) = self.glare_call(caller, callee) {
                self.accept(caller, device, &call_id)?;
                self.stats.glare_merges += 1;
                let caller_user = self.calls[&call_id].info.caller.clone();
                return Ok(ReplyResult::Joined {
                    call_id,
                    caller: caller_user,
                });
            }
        }
        if self.is_busy_caller(caller) {
            return Err(CommandError::CallerBusy);
        }
        let call_id = self.fresh_call_id();
        let deadline = now + ring_for;
        let mut slots = Vec::with_capacity(callees.len());
        let mut users = Vec::with_capacity(callees.len());
        let mut statuses = Vec::with_capacity(callees.len());
        for callee in &callees {
            let busy = self.config.busy_policy == BusyPolicy::RejectBusy && self.is_busy(callee);
            let entry = self
                .users
                .entry(callee.clone())
                .or_insert_with(|| Box::new(UserEntry::new(unnamed(callee))));
            entry.idle_since = None;
            let online = !entry.devices.is_empty();
            let (outcome, status) = if busy {
                (Some(Reason::Busy), InitialStatus::Busy)
            } else if online {
                (None, InitialStatus::Ringing)
            } else if self.config.offline_policy == OfflinePolicy::Reject {
                (Some(Reason::Unreachable), InitialStatus::Unreachable)
            } else {
                (None, InitialStatus::Offline)
            };
            users.push(entry.user.clone());
            slots.push(Slot {
                outcome,
                device: None,
                in_call: false,
                rung: false,
            });
            statuses.push(CalleeStatus {
                user: callee.clone(),
                status: if self.config.hide_callee_status {
                    InitialStatus::Ringing
                } else {
                    status
                },
            });
        }
        let caller_entry = &self.users[caller];
        let info = Arc::new(CallInfo {
            call_id: call_id.clone(),
            caller: caller_entry.user.clone(),
            caller_device: device.clone(),
            call_type,
            callees: users.into(),
            custom_data,
            deadline,
            ring_for,
        });
        self.stats.invitations += 1;
        self.notices.push_back(CallNotice::Started {
            call_id: call_id.clone(),
            caller: caller.clone(),
            callees: info.callees.clone(),
        });
        self.users
            .get_mut(caller)
            .expect("caller is connected")
            .add_call(&call_id);
        self.pending
            .push((caller.clone(), LogEvent::Outgoing(info.clone())));
        for (callee, slot) in callees.iter().zip(slots.iter_mut()) {
            match slot.outcome {
                Some(reason) => {
                    self.stats.outcomes[reason.index()] += 1;
                    self.notices.push_back(CallNotice::Outcome {
                        call_id: call_id.clone(),
                        callee: callee.clone(),
                        reason,
                    });
                    self.pending.push((
                        caller.clone(),
                        LogEvent::CalleeOutcome {
                            call: call_id.clone(),
                            callee: callee.clone(),
                            reason,
                        },
                    ));
                }
                None => {
                    let entry = self.users.get_mut(callee).expect("created above");
                    entry.add_call(&call_id);
                    self.pending
                        .push((callee.clone(), LogEvent::Incoming(info.clone())));
                    if !entry.devices.is_empty() {
                        slot.rung = true;
                    }
                    if slot.rung && !self.config.hide_callee_status {
                        self.pending.push((
                            caller.clone(),
                            LogEvent::CalleeRinging {
                                call: call_id.clone(),
                                callee: callee.clone(),
                            },
                        ));
                    }
                }
            }
        }
        for callee in &callees {
            let entry = self.users.get_mut(callee).expect("created above");
            self.idle_users.note(callee, entry, now);
        }
        let ringing = slots.iter().any(Slot::is_ringing);
        if ringing {
            self.timers
                .insert(deadline, TimerKind::Ring, call_id.clone());
        }
        self.calls.insert(
            call_id.clone(),
            Box::new(Call {
                info,
                slots,
                caller_in_call: true,
                ended: None,
                ring_armed: ringing,
                gone_at: None,
            }),
        );
        self.settle(now, &call_id);
        Ok(ReplyResult::Invited {
            call_id,
            ring_remaining_ms: duration_ms(ring_for),
            callees: statuses,
        })
    }

    fn fresh_call_id(&mut self) -> CallId {
        loop {
            let id = self.ids.next_call_id();
            if !self.calls.contains_key(&id) {
                return id;
            }
        }
    }

    /// Finds `call_id` and the caller's role in it; non-participants get
    /// `NotFound`, exactly as for an unknown call.
    fn role(&self, user: &UserId, call_id: &CallId) -> Result<(Role, usize), CommandError> {
        let call = self.calls.get(call_id).ok_or(CommandError::NotFound)?;
        if &call.info.caller.id == user {
            return Ok((Role::Caller, 0));
        }
        call.slot_of(user)
            .map(|i| (Role::Callee, i))
            .ok_or(CommandError::NotFound)
    }

    fn accept(
        &mut self,
        user: &UserId,
        device: &DeviceId,
        call_id: &CallId,
    ) -> Result<ReplyResult, CommandError> {
        let (Role::Callee, i) = self.role(user, call_id)? else {
            return Err(CommandError::WrongRole);
        };
        let call = self.calls.get_mut(call_id).expect("role found it");
        let slot = &mut call.slots[i];
        if !slot.is_ringing() || call.ended.is_some() {
            if slot.outcome == Some(Reason::Accepted)
                && slot.device.as_ref() == Some(device)
                && slot.in_call
            {
                return Ok(ReplyResult::Done); // accepting twice is accepting
            }
            let reason = slot.reason_seen_by(device).unwrap_or(Reason::Failed);
            return Err(CommandError::Ended { reason });
        }
        slot.outcome = Some(Reason::Accepted);
        slot.device = Some(device.clone());
        slot.in_call = true;
        self.stats.outcomes[Reason::Accepted.index()] += 1;
        let caller = call.info.caller.id.clone();
        self.pending.push((
            user.clone(),
            LogEvent::IncomingEnded {
                call: call_id.clone(),
                reason: Reason::Accepted,
                device: Some(device.clone()),
            },
        ));
        self.pending.push((
            caller,
            LogEvent::CalleeOutcome {
                call: call_id.clone(),
                callee: user.clone(),
                reason: Reason::Accepted,
            },
        ));
        self.settle_now(call_id);
        Ok(ReplyResult::Done)
    }

    fn decline(
        &mut self,
        user: &UserId,
        device: &DeviceId,
        call_id: &CallId,
        busy: bool,
    ) -> Result<ReplyResult, CommandError> {
        let (Role::Callee, i) = self.role(user, call_id)? else {
            return Err(CommandError::WrongRole);
        };
        let reason = if busy { Reason::Busy } else { Reason::Declined };
        let call = self.calls.get_mut(call_id).expect("role found it");
        let slot = &mut call.slots[i];
        if !slot.is_ringing() || call.ended.is_some() {
            if slot.outcome == Some(reason) && slot.device.as_ref() == Some(device) {
                return Ok(ReplyResult::Done); // declining twice is declining
            }
            let seen = slot.reason_seen_by(device).unwrap_or(Reason::Failed);
            return Err(CommandError::Ended { reason: seen });
        }
        slot.outcome = Some(reason);
        slot.device = Some(device.clone());
        self.close_slot(call_id, i, reason, Some(device.clone()));
        self.settle_now(call_id);
        Ok(ReplyResult::Done)
    }

    fn cancel(&mut self, user: &UserId, call_id: &CallId) -> Result<ReplyResult, CommandError> {
        let (Role::Caller, _) = self.role(user, call_id)? else {
            return Err(CommandError::WrongRole);
        };
        let call = &self.calls[call_id];
        if !call.is_ringing() {
            return match call.ended {
                Some(Reason::Canceled) => Ok(ReplyResult::Done),
                Some(reason) => Err(CommandError::Ended { reason }),
                None => Err(CommandError::Ended {
                    reason: Reason::Accepted,
                }),
            };
        }
        self.end_ringing(call_id, Reason::Canceled);
        self.settle_now(call_id);
        Ok(ReplyResult::Done)
    }

    fn hang_up(&mut self, user: &UserId, call_id: &CallId) -> Result<ReplyResult, CommandError> {
        let (role, i) = self.role(user, call_id)?;
        let call = self.calls.get_mut(call_id).expect("role found it");
        match role {
            Role::Caller => {
                if let Some(reason) = call.ended {
                    return if reason == Reason::HungUp || reason == Reason::Canceled {
                        Ok(ReplyResult::Done)
                    } else {
                        Err(CommandError::Ended { reason })
                    };
                }
                call.caller_in_call = false;
                self.end_ringing(call_id, Reason::Canceled);
            }
            Role::Callee => {
                let slot = &mut call.slots[i];
                if !slot.in_call || call.ended.is_some() {
                    return match slot.outcome {
                        Some(Reason::Accepted) => Ok(ReplyResult::Done),
                        Some(reason) => Err(CommandError::Ended { reason }),
                        // Still ringing: hanging up is not declining.
                        None => Err(CommandError::WrongRole),
                    };
                }
                slot.in_call = false;
                self.pending.push((
                    user.clone(),
                    LogEvent::CallEnded {
                        call: call_id.clone(),
                        reason: Reason::HungUp,
                    },
                ));
                let keep = self.config.recent_ended_per_user;
                if let Some(entry) = self.users.get_mut(user) {
                    entry.end_call(call_id, Reason::HungUp, keep);
                }
            }
        }
        self.settle_now(call_id);
        Ok(ReplyResult::Done)
    }

    // ----- transitions --------------------------------------------------

    /// Every callee still ringing gets `reason` (canceled, timeout, caller gone).
    fn end_ringing(&mut self, call_id: &CallId, reason: Reason) {
        let call = self.calls.get_mut(call_id).expect("live call");
        let ringing: Vec<usize> = (0..call.slots.len())
            .filter(|&i| call.slots[i].is_ringing())
            .collect();
        for &i in &ringing {
            call.slots[i].outcome = Some(reason);
        }
        for i in ringing {
            self.close_slot(call_id, i, reason, None);
        }
    }

    /// Announces a callee's terminal outcome (already written in the slot)
    /// to the callee's devices and the caller; the call leaves the callee's
    /// live list.
    fn close_slot(&mut self, call_id: &CallId, i: usize, reason: Reason, by: Option<DeviceId>) {
        let call = &self.calls[call_id];
        let callee = call.info.callees[i].id.clone();
        let caller = call.info.caller.id.clone();
        self.stats.outcomes[reason.index()] += 1;
        self.notices.push_back(CallNotice::Outcome {
            call_id: call_id.clone(),
            callee: callee.clone(),
            reason,
        });
        self.pending.push((
            callee.clone(),
            LogEvent::IncomingEnded {
                call: call_id.clone(),
                reason,
                device: by,
            },
        ));
        self.pending.push((
            caller,
            LogEvent::CalleeOutcome {
                call: call_id.clone(),
                callee: callee.clone(),
                reason,
            },
        ));
        let keep = self.config.recent_ended_per_user;
        if let Some(entry) = self.users.get_mut(&callee) {
            entry.end_call(call_id, reason, keep);
        }
    }

    fn settle_now(&mut self, call_id: &CallId) {
        let now = self.now.expect("an input set the time");
        self.settle(now, call_id);
    }

    /// Disarms timers nobody needs any more and ends the call when nobody
    /// rings and nobody is in it.
    fn settle(&mut self, now: Instant, call_id: &CallId) {
        self.settle_as(now, call_id, None);
    }

    /// Ends the call once nobody rings and nobody is in it; `forced` gives
    /// every party that reason instead of the natural one.
    fn settle_as(&mut self, now: Instant, call_id: &CallId, forced: Option<Reason>) {
        let call = self.calls.get_mut(call_id).expect("live call");
        if call.ended.is_some() {
            return;
        }
        if call.is_ringing() {
            return;
        }
        if call.ring_armed {
            call.ring_armed = false;
            self.timers
                .remove(call.info.deadline, TimerKind::Ring, call_id);
        }
        if let Some(at) = call.gone_at.take() {
            self.timers.remove(at, TimerKind::CallerGone, call_id);
        }
        if forced.is_some() {
            call.caller_in_call = false;
        } else if call.anyone_in_call() {
            return;
        }
        let reason = forced.unwrap_or_else(|| call.final_reason());
        call.ended = Some(reason);
        self.notices.push_back(CallNotice::Ended {
            call_id: call_id.clone(),
            reason,
        });
        let keep = self.config.recent_ended_per_user;
        let mut in_call = Vec::new();
        for (i, slot) in call.slots.iter_mut().enumerate() {
            if std::mem::take(&mut slot.in_call) {
                in_call.push(call.info.callees[i].id.clone());
            }
        }
        let caller = call.info.caller.id.clone();
        for callee in in_call {
            self.pending.push((
                callee.clone(),
                LogEvent::CallEnded {
                    call: call_id.clone(),
                    reason: forced.unwrap_or(Reason::HungUp),
                },
            ));
            if let Some(entry) = self.users.get_mut(&callee) {
                entry.end_call(call_id, forced.unwrap_or(Reason::HungUp), keep);
            }
        }
        self.pending.push((
            caller.clone(),
            LogEvent::CallEnded {
                call: call_id.clone(),
                reason,
            },
        ));
        if let Some(entry) = self.users.get_mut(&caller) {
            entry.end_call(call_id, reason, keep);
        }
        self.tombstones
            .push_back((now + self.config.retention, call_id.clone()));
    }

    fn on_timer(&mut self, kind: TimerKind, call_id: CallId) {
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        match kind {
            TimerKind::Ring => {
                call.ring_armed = false;
                if call.is_ringing() {
                    self.end_ringing(&call_id, Reason::Timeout);
                }
            }
            TimerKind::CallerGone => {
                call.gone_at = None;
                if call.is_ringing() {
                    self.end_ringing(&call_id, Reason::CallerGone);
                }
            }
        }
        self.settle_now(&call_id);
    }

    // ----- plumbing -----------------------------------------------------

    /// Moves the clock (never backwards), fires due timers, forgets expired
    /// history. Returns the effective now.
    fn advance(&mut self, now: Instant) -> Instant {
        let now = match self.now {
            Some(prev) if prev > now => prev,
            _ => now,
        };
        self.now = Some(now);
        self.notices.clear();
        while let Some((_, kind, call_id)) = self.timers.pop_due(now) {
            self.on_timer(kind, call_id);
        }
        self.flush(now);
        self.forget_expired(now);
        now
    }

    fn forget_expired(&mut self, now: Instant) {
        while let Some((at, _)) = self.tombstones.front() {
            if *at > now && self.tombstones.len() <= self.config.max_tombstones {
                break;
            }
            let (_, call_id) = self.tombstones.pop_front().expect("front exists");
            if self.calls.get(&call_id).is_some_and(|c| c.ended.is_some()) {
                self.calls.remove(&call_id);
            }
        }
        self.requests
            .forget(now, self.config.max_remembered_requests);
        self.idle_users
            .forget(&mut self.users, now, self.config.retention);
    }

    fn remember(
        &mut self,
        now: Instant,
        key: requests::RequestKey,
        result: &Result<ReplyResult, CommandError>,
    ) {
        let call = match result {
            Ok(ReplyResult::Invited { call_id, .. }) => self.calls.get(call_id).map(|c| &c.info),
            _ => None,
        };
        self.requests.insert(
            key,
            now + self.config.retention,
            result,
            call,
            self.config.max_remembered_requests_per_user,
        );
    }

    fn reply(
        &mut self,
        conn: ConnId,
        request: &RequestId,
        result: &Result<ReplyResult, CommandError>,
    ) {
        let body = match result {
            Ok(r) => ServerBody::Reply {
                re: request.clone(),
                result: r.clone(),
            },
            Err(e) => ServerBody::Error(ErrorBody::from_command(Some(request.clone()), e)),
        };
        self.send(conn, body);
    }

    fn send(&mut self, conn: ConnId, body: ServerBody) {
        self.out.push_back(Output::Send {
            conn,
            message: ServerMessage::new(body),
        });
    }

    /// Appends the pending events to their users' logs and sends them to
    /// every online device.
    fn flush(&mut self, now: Instant) {
        let mut pending = std::mem::take(&mut self.pending);
        let cap = self.config.resume_buffer;
        for (user, event) in pending.drain(..) {
            let Some(entry) = self.users.get_mut(&user) else {
                continue;
            };
            let seq = entry.append(event, cap);
            // An event is how a call ends for a user: one that left them
            // with no device and no call starts their idle window.
            self.idle_users.note(&user, entry, now);
            let entry = &self.users[&user];
            if entry.devices.is_empty() {
                continue;
            }
            let rendered = render(&self.calls, &user, entry.log.back().expect("appended"), now);
            for (_, conn) in &entry.devices {
                self.out.push_back(Output::Send {
                    conn: *conn,
                    message: ServerMessage::new(ServerBody::Event {
                        seq,
                        event: rendered.clone(),
                    }),
                });
            }
        }
        self.pending = pending;
    }

    fn snapshot(&self, user: &UserId, now: Instant, re: Option<RequestId>) -> SyncBody {
        let Some(entry) = self.users.get(user) else {
            return SyncBody {
                re,
                seq: 0,
                calls: Vec::new(),
                ended: Vec::new(),
            };
        };
        let mut calls = Vec::new();
        for call_id in &entry.calls {
            let Some(call) = self.calls.get(call_id) else {
                continue;
            };
            if call.ended.is_some() {
                continue;
            }
            let info = &call.info;
            let remaining = if call.is_ringing() {
                duration_ms(info.deadline.saturating_duration_since(now))
            } else {
                0
            };
            let base = |role, state, ring_remaining_ms, device, outcomes| CallSnapshot {
                call_id: call_id.clone(),
                role,
                caller: info.caller.clone(),
                caller_device: info.caller_device.clone(),
                call_type: info.call_type,
                callees: info.callees.clone(),
                custom_data: info.custom_data.clone(),
                state,
                ring_remaining_ms,
                ring_timeout_ms: duration_ms(info.ring_for),
                device,
                outcomes,
            };
            if &info.caller.id == user {
                let outcomes = info
                    .callees
                    .iter()
                    .zip(&call.slots)
                    .filter_map(|(u, s)| {
                        s.outcome.map(|reason| CalleeOutcome {
                            callee: u.id.clone(),
                            reason,
                        })
                    })
                    .collect();
                let state = if call.is_ringing() {
                    SnapshotState::Ringing
                } else {
                    SnapshotState::Accepted
                };
                calls.push(base(Role::Caller, state, remaining, None, outcomes));
            } else if let Some(i) = call.slot_of(user) {
                let slot = &call.slots[i];
                if slot.is_ringing() {
                    calls.push(base(
                        Role::Callee,
                        SnapshotState::Ringing,
                        remaining,
                        None,
                        Vec::new(),
                    ));
                } else if slot.in_call {
                    calls.push(base(
                        Role::Callee,
                        SnapshotState::Accepted,
                        0,
                        slot.device.clone(),
                        Vec::new(),
                    ));
                }
            }
        }
        SyncBody {
            re,
            seq: entry.seq,
            calls,
            ended: entry
                .recent_ended()
                .map(|(call_id, reason)| EndedCall {
                    call_id: call_id.clone(),
                    reason: *reason,
                    outcomes: self
                        .calls
                        .get(call_id)
                        .filter(|c| &c.info.caller.id == user)
                        .map(|c| {
                            c.info
                                .callees
                                .iter()
                                .zip(&c.slots)
                                .filter_map(|(u, s)| {
                                    s.outcome.map(|reason| CalleeOutcome {
                                        callee: u.id.clone(),
                                        reason,
                                    })
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                })
                .collect(),
        }
    }
}

struct ValidInvite {
    callees: Vec<UserId>,
    ring_for: Duration,
    custom_data: Option<CustomData>,
    call_type: crate::model::CallType,
}

fn unnamed(id: &UserId) -> User {
    User {
        id: id.clone(),
        name: crate::model::name_of(""),
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Turns a log entry into the wire event for `user`, computing ring time
/// left at `now` (0 once the invitation no longer rings for that user).
fn render(
    calls: &HashMap<CallId, Box<Call>>,
    user: &UserId,
    event: &LogEvent,
    now: Instant,
) -> Event {
    let remaining = |info: &CallInfo, for_callee: bool| {
        let live = calls.get(&info.call_id).is_some_and(|call| {
            if for_callee {
                call.ended.is_none()
                    && call
                        .slot_of(user)
                        .is_some_and(|i| call.slots[i].is_ringing())
            } else {
                call.is_ringing()
            }
        });
        if live {
            duration_ms(info.deadline.saturating_duration_since(now))
        } else {
            0
        }
    };
    match event {
        LogEvent::Incoming(info) => Event::IncomingCall {
            call_id: info.call_id.clone(),
            caller: info.caller.clone(),
            call_type: info.call_type,
            callees: info.callees.clone(),
            custom_data: info.custom_data.clone(),
            ring_remaining_ms: remaining(info, true),
            ring_timeout_ms: duration_ms(info.ring_for),
        },
        LogEvent::Outgoing(info) => Event::OutgoingCall {
            call_id: info.call_id.clone(),
            device: info.caller_device.clone(),
            call_type: info.call_type,
            callees: info.callees.clone(),
            custom_data: info.custom_data.clone(),
            ring_remaining_ms: remaining(info, false),
        },
        LogEvent::IncomingEnded {
            call,
            reason,
            device,
        } => Event::IncomingEnded {
            call_id: call.clone(),
            reason: *reason,
            device: device.clone(),
        },
        LogEvent::CalleeRinging { call, callee } => Event::CalleeRinging {
            call_id: call.clone(),
            callee: callee.clone(),
        },
        LogEvent::CalleeOutcome {
            call,
            callee,
            reason,
        } => Event::CalleeOutcome {
            call_id: call.clone(),
            callee: callee.clone(),
            reason: *reason,
        },
        LogEvent::CallEnded { call, reason } => Event::CallEnded {
            call_id: call.clone(),
            reason: *reason,
        },
    }
}
