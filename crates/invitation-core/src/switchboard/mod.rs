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
//!
//! With [`SwitchboardConfig::call_records`] on, every call that ends leaves
//! one [`CallRecord`] in a second queue, [`Switchboard::poll_record`],
//! which only the owner empties (after every input or every batch: it
//! holds the records of the calls ended since it was last drained).

mod acts;
mod call;
mod commands;
mod config;
mod group;
mod lifecycle;
pub(crate) mod persist;
mod policy;
mod push;
mod record;
mod render;
mod requests;
mod timers;
mod user;
mod view;

use std::collections::VecDeque;
use std::fmt;
use std::time::Instant;

use foldhash::HashMap;

use crate::connection::SwitchboardInput;
use crate::error::CommandError;
use crate::id::{CallId, CallIdGenerator, DeviceId, RequestId, UserId};
use crate::model::{CustomData, Reason, User};
use crate::protocol::{CloseReason, Command, ReplyResult, ServerBody, ServerMessage};

use call::{Call, CallState, Presence, Slot};
pub use config::{BusyPolicy, EndPolicy, OfflinePolicy, SwitchboardConfig};
pub use policy::ContactPolicy;
pub use push::{PushNotice, PushWhat};
pub use record::{CallRecord, CalleeRecord};
use render::render;
use requests::Requests;
use timers::{TimerKind, Timers};
use user::{IdleUsers, LogEvent, UserEntry};
pub use view::{CallNotice, CallView, SwitchboardStats};

/// An invitee of a call that grew: added later, rung again, joined late.
#[derive(Debug, Clone)]
pub(crate) struct Regrown {
    pub(crate) user: UserId,
    pub(crate) rung_again: u32,
    pub(crate) joined_late: u32,
    /// Invited by `add`, not by the invite.
    pub(crate) added: bool,
}

/// The device id of commands an app's backend sends on a user's behalf
/// ([`Switchboard::handle_backend_command`]): the inviting device of the
/// calls it starts. No client may connect with it (the connection machine
/// refuses such a `hello`), so no disconnect ever makes those callers
/// "gone".
pub const BACKEND_DEVICE: &str = "backend";

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

#[derive(Debug)]
/// A successful command's answer, waiting to ride on the first event it
/// caused on its connection about its call (see `handle_command`).
struct Answer {
    conn: ConnId,
    request: RequestId,
    result: ReplyResult,
    /// The call the answer is about (an event about another call, such as
    /// the invitation a glare merge canceled, does not carry it).
    call: Option<CallId>,
}

struct ConnEntry {
    user: UserId,
    device: DeviceId,
    /// The app said it is in the background (`app_state`): its user is
    /// also woken by push.
    background: bool,
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
    /// The command being handled: its answer rides on the first event
    /// [`Switchboard::flush`] sends to its connection.
    answer: Option<Answer>,
    /// For calls whose invitees were rung again or joined late (rare):
    /// per invitee, how many times each (bounded by the callee limit;
    /// dropped with the call).
    regrown: HashMap<CallId, Vec<Regrown>>,
    stats: SwitchboardStats,
    /// Answer data and device receipts, for the calls that have some.
    extras: HashMap<CallId, acts::CallExtras>,
    /// The data of the cancel or hang-up being handled, for the
    /// `call_ended` events it causes (taken when the call ends, cleared
    /// after every command).
    ending_data: Option<CustomData>,
    /// The records of the calls ended since the owner last drained them
    /// ([`Switchboard::poll_record`]; only with `call_records` on).
    records: VecDeque<CallRecord>,
    /// The first accept of each live call someone accepted (for its view
    /// and its record; taken when the call ends).
    answered_at: HashMap<CallId, Instant>,
    /// Push credentials per user, oldest first (bounded by
    /// `max_push_devices`).
    push_devices: HashMap<UserId, Vec<(DeviceId, crate::protocol::PushRegistration)>>,
    /// Per live call, the devices it pushed a ring to (the stop goes there).
    pushed: HashMap<CallId, Vec<push::Pushed>>,
    /// Pushes of the current input, for the owner.
    pushes: VecDeque<PushNotice>,
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
            answer: None,
            regrown: HashMap::default(),
            stats: SwitchboardStats::default(),
            extras: HashMap::default(),
            ending_data: None,
            records: VecDeque::new(),
            answered_at: HashMap::default(),
            push_devices: HashMap::default(),
            pushed: HashMap::default(),
            pushes: VecDeque::new(),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &SwitchboardConfig {
        &self.config
    }

    /// Replaces the settings (a durable owner replays each run's journal
    /// under the settings that run had). Limits apply from the next input.
    pub(crate) fn set_config(&mut self, config: SwitchboardConfig) {
        self.config = config;
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
                background: false,
            },
        );

        let entry = &self.users[&user_id];
        let seq = entry.seq;
        let resumed = last_seq.is_some_and(|l| entry.can_resume(l));
        let replay: Vec<ServerBody> = match last_seq {
            Some(l) if resumed => entry
                .since(l)
                .map(|(seq, ev)| ServerBody::event(seq, render(&self.calls, &user_id, ev, now)))
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
                if let Slot::Ringing { rung, .. } = slot
                    && !*rung
                {
                    *rung = true;
                    self.notices.push_back(CallNotice::Ringing {
                        call_id: call_id.clone(),
                        caller: call.info.caller.id.clone(),
                        callee: user_id.clone(),
                    });
                    if !self.config.hide_callee_status {
                        for watcher in call.present_except(&user_id) {
                            self.pending.push((
                                watcher,
                                LogEvent::CalleeRinging {
                                    call: call_id.clone(),
                                    callee: user_id.clone(),
                                },
                            ));
                        }
                    }
                }
            }
            if call.info.caller.id == user_id && call.info.caller_device == device {
                if let CallState::Ringing { caller } = &mut call.state
                    && let Presence::Away(at) = *caller
                {
                    *caller = Presence::Here;
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
        self.forget_connection(now, conn);
    }

    /// [`Switchboard::disconnect`] after the clock moved to `now`.
    fn forget_connection(&mut self, now: Instant, conn: ConnId) {
        let Some(ConnEntry { user, device, .. }) = self.conns.remove(&conn) else {
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
                && let CallState::Ringing { caller } = &mut call.state
                && *caller == Presence::Here
            {
                let at = now + self.config.caller_gone_grace;
                *caller = Presence::Away(at);
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
            SwitchboardInput::Receipt { call_id } => self.handle_receipt(now, conn, &call_id),
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

    /// A call command from a connection; the answer is also returned.
    ///
    /// A success is answered by the first event the command caused on this
    /// connection (the event carries `re` and the result); only a command
    /// that caused no event here gets a separate `reply`, queued after the
    /// events. An error is queued before any event. One message instead of
    /// two: a 1:1 call's commands cause an event for their sender anyway.
    ///
    /// A request id seen before from the same device within the retention
    /// period gets the stored answer and changes nothing.
    ///
    /// A `received` receipt is the exception: it is handled as
    /// [`Switchboard::handle_receipt`], queues no answer and returns
    /// `Ok(Done)`.
    pub fn handle_command(
        &mut self,
        now: Instant,
        conn: ConnId,
        request: RequestId,
        command: Command,
    ) -> Result<ReplyResult, CommandError> {
        if let Command::Received { call_id } = &command {
            self.handle_receipt(now, conn, call_id);
            return Ok(ReplyResult::Done);
        }
        let now = self.advance(now);
        let Some(entry) = self.conns.get(&conn) else {
            let e = Err(CommandError::NotConnected);
            self.reply(conn, &request, &e);
            return e;
        };
        let (user, device) = (entry.user.clone(), entry.device.clone());
        self.run_command(now, Some(conn), user, device, request, command)
    }

    /// A command an app's backend sends on behalf of `caller` (the server's
    /// HTTP API): `invite` (the call's inviting device is
    /// [`BACKEND_DEVICE`]: every device of the caller hears of it through
    /// the caller's events, and none of them leaving makes the caller
    /// "gone"), and `cancel`, `hang_up`, `end`, `add` on the user's calls.
    /// What only a device can do (accept, decline, join, receipts) is
    /// `wrong_role`; an invite to someone who is ringing the caller right
    /// now is `caller_busy` (a device of the caller's answers that, not the
    /// backend). Request ids are remembered per (user, backend) like a
    /// device's; the answer is the return value (no connection gets one).
    /// `caller` names the user if the switchboard has no record of them.
    pub fn handle_backend_command(
        &mut self,
        now: Instant,
        caller: User,
        request: RequestId,
        command: Command,
    ) -> Result<ReplyResult, CommandError> {
        let now = self.advance(now);
        match &command {
            Command::Invite(req) => {
                if let [callee] = req.callees.as_slice() {
                    if self.glare_call(&caller.id, callee).is_some() {
                        return Err(CommandError::CallerBusy);
                    }
                }
            }
            Command::Cancel { .. }
            | Command::HangUp { .. }
            | Command::End { .. }
            | Command::Add { .. } => {}
            _ => return Err(CommandError::WrongRole),
        }
        let user = caller.id.clone();
        self.users
            .entry(user.clone())
            .or_insert_with(|| Box::new(UserEntry::new(caller)));
        let device = DeviceId::new(BACKEND_DEVICE).expect("a valid device id");
        let result = self.run_command(now, None, user.clone(), device, request, command);
        // A user made here for a command that created nothing is idle now.
        if let Some(entry) = self.users.get_mut(&user) {
            self.idle_users.note(&user, entry, now);
        }
        result
    }

    /// Runs a command of `user` on `device`; `conn` gets the answer (none
    /// for the backend's commands).
    fn run_command(
        &mut self,
        now: Instant,
        conn: Option<ConnId>,
        user: UserId,
        device: DeviceId,
        request: RequestId,
        command: Command,
    ) -> Result<ReplyResult, CommandError> {
        let key = self.requests.key(&user, &device, &request);
        if let Some(stored) = self.requests.get(&key) {
            self.stats.duplicate_requests += 1;
            if let Some(conn) = conn {
                self.reply(conn, &request, &stored);
            }
            return stored;
        }
        // A hang-up's notice goes before the ones it causes (the end).
        let mark = self.notices.len();
        // The call the answer is about: the one the command names, or the
        // one an invite created or joined.
        let named = command.call_id().cloned();
        let hang_up = matches!(command, Command::HangUp { .. })
            .then(|| named.clone())
            .flatten();
        // A join refused as `ended` before anyone accepted may succeed later.
        let reopens = matches!(command, Command::Join { .. });
        let result = match command {
            Command::Invite(req) => self.invite(now, &user, &device, req),
            Command::Cancel {
                call_id,
                custom_data,
            } => self
                .valid_data(custom_data)
                .and_then(|data| self.cancel(&user, &call_id, data)),
            Command::Accept {
                call_id,
                custom_data,
            } => self
                .valid_data(custom_data)
                .and_then(|data| self.accept_with(&user, &device, &call_id, data)),
            Command::Decline {
                call_id,
                busy,
                custom_data,
            } => self
                .valid_data(custom_data)
                .and_then(|data| self.decline(&user, &device, &call_id, busy, data)),
            Command::HangUp {
                call_id,
                custom_data,
            } => self
                .valid_data(custom_data)
                .and_then(|data| self.hang_up(&user, &call_id, data)),
            Command::Add { call_id, callees } => self.add(now, &user, &call_id, callees),
            Command::Join { call_id } => self.join(&user, &device, &call_id),
            Command::End { call_id } => self.end(&user, &call_id),
            Command::RegisterPush(registration) => {
                self.set_push(&user, &device, Some(registration))
            }
            Command::UnregisterPush => self.set_push(&user, &device, None),
            Command::AppState { background } => self.set_background(conn, background),
            // Handled above; never remembered or answered from here.
            Command::Received { .. } => Err(CommandError::Misplaced),
        };
        self.ending_data = None;
        // Every state change queues events for someone.
        let changed = !self.pending.is_empty();
        if let (Some(call_id), true, true) = (hang_up, result.is_ok(), changed) {
            if let Some(call) = self.calls.get(&call_id) {
                let notice = CallNotice::HungUp {
                    caller: call.info.caller.id.clone(),
                    call_id,
                    user: user.clone(),
                    device: device.clone(),
                };
                self.notices.insert(mark, notice);
            }
        }
        if requests::worth_remembering(&result, changed, reopens) {
            self.remember(now, key, &result);
        }
        match &result {
            Ok(result) => {
                let call = match result {
                    ReplyResult::Invited { call_id, .. } | ReplyResult::Joined { call_id, .. } => {
                        Some(call_id.clone())
                    }
                    _ => named,
                };
                if let Some(conn) = conn {
                    self.answer = Some(Answer {
                        conn,
                        request,
                        result: result.clone(),
                        call,
                    });
                }
            }
            Err(_) => {
                if let Some(conn) = conn {
                    self.reply(conn, &request, &result);
                }
            }
        }
        self.flush(now);
        if let Some(a) = self.answer.take() {
            self.reply(a.conn, &a.request, &Ok(a.result));
        }
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
            .filter(|(_, c)| !c.is_ended())
            .map(|(id, _)| id.clone())
            .collect();
        live.sort_unstable(); // a deterministic order of events
        for call_id in live {
            self.end_ringing(&call_id, Reason::ServerShutdown);
            self.end_now(&call_id, Some(Reason::ServerShutdown));
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

    /// The record of the next call that ended, until `None`: one per call,
    /// whichever way it ended (every callee declined, busy, unreachable or
    /// timed out; canceled; hung up; ended with `end`; the caller gone; a
    /// group call left with fewer than two; [`Switchboard::shutdown`]).
    ///
    /// Only with [`SwitchboardConfig::call_records`] on (otherwise always
    /// `None`). Unlike the notices, records are never cleared by an input:
    /// they wait for the owner, who drains them after every input or
    /// batch (a journaled owner, after the journal entries that produced
    /// them are written, stores them and can store them again after a
    /// replay: the call id tells the duplicates).
    pub fn poll_record(&mut self) -> Option<CallRecord> {
        self.records.pop_front()
    }

    /// When [`Switchboard::handle_timeout`] must be called next. `None`
    /// exactly when no invitation is ringing and no caller-gone grace runs.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }
}
