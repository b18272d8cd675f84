//! Durability as the core sees it: a journal of the switchboard's inputs
//! plus snapshots of its whole state.
//!
//! The switchboard is deterministic given its inputs, the times they came
//! at and the call ids it drew. [`Durable`] wraps one and writes down each
//! input as a [`JournalEntry`] (with the time and the call ids drawn);
//! [`Durable::snapshot`] captures the whole state as a
//! [`SwitchboardSnapshot`]. [`Durable::recover`] rebuilds a switchboard
//! from the newest snapshot plus the entries written after it, then drops
//! every connection the state still has open (they died with the process):
//! clients reconnect and resume from their last sequence number, as after
//! a network drop. Storing entries and snapshots (files, fsync, torn
//! tails) is the owner's business; times are unix nanoseconds, converted
//! with a [`TimeFrame`]. See docs/durability.md.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use invitation_core::durable::{Durable, JournalEntry, TimeFrame};
//! use invitation_core::protocol::{Command, InviteRequest};
//! use invitation_core::{
//!     CallType, ConnId, DeviceId, RequestId, SequentialCallIds, SwitchboardConfig, User, UserId,
//! };
//!
//! let t0 = Instant::now();
//! let frame = TimeFrame::new(t0, 1_767_225_600_000_000_000); // the same moment, in unix ns
//! let mut d = Durable::new(SwitchboardConfig::default(), SequentialCallIds::default(), frame);
//! let phone = DeviceId::new("phone").unwrap();
//! d.connect(t0, ConnId::new(1), User::named("alice", "Alice"), phone, None, None);
//! let invite = InviteRequest::new(vec![UserId::new("bob").unwrap()], CallType::Voice);
//! d.handle_command(t0, ConnId::new(1), RequestId::new("r1").unwrap(), Command::Invite(invite))
//!     .unwrap();
//! while d.poll_output().is_some() {} // (sent after the entries below are stored)
//!
//! let mut journal: Vec<JournalEntry> = Vec::new();
//! d.drain_journal(&mut journal); // the settings, connect, invite (with the call id it drew)
//! assert_eq!(journal.len(), 3);
//! let snapshot = d.snapshot(); // now and then; the journal before it can go
//!
//! // The process dies. On start-up: the newest snapshot, the entries after it.
//! let later = t0 + Duration::from_secs(5);
//! let (d, recovered) = Durable::recover(
//!     SwitchboardConfig::default(),
//!     SequentialCallIds::new("after").unwrap(),
//!     frame,
//!     Some(snapshot),
//!     Vec::new(),
//!     later,
//! )
//! .unwrap();
//! assert_eq!((recovered.ringing, recovered.dropped), (1, 1)); // alice's link died
//! assert_eq!(d.calls().count(), 1);
//! ```

use std::collections::VecDeque;
use std::ops::Deref;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::connection::SwitchboardInput;
use crate::error::CommandError;
use crate::id::{CallId, CallIdGenerator, DeviceId, RequestId, UserId};
use crate::model::User;
use crate::protocol::{Command, PushRegistration, ReplyResult};
use crate::switchboard::{CallNotice, ConnId, Output, Switchboard, SwitchboardConfig};

pub use crate::switchboard::persist::{SNAPSHOT_VERSION, SwitchboardSnapshot};

/// Converts switchboard instants to unix nanoseconds and back, exactly
/// (nanosecond arithmetic, no rounding), saturating at what either side can
/// represent (never panics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeFrame {
    instant: Instant,
    unix_ns: i64,
}

impl TimeFrame {
    /// `instant` and `unix_ns` are the same moment.
    pub fn new(instant: Instant, unix_ns: i64) -> Self {
        Self { instant, unix_ns }
    }

    /// `at` in unix nanoseconds (saturating at `i64::MIN`/`i64::MAX`).
    pub fn to_unix_ns(&self, at: Instant) -> i64 {
        let delta: i128 = match at.checked_duration_since(self.instant) {
            Some(d) => d.as_nanos() as i128,
            None => -(self.instant.duration_since(at).as_nanos() as i128),
        };
        let ns = i128::from(self.unix_ns) + delta;
        ns.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// The instant of `unix_ns` (saturating at the earliest or latest
    /// instant the platform represents).
    pub fn to_instant(&self, unix_ns: i64) -> Instant {
        let delta = i128::from(unix_ns) - i128::from(self.unix_ns);
        let d = duration_of(delta.unsigned_abs());
        if delta >= 0 {
            self.instant
                .checked_add(d)
                .unwrap_or_else(|| saturate(self.instant, d, |i, d| i.checked_add(d)))
        } else {
            self.instant
                .checked_sub(d)
                .unwrap_or_else(|| saturate(self.instant, d, |i, d| i.checked_sub(d)))
        }
    }
}

/// `ns` nanoseconds as a duration (at most `Duration::MAX`).
fn duration_of(ns: u128) -> Duration {
    let secs = ns / 1_000_000_000;
    match u64::try_from(secs) {
        Ok(secs) => Duration::new(secs, (ns % 1_000_000_000) as u32),
        Err(_) => Duration::MAX,
    }
}

/// The farthest instant from `base` that `step` reaches within `d`
/// (binary search on nanoseconds: `step` fails past the platform's range).
fn saturate(
    base: Instant,
    d: Duration,
    step: impl Fn(Instant, Duration) -> Option<Instant>,
) -> Instant {
    let (mut lo, mut hi) = (0u128, d.as_nanos()); // lo reachable, hi not
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if step(base, duration_of(mid)).is_some() {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    step(base, duration_of(lo)).unwrap_or(base)
}

/// One switchboard input as the journal keeps it. Serializes with serde
/// (JSON round-trips it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// When the input was handled, unix ns (the switchboard's effective
    /// time: never earlier than the input before).
    pub at: i64,
    /// The connection, for connection inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn: Option<u64>,
    /// The input.
    pub input: JournalInput,
    /// The call ids the switchboard drew while handling it, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ids: Vec<CallId>,
}

/// What a [`JournalEntry`] replays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
#[non_exhaustive]
pub enum JournalInput {
    /// [`Switchboard::connect`].
    Connect {
        /// The user (from the token).
        user: User,
        /// The device.
        device: DeviceId,
        /// Where the device resumes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_seq: Option<u64>,
        /// The `hello`'s request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hello: Option<RequestId>,
    },
    /// [`Switchboard::handle_command`].
    Command {
        /// The request id.
        id: RequestId,
        /// The command.
        command: Command,
    },
    /// [`Switchboard::handle_backend_command`].
    Backend {
        /// The user the backend acts for.
        user: User,
        /// The request id.
        id: RequestId,
        /// The command.
        command: Command,
    },
    /// [`Switchboard::handle_backend_push`].
    Push {
        /// The user.
        user: UserId,
        /// Their device.
        device: DeviceId,
        /// The credentials; none to forget them.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        registration: Option<PushRegistration>,
    },
    /// [`Switchboard::handle_sync`].
    Sync {
        /// The request id.
        id: RequestId,
    },
    /// [`Switchboard::handle_receipt`].
    Receipt {
        /// The call.
        call_id: CallId,
    },
    /// [`Switchboard::disconnect`].
    Disconnect,
    /// [`Switchboard::handle_timeout`] (journaled only when a timer was due).
    Timeout,
    /// [`Switchboard::shutdown`].
    Shutdown,
    /// A recovery dropped every connection the recovered state had open,
    /// without firing timers ([`Durable::recover`]).
    Restart,
    /// The settings in force from here on: written first by every run, so a
    /// replay decides under the settings the run had, even when the
    /// operator changed them before the restart.
    Settings(Box<Settings>),
}

/// The switchboard settings a journal records: every
/// [`SwitchboardConfig`] field but the contact policy, which is code (the
/// one in force is used).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Settings {
    max_callees: usize,
    default_ring_timeout_s: u32,
    min_ring_timeout_s: u32,
    max_ring_timeout_s: u32,
    max_custom_data: usize,
    busy_policy: crate::BusyPolicy,
    offline_policy: crate::OfflinePolicy,
    caller_gone_grace_ms: u64,
    resume_buffer: usize,
    retention_ms: u64,
    max_tombstones: usize,
    max_remembered_requests: usize,
    max_remembered_requests_per_user: usize,
    recent_ended_per_user: usize,
    hide_callee_status: bool,
    max_receipts_per_callee: usize,
    end_policy: crate::EndPolicy,
    call_records: bool,
    /// Absent from journals written before push existed: off.
    #[serde(default)]
    push: bool,
    #[serde(default = "default_max_push_devices")]
    max_push_devices: usize,
}

fn default_max_push_devices() -> usize {
    SwitchboardConfig::default().max_push_devices
}

impl Settings {
    /// The recordable part of `config`.
    pub fn of(config: &SwitchboardConfig) -> Self {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            max_callees: config.max_callees,
            default_ring_timeout_s: config.default_ring_timeout_s,
            min_ring_timeout_s: config.min_ring_timeout_s,
            max_ring_timeout_s: config.max_ring_timeout_s,
            max_custom_data: config.max_custom_data,
            busy_policy: config.busy_policy,
            offline_policy: config.offline_policy,
            caller_gone_grace_ms: ms(config.caller_gone_grace),
            resume_buffer: config.resume_buffer,
            retention_ms: ms(config.retention),
            max_tombstones: config.max_tombstones,
            max_remembered_requests: config.max_remembered_requests,
            max_remembered_requests_per_user: config.max_remembered_requests_per_user,
            recent_ended_per_user: config.recent_ended_per_user,
            hide_callee_status: config.hide_callee_status,
            max_receipts_per_callee: config.max_receipts_per_callee,
            end_policy: config.end_policy,
            call_records: config.call_records,
            push: config.push,
            max_push_devices: config.max_push_devices,
        }
    }

    /// `base` (for its contact policy) with these settings.
    pub fn applied_to(&self, base: &SwitchboardConfig) -> SwitchboardConfig {
        let mut c = base.clone();
        c.max_callees = self.max_callees;
        c.default_ring_timeout_s = self.default_ring_timeout_s;
        c.min_ring_timeout_s = self.min_ring_timeout_s;
        c.max_ring_timeout_s = self.max_ring_timeout_s;
        c.max_custom_data = self.max_custom_data;
        c.busy_policy = self.busy_policy;
        c.offline_policy = self.offline_policy;
        c.caller_gone_grace = Duration::from_millis(self.caller_gone_grace_ms);
        c.resume_buffer = self.resume_buffer;
        c.retention = Duration::from_millis(self.retention_ms);
        c.max_tombstones = self.max_tombstones;
        c.max_remembered_requests = self.max_remembered_requests;
        c.max_remembered_requests_per_user = self.max_remembered_requests_per_user;
        c.recent_ended_per_user = self.recent_ended_per_user;
        c.hide_callee_status = self.hide_callee_status;
        c.max_receipts_per_callee = self.max_receipts_per_callee;
        c.end_policy = self.end_policy;
        c.call_records = self.call_records;
        c.push = self.push;
        c.max_push_devices = self.max_push_devices;
        c
    }
}

/// Why [`Durable::recover`] could not rebuild the state. Nothing is
/// guessed: the owner decides (stop with this error, or start empty on an
/// operator's word).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecoverError {
    /// The snapshot was written in a format this version does not read.
    #[error("snapshot format version {found} is not supported (this version reads {supported})")]
    UnknownVersion {
        /// The snapshot's version.
        found: u32,
        /// The version this build reads.
        supported: u32,
    },
    /// The snapshot contradicts itself.
    #[error("inconsistent snapshot: {0}")]
    Corrupt(String),
    /// Replaying entry `entry` (0-based, after the snapshot) drew more call
    /// ids than the entry recorded.
    #[error("journal entry {entry} drew more call ids than it recorded")]
    IdsExhausted {
        /// The entry's index.
        entry: usize,
    },
    /// Replaying entry `entry` drew fewer call ids than it recorded: the
    /// journal does not belong to this state or configuration.
    #[error("journal entry {entry} recorded {left} call ids that were never drawn")]
    IdsLeftOver {
        /// The entry's index.
        entry: usize,
        /// How many were left.
        left: usize,
    },
    /// A connection input without a connection.
    #[error("journal entry {entry} is a connection input without a connection")]
    NoConnection {
        /// The entry's index.
        entry: usize,
    },
}

/// What a recovery rebuilt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Recovered {
    /// Journal entries replayed after the snapshot.
    pub entries: usize,
    /// Calls held (live and recently ended).
    pub calls: usize,
    /// Calls still ringing.
    pub ringing: usize,
    /// Users held.
    pub users: usize,
    /// Connections the recovered state had open, dropped.
    pub dropped: usize,
}

/// The call ids a switchboard draws: recorded live, handed back on replay.
struct Tape {
    inner: Box<dyn CallIdGenerator>,
    record: bool,
    recorded: Vec<CallId>,
    replay: Option<VecDeque<CallId>>,
    ran_out: bool,
}

#[derive(Clone)]
struct Taped(Arc<Mutex<Tape>>);

impl Taped {
    fn lock(&self) -> MutexGuard<'_, Tape> {
        // One thread uses it at a time; a panic elsewhere leaves it usable.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl CallIdGenerator for Taped {
    fn next_call_id(&mut self) -> CallId {
        let mut tape = self.lock();
        if let Some(replay) = tape.replay.as_mut() {
            if let Some(id) = replay.pop_front() {
                return id;
            }
            // The recovery fails with IdsExhausted; any id will do.
            tape.ran_out = true;
        }
        let id = tape.inner.next_call_id();
        if tape.record {
            tape.recorded.push(id.clone());
        }
        id
    }
}

/// A switchboard whose every input is journaled. Read-only queries go
/// through `Deref<Target = Switchboard>` (there is no mutable access: an
/// input that bypassed the journal would be lost on recovery).
///
/// Journaling is on from the start; [`Durable::set_journaling`] turns it off
/// for an in-memory server (then nothing is recorded or kept).
pub struct Durable {
    sb: Switchboard,
    frame: TimeFrame,
    tape: Taped,
    journal: Vec<JournalEntry>,
    journaling: bool,
    /// The call notices of the last [`REPLAYED_NOTICE_ENTRIES`] entries a
    /// recovery replayed, for [`Durable::take_replayed_notices`].
    replayed: Vec<CallNotice>,
}

/// How many of the last journal entries a recovery keeps the notices of
/// ([`Durable::take_replayed_notices`]). An owner journals a turn before
/// it sends the turn's notices on, so a crash can cut off at most the
/// notices of the last turn: a few dozen entries at most.
pub const REPLAYED_NOTICE_ENTRIES: usize = 1024;

impl std::fmt::Debug for Durable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Durable")
            .field("switchboard", &self.sb)
            .field("journal", &self.journal.len())
            .field("journaling", &self.journaling)
            .finish_non_exhaustive()
    }
}

impl Deref for Durable {
    type Target = Switchboard;

    fn deref(&self) -> &Switchboard {
        &self.sb
    }
}

impl Durable {
    /// An empty switchboard with these settings, drawing call ids from
    /// `ids`, journaling with times in `frame`.
    pub fn new(
        config: SwitchboardConfig,
        ids: impl CallIdGenerator + 'static,
        frame: TimeFrame,
    ) -> Self {
        let tape = Self::tape(ids);
        // The journal starts with the settings it is written under.
        let first = JournalEntry {
            at: frame.unix_ns,
            conn: None,
            input: JournalInput::Settings(Box::new(Settings::of(&config))),
            ids: Vec::new(),
        };
        Self {
            sb: Switchboard::new(config, tape.clone()),
            frame,
            tape,
            journal: vec![first],
            journaling: true,
            replayed: Vec::new(),
        }
    }

    fn tape(ids: impl CallIdGenerator + 'static) -> Taped {
        Taped(Arc::new(Mutex::new(Tape {
            inner: Box::new(ids),
            record: true,
            recorded: Vec::new(),
            replay: None,
            ran_out: false,
        })))
    }

    /// Rebuilds the state: restores `snapshot` (if any), replays `entries`
    /// in order with their recorded times and call ids (outputs and notices
    /// discarded), then drops every connection still open, at `now`
    /// (journaled as one [`JournalInput::Restart`] entry: the first the
    /// owner drains). Dropping moves no clock and fires no timer: deadlines
    /// that passed while the server was down fire at the next input (call
    /// [`Durable::handle_timeout`] first), once. Callers whose device was
    /// connected get the caller-gone grace from `now`.
    ///
    /// `config` should be the one the journal was written with: replay
    /// under other settings may decide differently (and then usually fails
    /// with [`RecoverError::IdsExhausted`] or [`RecoverError::IdsLeftOver`]).
    pub fn recover(
        config: SwitchboardConfig,
        ids: impl CallIdGenerator + 'static,
        frame: TimeFrame,
        snapshot: Option<SwitchboardSnapshot>,
        entries: impl IntoIterator<Item = JournalEntry>,
        now: Instant,
    ) -> Result<(Self, Recovered), RecoverError> {
        let tape = Self::tape(ids);
        let current = config.clone();
        let sb = match snapshot {
            Some(s) if s.version() != SNAPSHOT_VERSION => {
                return Err(RecoverError::UnknownVersion {
                    found: s.version(),
                    supported: SNAPSHOT_VERSION,
                });
            }
            Some(s) => Switchboard::from_image(config, tape.clone(), s, &|ns| frame.to_instant(ns))
                .map_err(RecoverError::Corrupt)?,
            None => Switchboard::new(config, tape.clone()),
        };
        let mut me = Self {
            sb,
            frame,
            tape,
            journal: Vec::new(),
            journaling: false,
            replayed: Vec::new(),
        };
        let mut replayed = 0;
        // Notices of the newest entries, with the entry they came from.
        let mut tail: VecDeque<(usize, CallNotice)> = VecDeque::new();
        for (i, entry) in entries.into_iter().enumerate() {
            {
                let mut tape = me.tape.lock();
                tape.record = false;
                tape.ran_out = false;
                tape.replay = Some(entry.ids.into());
            }
            me.replay(i, entry.at, entry.conn, entry.input)?;
            while me.sb.poll_output().is_some() {}
            // A receipt keeps the previous input's notices queued: none of
            // the replay's may surface after it.
            while let Some(notice) = me.sb.poll_notice() {
                tail.push_back((i, notice));
            }
            while tail
                .front()
                .is_some_and(|(at, _)| at + REPLAYED_NOTICE_ENTRIES <= i)
            {
                tail.pop_front();
            }
            // Pushes are sent live only: a replayed ring was pushed (or not)
            // by the run that journaled it.
            while me.sb.poll_push().is_some() {}
            let mut tape = me.tape.lock();
            let left = tape.replay.take().map_or(0, |r| r.len());
            if tape.ran_out {
                return Err(RecoverError::IdsExhausted { entry: i });
            }
            if left > 0 {
                return Err(RecoverError::IdsLeftOver { entry: i, left });
            }
            replayed += 1;
        }
        me.replayed = tail.into_iter().map(|(_, n)| n).collect();
        me.tape.lock().record = true;
        me.journaling = true;
        let at = me.effective(now);
        // From here on the settings of this run.
        me.journal.push(JournalEntry {
            at: me.frame.to_unix_ns(at),
            conn: None,
            input: JournalInput::Settings(Box::new(Settings::of(&current))),
            ids: Vec::new(),
        });
        me.sb.set_config(current);
        let dropped = me.sb.drop_connections(at);
        if dropped > 0 {
            me.journal.push(JournalEntry {
                at: me.frame.to_unix_ns(at),
                conn: None,
                input: JournalInput::Restart,
                ids: Vec::new(),
            });
        }
        let recovered = Recovered {
            entries: replayed,
            calls: me.sb.calls().count(),
            ringing: me.sb.calls().filter(|c| c.is_ringing()).count(),
            users: me.sb.sizes().0,
            dropped,
        };
        Ok((me, recovered))
    }

    fn replay(
        &mut self,
        entry: usize,
        at: i64,
        conn: Option<u64>,
        input: JournalInput,
    ) -> Result<(), RecoverError> {
        let now = self.frame.to_instant(at);
        let conn = || {
            conn.map(ConnId::new)
                .ok_or(RecoverError::NoConnection { entry })
        };
        let sb = &mut self.sb;
        match input {
            JournalInput::Connect {
                user,
                device,
                last_seq,
                hello,
            } => sb.connect(now, conn()?, user, device, last_seq, hello),
            JournalInput::Command { id, command } => {
                let _ = sb.handle_command(now, conn()?, id, command);
            }
            JournalInput::Backend { user, id, command } => {
                let _ = sb.handle_backend_command(now, user, id, command);
            }
            JournalInput::Push {
                user,
                device,
                registration,
            } => {
                let _ = sb.handle_backend_push(now, &user, &device, registration);
            }
            JournalInput::Sync { id } => sb.handle_sync(now, conn()?, id),
            JournalInput::Receipt { call_id } => sb.handle_receipt(now, conn()?, &call_id),
            JournalInput::Disconnect => sb.disconnect(now, conn()?),
            JournalInput::Timeout => sb.handle_timeout(now),
            JournalInput::Shutdown => sb.shutdown(now),
            JournalInput::Restart => {
                sb.drop_connections(now);
            }
            JournalInput::Settings(settings) => {
                let config = settings.applied_to(sb.config());
                sb.set_config(config);
            }
        }
        Ok(())
    }

    /// The switchboard (read-only).
    pub fn switchboard(&self) -> &Switchboard {
        &self.sb
    }

    /// The time frame entries and snapshots are written in.
    pub fn frame(&self) -> TimeFrame {
        self.frame
    }

    /// Turns journaling on or off. Off (an in-memory server), inputs cost
    /// what they cost without the wrapper; entries already journaled stay
    /// until drained.
    pub fn set_journaling(&mut self, on: bool) {
        self.journaling = on;
        self.tape.lock().record = on;
    }

    /// Whether inputs are journaled.
    pub fn journaling(&self) -> bool {
        self.journaling
    }

    /// The time an input at `now` takes effect at (the clock never goes
    /// back).
    fn effective(&self, now: Instant) -> Instant {
        self.sb.clock().map_or(now, |clock| clock.max(now))
    }

    /// Runs one input, journaling it as `input` (made only when
    /// journaling).
    fn run<R>(
        &mut self,
        now: Instant,
        conn: Option<ConnId>,
        input: Option<JournalInput>,
        f: impl FnOnce(&mut Switchboard) -> R,
    ) -> R {
        let Some(input) = input.filter(|_| self.journaling) else {
            return f(&mut self.sb);
        };
        let at = self.effective(now);
        self.tape.lock().recorded.clear();
        let r = f(&mut self.sb);
        let ids = std::mem::take(&mut self.tape.lock().recorded);
        self.journal.push(JournalEntry {
            at: self.frame.to_unix_ns(at),
            conn: conn.map(ConnId::get),
            input,
            ids,
        });
        r
    }

    /// [`Switchboard::connect`], journaled.
    pub fn connect(
        &mut self,
        now: Instant,
        conn: ConnId,
        user: User,
        device: DeviceId,
        last_seq: Option<u64>,
        hello: Option<RequestId>,
    ) {
        let input = self.journaling.then(|| JournalInput::Connect {
            user: user.clone(),
            device: device.clone(),
            last_seq,
            hello: hello.clone(),
        });
        self.run(now, Some(conn), input, |sb| {
            sb.connect(now, conn, user, device, last_seq, hello)
        });
    }

    /// [`Switchboard::handle_input`], journaled.
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

    /// [`Switchboard::handle_command`], journaled.
    pub fn handle_command(
        &mut self,
        now: Instant,
        conn: ConnId,
        id: RequestId,
        command: Command,
    ) -> Result<ReplyResult, CommandError> {
        let input = self.journaling.then(|| JournalInput::Command {
            id: id.clone(),
            command: command.clone(),
        });
        self.run(now, Some(conn), input, |sb| {
            sb.handle_command(now, conn, id, command)
        })
    }

    /// [`Switchboard::handle_backend_command`], journaled.
    pub fn handle_backend_command(
        &mut self,
        now: Instant,
        caller: User,
        request: RequestId,
        command: Command,
    ) -> Result<ReplyResult, CommandError> {
        let input = self.journaling.then(|| JournalInput::Backend {
            user: caller.clone(),
            id: request.clone(),
            command: command.clone(),
        });
        self.run(now, None, input, |sb| {
            sb.handle_backend_command(now, caller, request, command)
        })
    }

    /// [`Switchboard::handle_backend_push`], journaled.
    pub fn handle_backend_push(
        &mut self,
        now: Instant,
        user: &UserId,
        device: &DeviceId,
        registration: Option<PushRegistration>,
    ) -> Result<(), CommandError> {
        let input = self.journaling.then(|| JournalInput::Push {
            user: user.clone(),
            device: device.clone(),
            registration: registration.clone(),
        });
        self.run(now, None, input, |sb| {
            sb.handle_backend_push(now, user, device, registration)
        })
    }

    /// [`Switchboard::handle_sync`], journaled.
    pub fn handle_sync(&mut self, now: Instant, conn: ConnId, id: RequestId) {
        let input = self
            .journaling
            .then(|| JournalInput::Sync { id: id.clone() });
        self.run(now, Some(conn), input, |sb| sb.handle_sync(now, conn, id));
    }

    /// [`Switchboard::handle_receipt`], journaled.
    pub fn handle_receipt(&mut self, now: Instant, conn: ConnId, call_id: &CallId) {
        let input = self.journaling.then(|| JournalInput::Receipt {
            call_id: call_id.clone(),
        });
        self.run(now, Some(conn), input, |sb| {
            sb.handle_receipt(now, conn, call_id)
        });
    }

    /// [`Switchboard::disconnect`], journaled.
    pub fn disconnect(&mut self, now: Instant, conn: ConnId) {
        self.run(now, Some(conn), Some(JournalInput::Disconnect), |sb| {
            sb.disconnect(now, conn)
        });
    }

    /// [`Switchboard::handle_timeout`], journaled only when a timer was due
    /// (a timeout with nothing due changes nothing the next input would
    /// not do the same).
    pub fn handle_timeout(&mut self, now: Instant) {
        let due = self
            .sb
            .poll_timeout()
            .is_some_and(|t| t <= self.effective(now));
        if due {
            self.run(now, None, Some(JournalInput::Timeout), |sb| {
                sb.handle_timeout(now)
            });
        } else {
            self.sb.handle_timeout(now);
        }
    }

    /// [`Switchboard::shutdown`], journaled. (A durable server that stops
    /// and keeps its state does not call it.)
    pub fn shutdown(&mut self, now: Instant) {
        self.run(now, None, Some(JournalInput::Shutdown), |sb| {
            sb.shutdown(now)
        });
    }

    /// [`Switchboard::poll_output`].
    pub fn poll_output(&mut self) -> Option<Output> {
        self.sb.poll_output()
    }

    /// The call notices the last [`REPLAYED_NOTICE_ENTRIES`] journal
    /// entries of a recovery produced, oldest first (empty but after
    /// [`Durable::recover`], and after the first call). An owner that sends
    /// notices on (webhooks) after journaling them sends again those a crash
    /// may have cut off; they are the same notices the original run made, so
    /// an owner that names its events deterministically can tell which it
    /// already sent.
    pub fn take_replayed_notices(&mut self) -> Vec<CallNotice> {
        std::mem::take(&mut self.replayed)
    }

    /// [`Switchboard::poll_push`].
    pub fn poll_push(&mut self) -> Option<crate::switchboard::PushNotice> {
        self.sb.poll_push()
    }

    /// [`Switchboard::poll_notice`].
    pub fn poll_notice(&mut self) -> Option<CallNotice> {
        self.sb.poll_notice()
    }

    /// [`Switchboard::poll_record`]. After [`Durable::recover`] it returns
    /// the records of the calls that ended in the replayed entries too:
    /// the owner stores them again, and its store keeps one per call.
    pub fn poll_record(&mut self) -> Option<crate::CallRecord> {
        self.sb.poll_record()
    }

    /// [`Switchboard::poll_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sb.poll_timeout()
    }

    /// Moves the entries journaled since the last call into `into`, oldest
    /// first.
    pub fn drain_journal(&mut self, into: &mut Vec<JournalEntry>) {
        into.append(&mut self.journal);
    }

    /// Entries journaled and not drained yet.
    pub fn journal_len(&self) -> usize {
        self.journal.len()
    }

    /// The whole state now (take it between inputs, after draining the
    /// outputs: those are not part of it). Entries journaled before this
    /// call are covered by it.
    pub fn snapshot(&self) -> SwitchboardSnapshot {
        let frame = self.frame;
        self.sb.image(&|at| frame.to_unix_ns(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::disallowed_methods)] // the origin of test time
    fn origin() -> Instant {
        Instant::now()
    }

    #[test]
    fn conversions_are_exact_to_the_nanosecond() {
        let t = origin();
        let frame = TimeFrame::new(t, 1_767_225_600_000_000_001);
        assert_eq!(frame.to_unix_ns(t), 1_767_225_600_000_000_001);
        assert_eq!(
            frame.to_unix_ns(t + Duration::from_nanos(1)),
            1_767_225_600_000_000_002
        );
        for ns in [0u64, 1, 999, 1_000_001, 59_999_999_999, 3_600_000_000_007] {
            let later = t + Duration::from_nanos(ns);
            let unix = frame.to_unix_ns(later);
            assert_eq!(unix, 1_767_225_600_000_000_001 + ns as i64);
            assert_eq!(frame.to_instant(unix), later);
            if let Some(earlier) = t.checked_sub(Duration::from_nanos(ns)) {
                let unix = frame.to_unix_ns(earlier);
                assert_eq!(unix, 1_767_225_600_000_000_001 - ns as i64);
                assert_eq!(frame.to_instant(unix), earlier);
            }
        }
        // Another boot's frame for the same clock gives the same instants.
        let other = TimeFrame::new(t + Duration::from_secs(10), 1_767_225_610_000_000_001);
        let at = t + Duration::from_nanos(123_456_789);
        assert_eq!(other.to_instant(frame.to_unix_ns(at)), at);
        assert_eq!(other.to_unix_ns(at), frame.to_unix_ns(at));
    }

    #[test]
    fn extreme_values_saturate_without_panicking() {
        let t = origin();
        let frame = TimeFrame::new(t, 0);
        // Instants around i64::MAX nanoseconds (292 years) away.
        let far = frame.to_instant(i64::MAX);
        let near = frame.to_instant(i64::MIN);
        assert!(far > t && near <= t);
        // Whatever the platform reaches, the round trip stays put or
        // saturates at the i64 ends.
        assert!(frame.to_unix_ns(far) > 0);
        assert!(frame.to_unix_ns(near) <= 0);
        let top = TimeFrame::new(t, i64::MAX);
        assert_eq!(top.to_unix_ns(t + Duration::from_secs(1)), i64::MAX);
        let bottom = TimeFrame::new(t + Duration::from_secs(5), i64::MIN);
        assert_eq!(bottom.to_unix_ns(t), i64::MIN);
        // Farther than any platform's instants reach: the earliest one.
        assert!(top.to_instant(i64::MIN) <= frame.to_instant(i64::MIN));
        // The saturating search lands on the last representable instant.
        let last = saturate(t, Duration::MAX, |i, d| i.checked_add(d));
        assert!(last.checked_add(Duration::from_nanos(1)).is_none() || last > t);
        assert_eq!(duration_of(u128::MAX), Duration::MAX);
        assert_eq!(duration_of(1_500_000_001), Duration::new(1, 500_000_001));
    }

    #[test]
    fn journal_entries_round_trip_through_json() {
        let entries = [
            JournalEntry {
                at: -5,
                conn: Some(7),
                input: JournalInput::Connect {
                    user: User::new(crate::UserId::new("u").unwrap(), "U").unwrap(),
                    device: DeviceId::new("d").unwrap(),
                    last_seq: Some(3),
                    hello: Some(RequestId::new("h").unwrap()),
                },
                ids: Vec::new(),
            },
            JournalEntry {
                at: i64::MAX,
                conn: Some(u64::MAX),
                input: JournalInput::Command {
                    id: RequestId::new("r1").unwrap(),
                    command: Command::Decline {
                        call_id: CallId::new("c").unwrap(),
                        busy: true,
                        custom_data: Some(crate::CustomData::new("{\"x\":1}").unwrap()),
                    },
                },
                ids: vec![CallId::new("c-1").unwrap(), CallId::new("c-2").unwrap()],
            },
            JournalEntry {
                at: i64::MIN,
                conn: None,
                input: JournalInput::Timeout,
                ids: Vec::new(),
            },
            JournalEntry {
                at: 0,
                conn: None,
                input: JournalInput::Restart,
                ids: Vec::new(),
            },
        ];
        for e in entries {
            let line = serde_json::to_string(&e).unwrap();
            assert!(!line.contains('\n'));
            let back: JournalEntry = serde_json::from_str(&line).unwrap();
            assert_eq!(back, e, "{line}");
        }
        let timeout = serde_json::to_string(&JournalEntry {
            at: 1,
            conn: None,
            input: JournalInput::Timeout,
            ids: Vec::new(),
        })
        .unwrap();
        assert_eq!(timeout, r#"{"at":1,"input":{"t":"timeout"}}"#);
    }
}
