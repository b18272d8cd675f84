//! The one task that owns the `Switchboard`. Connection tasks send it
//! commands; it answers through each connection's bounded queue. A
//! connection whose queue is full is dropped (it does not read), so server
//! memory stays flat whatever a client does.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use invitation_core::durable::{Durable, JournalEntry, SwitchboardSnapshot, TimeFrame};
use invitation_core::protocol::{
    CloseReason, Command, ErrorBody, Event, PushRegistration, ReplyResult, ServerBody,
    ServerMessage,
};
use invitation_core::{
    CallId, CallIdGenerator, CallNotice, CommandError, ConnId, DeviceId, Output, RequestId,
    SwitchboardConfig, SwitchboardInput, User, UserId,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::limits::HubLimits;
use crate::metrics::{Metrics, Refusal};
use crate::outbox::{Outbox, PushError};
use crate::push::Pushes;
use crate::records::{Cursor, Page, RecordError, RecordOptions, RecordStore, StoredRecord};
use crate::server::ServerError;
use crate::store::{Store, StoreOptions};
use crate::webhook::Webhooks;
use invitation_core::switchboard::PushWhat;

/// What the write of a message is timed against, for the metrics.
#[derive(Debug, Clone, Copy)]
pub enum Stamp {
    /// Not timed.
    None,
    /// An `incoming_call`: when the invite that caused it was read.
    Ring(Instant),
    /// Caused by timers: the earliest deadline of the batch that fired.
    Timer(Instant),
}

/// A message for a connection, with what its write is timed against.
#[derive(Debug)]
pub struct Queued {
    /// The message.
    pub message: ServerMessage,
    /// For the ring-latency and timer-lateness histograms.
    pub stamp: Stamp,
}

/// What a connection task receives from the hub. 16 bytes: a queue's slots
/// are allocated 32 at a time when the queue is made, so every idle
/// connection pays for 32 of them.
#[derive(Debug)]
pub enum Outbound {
    /// Send this message.
    Message(Box<Queued>),
    /// Say why and close.
    Close(CloseReason),
}

/// What connection tasks send to the hub: their connection machine's
/// switchboard inputs.
#[derive(Debug)]
pub enum HubMsg {
    /// An authenticated device joins (`input` is the machine's `Connect`).
    Open {
        /// The connection.
        conn: ConnId,
        /// Where to send its messages.
        tx: Arc<Outbox>,
        /// The `Connect`.
        input: SwitchboardInput,
    },
    /// The server is stopping: end every live call (its state is not kept)
    /// and queue the news to every connection, then answer.
    Shutdown {
        /// Answered once the news is queued.
        done: tokio::sync::oneshot::Sender<()>,
    },
    /// A command an app's backend sends on a user's behalf (the HTTP API):
    /// answered once the turn that ran it is journaled.
    Backend {
        /// The user the backend acts for (named, if the switchboard does
        /// not know them yet).
        user: User,
        /// The request id (idempotency key).
        request: RequestId,
        /// The command: invite, cancel, hang_up, end or add.
        command: Command,
        /// The answer.
        reply: tokio::sync::oneshot::Sender<Result<ReplyResult, CommandError>>,
    },
    /// Registers (`Some`) or forgets (`None`) a device's push credentials
    /// for an app's backend (journaled like any input).
    Push {
        /// Whose device.
        user: UserId,
        /// Which device.
        device: DeviceId,
        /// The credentials.
        registration: Option<PushRegistration>,
        /// The answer, once journaled.
        reply: tokio::sync::oneshot::Sender<Result<ReplyResult, CommandError>>,
    },
    /// A user's push registrations (a read: nothing changes).
    PushDevices {
        /// Whose.
        user: UserId,
        /// The answer: device and credentials, oldest first.
        reply: tokio::sync::oneshot::Sender<Vec<(DeviceId, PushRegistration)>>,
    },
    /// A page of ended-call records (durable servers only).
    Records {
        /// Whose, when, where to go on from.
        query: RecordQuery,
        /// The answer.
        reply: tokio::sync::oneshot::Sender<Result<Page, RecordError>>,
    },
    /// A user's presence, for the HTTP API (a read: nothing changes).
    Presence {
        /// Whose.
        user: UserId,
        /// The answer.
        reply: tokio::sync::oneshot::Sender<crate::api::Presence>,
    },
    /// A live call's state, for the HTTP API (a read: nothing changes).
    Call {
        /// Which call.
        call_id: CallId,
        /// The answer (`None`: not held).
        reply: tokio::sync::oneshot::Sender<Option<crate::api::CallState>>,
    },
    /// Any other input (a command, a `sync`, the device leaving), with the
    /// time it was read.
    Input {
        /// The connection.
        conn: ConnId,
        /// What the machine hands over.
        input: SwitchboardInput,
        /// When it was read off the socket.
        at: Instant,
    },
}

/// Which call records to read: see [`RecordStore::list`].
#[derive(Debug, Clone)]
pub struct RecordQuery {
    /// The records this user took part in, as caller or callee.
    pub user: UserId,
    /// Ended at or after (unix nanoseconds).
    pub from: i64,
    /// Ended before (unix nanoseconds).
    pub to: i64,
    /// Where the previous page ended.
    pub cursor: Option<Cursor>,
    /// Most records in the page (capped).
    pub limit: usize,
}

/// Unguessable call ids (`c-` + 32 hex digits from the OS CSPRNG), drawn
/// from a refilled pool so most ids cost no system call.
pub(crate) struct RandomCallIds {
    pool: Vec<u8>,
    pos: usize,
}

impl RandomCallIds {
    /// An empty pool (filled on first use).
    pub(crate) fn new() -> Self {
        Self {
            pool: vec![0; 4096],
            pos: 4096,
        }
    }
}

impl Default for RandomCallIds {
    fn default() -> Self {
        Self::new()
    }
}

impl CallIdGenerator for RandomCallIds {
    fn next_call_id(&mut self) -> CallId {
        if self.pos + 16 > self.pool.len() {
            getrandom::fill(&mut self.pool).expect("the OS has randomness");
            self.pos = 0;
        }
        let bytes = &self.pool[self.pos..self.pos + 16];
        self.pos += 16;
        let mut s = String::with_capacity(34);
        s.push_str("c-");
        for b in bytes {
            s.push(char::from_digit(u32::from(b >> 4), 16).expect("hex"));
            s.push(char::from_digit(u32::from(b & 15), 16).expect("hex"));
        }
        CallId::new(s).expect("valid call id")
    }
}

struct Link {
    tx: Arc<Outbox>,
    user: UserId,
}

/// Something for a connection, held until the turn that produced it is
/// journaled (a client is never told what a crash could take back).
struct Held {
    conn: ConnId,
    tx: Arc<Outbox>,
    what: Outbound,
}

/// The answer to a backend command, waiting for its turn to be journaled.
type BackendAnswer = (
    tokio::sync::oneshot::Sender<Result<ReplyResult, CommandError>>,
    Result<ReplyResult, CommandError>,
);

/// How far the switchboard's clock runs ahead of the process's monotonic
/// clock: ten years. A recovered state holds instants from before this
/// process started (from before the machine booted, even), which a
/// monotonic clock that starts at boot could not represent.
const CLOCK_SHIFT: Duration = Duration::from_secs(10 * 365 * 86_400);

/// The switchboard's `now`.
pub(crate) fn now() -> std::time::Instant {
    Instant::now().into_std() + CLOCK_SHIFT
}

/// A switchboard instant on the process's clock (for timers and metrics);
/// one from before this process could measure is "now".
fn on_process_clock(at: std::time::Instant) -> Instant {
    at.checked_sub(CLOCK_SHIFT)
        .map_or_else(Instant::now, Instant::from_std)
}

/// Unix time in nanoseconds, from the wall clock.
pub(crate) fn unix_ns_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The switchboard's clock against the wall clock, now: how its instants
/// are written to the data directory and read back.
pub(crate) fn time_frame() -> TimeFrame {
    TimeFrame::new(now(), unix_ns_now())
}

/// The hub task's state.
pub(crate) struct Hub {
    sb: Durable,
    links: HashMap<ConnId, Link>,
    /// The data directory, when the server is durable.
    store: Option<Store>,
    /// The JetStream log, when the server is a cluster's leader.
    log: Option<crate::cluster::state::LogSink>,
    /// Ended-call records, when the server is durable.
    records: Option<RecordStore>,
    /// Scratch for the records of a turn.
    ended: Vec<StoredRecord>,
    /// Outputs of the turn, released once its inputs are journaled.
    held: Vec<Held>,
    /// The outputs being released (kept to reuse its allocation).
    releasing: Vec<Held>,
    /// Answers to the backend's commands of the turn, likewise.
    held_answers: Vec<BackendAnswer>,
    /// Scratch for the journal entries of a turn.
    entries: Vec<JournalEntry>,
    /// A durable server stopped: its state is on disk, and nothing more is
    /// fed to the switchboard (the connections closing now are not
    /// journaled: the next run sees them drop when it starts, and callers
    /// get their full grace to come back).
    stopping: bool,
    limits: HubLimits,
    shed_after: Option<Duration>,
    metrics: Arc<Metrics>,
    /// Scratch for [`Hub::drain`] (kept to reuse its allocation).
    deferred: Vec<ServerMessage>,
    /// Webhook events, when endpoints are configured.
    webhooks: Option<Webhooks>,
    /// Push requests, when a gateway is configured.
    pushes: Option<Pushes>,
    /// The notices of the journal tail a recovery replayed, for the
    /// webhooks to send again what a crash cut off (taken by
    /// [`Hub::with_webhooks`], dropped when the hub runs).
    replayed_notices: Vec<CallNotice>,
}

/// Inbox messages handled per hub turn (one `select!` for all of them).
const HUB_BATCH: usize = 64;

/// How long a client is told to wait after a shed invitation.
const SHED_RETRY_AFTER_MS: u64 = 1000;

impl Hub {
    /// A hub with these switchboard settings, per-user and per-connection
    /// limits and load shedding threshold (new invites are refused while the
    /// scheduler lags, or an invite waited, longer than it).
    pub(crate) fn new(
        config: SwitchboardConfig,
        limits: HubLimits,
        shed_after: Option<Duration>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut sb = Durable::new(config, RandomCallIds::new(), time_frame());
        // In memory: nothing to journal, nothing paid for it.
        sb.set_journaling(false);
        Self::with(sb, limits, shed_after, metrics)
    }

    fn with(
        sb: Durable,
        limits: HubLimits,
        shed_after: Option<Duration>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            sb,
            links: HashMap::new(),
            store: None,
            log: None,
            records: None,
            ended: Vec::new(),
            held: Vec::new(),
            releasing: Vec::new(),
            held_answers: Vec::new(),
            entries: Vec::new(),
            stopping: false,
            limits,
            shed_after,
            metrics,
            deferred: Vec::new(),
            webhooks: None,
            pushes: None,
            replayed_notices: Vec::new(),
        }
    }

    /// A cluster leader's hub: `sb` was rebuilt from JetStream, and every
    /// turn is appended to `log` before its messages leave.
    pub(crate) fn in_cluster(
        sb: Durable,
        limits: HubLimits,
        shed_after: Option<Duration>,
        metrics: Arc<Metrics>,
        log: crate::cluster::state::LogSink,
    ) -> Self {
        let mut hub = Self::with(sb, limits, shed_after, metrics);
        hub.log = Some(log);
        hub
    }

    /// Sends the switchboard's push requests to this gateway from now on.
    pub(crate) fn with_pushes(mut self, pushes: Pushes) -> Self {
        self.pushes = Some(pushes);
        self
    }

    /// Sends every call milestone to these webhooks from now on.
    pub(crate) fn with_webhooks(mut self, mut webhooks: Webhooks) -> Self {
        webhooks.resend_missing(&std::mem::take(&mut self.replayed_notices));
        self.webhooks = Some(webhooks);
        self
    }

    /// A durable hub: opens the data directory and rebuilds the state the
    /// last run left (its newest snapshot and the journal after it); every
    /// connection of that run counts as dropped now.
    pub(crate) fn recover(
        mut config: SwitchboardConfig,
        limits: HubLimits,
        shed_after: Option<Duration>,
        metrics: Arc<Metrics>,
        options: StoreOptions,
        record_retention: Duration,
    ) -> Result<Self, ServerError> {
        let started = std::time::Instant::now();
        let dir = options.dir.clone();
        let (store, loaded) = Store::open(options)?;
        // Opened before the replay: the records of calls that ended in the
        // replayed tail are written again, and the store keeps one of each.
        let records = RecordStore::open_with(
            dir.join("records"),
            RecordOptions::new(record_retention),
            unix_ns_now(),
        )?;
        config.call_records = true;
        for (file, bytes) in &loaded.torn {
            tracing::warn!(
                file = %file.display(), bytes,
                "the journal ended in a torn write (the last run stopped mid-write): \
                 dropped those bytes, kept every whole entry before them"
            );
        }
        let snapshot: Option<SwitchboardSnapshot> = loaded.decode_snapshot()?;
        let entries: Vec<JournalEntry> = loaded.decode_entries()?;
        let replayed = entries.len();
        drop(loaded);
        let (sb, recovered) = Durable::recover(
            config,
            RandomCallIds::new(),
            time_frame(),
            snapshot,
            entries,
            now(),
        )
        .map_err(|e| ServerError::Recover {
            dir: dir.clone(),
            detail: e.to_string(),
        })?;
        let mut sb = sb;
        let replayed_notices = sb.take_replayed_notices();
        let mut hub = Self::with(sb, limits, shed_after, metrics);
        hub.replayed_notices = replayed_notices;
        hub.store = Some(store);
        hub.records = Some(records);
        hub.commit_and_release();
        tracing::info!(
            data_dir = %dir.display(),
            replayed,
            ?recovered,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "state recovered"
        );
        Ok(hub)
    }

    /// The `unavailable` answer to a new invitation the server will not
    /// take, counted. Also used by connection tasks when the hub's inbox is
    /// full.
    pub(crate) fn shed_reply(metrics: &Metrics, re: RequestId) -> ServerMessage {
        metrics.invites_shed.fetch_add(1, Ordering::Relaxed);
        let error = CommandError::Unavailable {
            retry_after_ms: SHED_RETRY_AFTER_MS,
        };
        ServerMessage::new(ServerBody::Error(ErrorBody::from_command(Some(re), &error)))
    }

    /// Load shedding, the SIP way (a 503 for new INVITEs, in-dialog requests
    /// go through): when a new invitation has waited in the inbox longer than
    /// the threshold, or ready tasks wait that long for their turn
    /// (scheduler lag), the server is behind, and taking more calls would
    /// make every call late. Accept, decline, cancel and hang-up are never
    /// shed: they finish calls and free capacity.
    fn shed(&self, command: &Command, read_at: Instant) -> bool {
        matches!(command, Command::Invite(_))
            && self.shed_after.is_some_and(|limit| {
                read_at.elapsed() > limit || self.metrics.scheduler_lag() > limit
            })
    }

    /// Runs until every sender is gone (or, leading a cluster, until
    /// another node appended to the log: this one must not act any more).
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<HubMsg>) {
        self.replayed_notices = Vec::new();
        // One timer, registered once and moved only when the switchboard's
        // next deadline changes (not re-created for every message).
        let timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        // When written journal data must reach the disk (durability `write`).
        let sync_timer = tokio::time::sleep_until(Instant::now());
        tokio::pin!(sync_timer);
        let mut sync_armed: Option<Instant> = None;
        let mut batch = Vec::with_capacity(HUB_BATCH);
        loop {
            let deadline = self.sb.poll_timeout().map(on_process_clock);
            if deadline != armed {
                if let Some(d) = deadline {
                    timer.as_mut().reset(d);
                }
                armed = deadline;
            }
            let sync_due = self
                .store
                .as_ref()
                .and_then(Store::sync_due)
                .map(Instant::from_std);
            if sync_due != sync_armed {
                if let Some(d) = sync_due {
                    sync_timer.as_mut().reset(d);
                }
                sync_armed = sync_due;
            }
            tokio::select! {
                n = rx.recv_many(&mut batch, HUB_BATCH) => {
                    if n == 0 {
                        break;
                    }
                    for msg in batch.drain(..) {
                        // Timers due first, at the same instant as the
                        // message, so their events are timed (the
                        // switchboard would otherwise fire them inside this
                        // message's call, unstamped).
                        let now = now();
                        self.fire_due_timers(now);
                        self.handle(msg, now);
                    }
                }
                () = &mut timer, if armed.is_some() => {
                    self.fire_due_timers(now());
                    armed = None; // re-armed from the next deadline
                }
                () = &mut sync_timer, if sync_armed.is_some() => {
                    self.sync_store();
                    sync_armed = None;
                }
            }
            if self.log.is_some() {
                if let Err(e) = self.commit_to_log().await {
                    tracing::error!(error = %e, "cannot append to the switchboard log: stopping this hub");
                    break;
                }
            } else {
                self.commit_and_release();
            }
            let stats = self.sb.stats();
            self.metrics
                .set_switchboard(stats.invitations, &stats.outcomes);
        }
        tracing::info!("hub stopped");
    }

    fn fire_due_timers(&mut self, now: std::time::Instant) {
        if self.stopping {
            return;
        }
        if let Some(deadline) = self.sb.poll_timeout() {
            if deadline <= now {
                self.sb.handle_timeout(now);
                self.drain(Cause::Timer(on_process_clock(deadline)), None);
            }
        }
    }

    /// Ends a turn: journals its inputs (one write), then releases what it
    /// produced to the connections. Releasing can drop a connection that
    /// does not read, which is one more input: repeated until quiet. Then
    /// starts a snapshot if one is due.
    fn commit_and_release(&mut self) {
        loop {
            self.journal();
            if !self.release_turn() {
                break;
            }
        }
        self.flush_side_effects();
        let Some(store) = &mut self.store else {
            return;
        };
        if store.wants_snapshot() {
            // After a failed write the snapshot is what puts the disk back
            // in step: written before anything else is appended.
            let wait = store.failed();
            let copying = std::time::Instant::now();
            let state = self.sb.snapshot();
            tracing::info!(
                generation = store.generation() + 1,
                copy_ms = u64::try_from(copying.elapsed().as_millis()).unwrap_or(u64::MAX),
                calls = self.sb.calls().count(),
                "snapshot: state copied, writing it in the background"
            );
            self.metrics.snapshots.fetch_add(1, Ordering::Relaxed);
            match store.snapshot(state, wait) {
                Ok(()) if wait => {
                    tracing::info!(data_dir = %store.dir().display(), "the data directory is writable again: new invitations are accepted")
                }
                Ok(()) => {}
                Err(e) => {
                    self.metrics.store_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(error = %e, "cannot write a snapshot");
                }
            }
        }
    }

    /// Answers the turn's backend commands and hands its messages to the
    /// connections; `false` when nothing was held. Releasing can drop a
    /// connection that does not read: one more input, one more turn.
    fn release_turn(&mut self) -> bool {
        for (reply, answer) in self.held_answers.drain(..) {
            let _ = reply.send(answer);
        }
        if self.held.is_empty() {
            return false;
        }
        // Swapped with a kept buffer: no allocation per turn.
        let mut batch = std::mem::take(&mut self.releasing);
        std::mem::swap(&mut self.held, &mut batch);
        for held in batch.drain(..) {
            self.release(held);
        }
        self.releasing = batch;
        true
    }

    /// Webhooks and push, after the journal: an event never leaves before
    /// the inputs that caused it are written.
    fn flush_side_effects(&mut self) {
        if let Some(webhooks) = &mut self.webhooks {
            webhooks.flush();
        }
        if let Some(pushes) = &mut self.pushes {
            pushes.flush();
        }
    }

    /// [`Hub::commit_and_release`] for a cluster's leader: each turn's
    /// entries are appended to the JetStream log (and acknowledged) before
    /// its messages leave. A fenced append means another node leads now:
    /// nothing of the turn is released, and the hub must stop.
    pub(crate) async fn commit_to_log(&mut self) -> Result<(), crate::cluster::ClusterError> {
        loop {
            self.sb.drain_journal(&mut self.entries);
            if !self.entries.is_empty() {
                let log = self.log.as_mut().expect("a cluster hub has a log");
                log.append(&mut self.entries).await?;
            }
            if !self.release_turn() {
                break;
            }
        }
        // After the log: a record is never out before the turn that made it.
        let frame = self.sb.frame();
        while let Some(record) = self.sb.poll_record() {
            self.ended.push(record.map_times(|at| frame.to_unix_ns(at)));
        }
        if !self.ended.is_empty() {
            let log = self.log.as_ref().expect("a cluster hub has a log");
            log.publish_records(std::mem::take(&mut self.ended));
        }
        self.flush_side_effects();
        let log = self.log.as_mut().expect("a cluster hub has a log");
        if log.wants_snapshot() {
            log.snapshot(self.sb.snapshot());
        }
        Ok(())
    }

    /// Writes the journal entries of the turn (or drops them in memory).
    fn journal(&mut self) {
        self.sb.drain_journal(&mut self.entries);
        let Some(store) = &mut self.store else {
            self.entries.clear();
            return;
        };
        if self.entries.is_empty() {
            self.write_records();
            return;
        }
        for entry in self.entries.drain(..) {
            store.add(&entry);
        }
        let entries = store.pending() as u64;
        let before = store.bytes_written();
        match store.commit() {
            Ok(()) => {
                self.metrics
                    .journal_bytes
                    .fetch_add(store.bytes_written() - before, Ordering::Relaxed);
                self.metrics
                    .journal_entries
                    .fetch_add(entries, Ordering::Relaxed);
                self.write_records();
            }
            Err(e) => {
                // Calls in progress go on (their outcomes are kept in
                // memory and reach the disk with the next snapshot); new
                // invitations are refused until then.
                self.metrics.store_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "cannot write the journal: refusing new invitations until the data directory is writable again");
            }
        }
    }

    /// Appends the records of the calls that ended this turn (after the
    /// journal: a record is never on disk before the inputs that made it).
    /// While the journal cannot be written they wait in the switchboard.
    fn write_records(&mut self) {
        let Some(records) = &mut self.records else {
            return;
        };
        let frame = self.sb.frame();
        while let Some(record) = self.sb.poll_record() {
            self.ended.push(record.map_times(|at| frame.to_unix_ns(at)));
        }
        if self.ended.is_empty() {
            return;
        }
        if let Err(e) = records.append(&self.ended) {
            self.metrics.store_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, lost = self.ended.len(), "cannot write call records");
        }
        self.ended.clear();
    }

    fn sync_store(&mut self) {
        if let Some(webhooks) = &mut self.webhooks {
            if let Err(e) = webhooks.sync() {
                self.metrics.store_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "cannot sync the webhook outbox");
            }
        }
        if let Some(records) = &mut self.records {
            if let Err(e) = records.sync() {
                self.metrics.store_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "cannot sync the call records");
            }
        }
        if let Some(store) = &mut self.store {
            if let Err(e) = store.sync() {
                self.metrics.store_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "cannot sync the journal");
            }
        }
    }

    /// Hands one held output to its connection.
    fn release(&mut self, held: Held) {
        let Held { conn, tx, what } = held;
        if let Outbound::Close(reason) = what {
            tx.close(Some(Outbound::Close(reason)));
            return;
        }
        if let Err(e) = tx.push(what) {
            let Some(link) = self.links.remove(&conn) else {
                return;
            };
            if e == PushError::Full {
                // The client does not read. Drop it; its task sees the queue
                // close and shuts the socket.
                tracing::warn!(%conn, user = %link.user, "outbound queue full: dropping the connection");
                self.metrics.too_slow.fetch_add(1, Ordering::Relaxed);
            }
            link.tx.close(None);
            if !self.stopping {
                self.sb.disconnect(now(), conn);
                self.drain(Cause::Other, None);
            }
        }
    }

    /// A new invitation the server cannot keep: the data directory cannot
    /// be written.
    fn store_failed(&self) -> bool {
        self.store.as_ref().is_some_and(Store::failed)
    }

    fn handle(&mut self, msg: HubMsg, now: std::time::Instant) {
        if let HubMsg::Records { query, reply } = msg {
            let page = match &self.records {
                Some(records) => records.list(
                    &query.user,
                    query.from,
                    query.to,
                    query.cursor.as_ref(),
                    query.limit,
                ),
                None => Ok(Page::default()),
            };
            let _ = reply.send(page);
            return;
        }
        let msg = match msg {
            HubMsg::Presence { user, reply } => {
                let _ = reply.send(crate::api::Presence::of(&self.sb, &user));
                return;
            }
            HubMsg::PushDevices { user, reply } => {
                let _ = reply.send(self.sb.push_devices(&user).to_vec());
                return;
            }
            HubMsg::Call { call_id, reply } => {
                let frame = self.sb.frame();
                let state = self
                    .sb
                    .call(&call_id)
                    .map(|view| crate::api::CallState::of(&view, |at| frame.to_unix_ns(at)));
                let _ = reply.send(state);
                return;
            }
            other => other,
        };
        if self.stopping {
            match msg {
                HubMsg::Shutdown { done } => {
                    let _ = done.send(());
                }
                HubMsg::Backend { reply, .. } | HubMsg::Push { reply, .. } => {
                    let _ = reply.send(Err(CommandError::Unavailable {
                        retry_after_ms: SHED_RETRY_AFTER_MS,
                    }));
                }
                _ => {}
            }
            return;
        }
        match msg {
            HubMsg::Open { conn, tx, input } => {
                let SwitchboardInput::Connect { user, device, .. } = &input else {
                    return;
                };
                let user = user.id.clone();
                let online = self.sb.online_devices(&user);
                if !self
                    .limits
                    .device_allowed(online.len(), online.contains(device))
                {
                    // Refused before the switchboard sees it: the user's
                    // other devices are untouched.
                    let max = self.limits.max_devices();
                    tracing::info!(%user, %device, max, "too many devices online: refused");
                    self.metrics.refused(Refusal::Devices);
                    tx.close(Some(Outbound::Close(CloseReason::TooManyDevices)));
                    return;
                }
                self.links.insert(conn, Link { tx, user });
                self.sb.handle_input(now, conn, input);
                self.drain(Cause::Other, None);
            }
            HubMsg::Input {
                conn,
                input: SwitchboardInput::Command { id, command },
                at,
            } => {
                let Some(link) = self.links.get(&conn) else {
                    return;
                };
                if self.shed(&command, at) {
                    let reply = Self::shed_reply(&self.metrics, id);
                    self.push(conn, reply, Stamp::None);
                    return;
                }
                if matches!(command, Command::Invite(_)) && self.store_failed() {
                    self.metrics
                        .invites_refused_store
                        .fetch_add(1, Ordering::Relaxed);
                    let error = CommandError::Unavailable {
                        retry_after_ms: SHED_RETRY_AFTER_MS,
                    };
                    let body = ServerBody::Error(ErrorBody::from_command(Some(id), &error));
                    self.push(conn, ServerMessage::new(body), Stamp::None);
                    return;
                }
                // Every command is paid for, per connection and per user
                // (invites once more); a refused one reaches nothing.
                {
                    let charged = self
                        .limits
                        .charge(&link.user, Some(&command), at.into_std());
                    if let Err(wait) = charged {
                        self.rate_limited(conn, id, wait);
                        return;
                    }
                }
                let cause = match command {
                    Command::Invite(_) => Cause::Invite(at),
                    _ => Cause::Other,
                };
                // What the `command` debug line needs, taken only when that
                // line is on: nothing is cloned on the hot path otherwise.
                let traced = tracing::enabled!(tracing::Level::DEBUG)
                    .then(|| (id.clone(), command.kind(), command.call_id().cloned()));
                let result = self.sb.handle_command(now, conn, id, command);
                if let Some((request, kind, call_id)) = traced {
                    self.log_command(conn, &request, kind, call_id, &result);
                }
                self.drain(cause, Some(conn));
            }
            HubMsg::Input {
                conn,
                input: SwitchboardInput::Disconnect,
                ..
            } => {
                if self.links.remove(&conn).is_some() {
                    self.sb.disconnect(now, conn);
                    self.drain(Cause::Other, None);
                }
            }
            // Answered above, stopping or not.
            HubMsg::Records { .. }
            | HubMsg::Presence { .. }
            | HubMsg::PushDevices { .. }
            | HubMsg::Call { .. } => {}
            HubMsg::Backend {
                user,
                request,
                command,
                reply,
            } => {
                let new_call = matches!(command, Command::Invite(_));
                // The same refusals as a device's invite: the server is
                // behind, or the data directory cannot take it.
                if new_call
                    && (self.store_failed()
                        || self
                            .shed_after
                            .is_some_and(|limit| self.metrics.scheduler_lag() > limit))
                {
                    self.metrics.invites_shed.fetch_add(1, Ordering::Relaxed);
                    let _ = reply.send(Err(CommandError::Unavailable {
                        retry_after_ms: SHED_RETRY_AFTER_MS,
                    }));
                    return;
                }
                let result = self.sb.handle_backend_command(now, user, request, command);
                self.drain(Cause::Other, None);
                self.held_answers.push((reply, result));
            }
            HubMsg::Push {
                user,
                device,
                registration,
                reply,
            } => {
                let result = self
                    .sb
                    .handle_backend_push(now, &user, &device, registration)
                    .map(|()| ReplyResult::Done);
                self.drain(Cause::Other, None);
                self.held_answers.push((reply, result));
            }
            HubMsg::Shutdown { done } if self.store.is_some() => {
                // Nothing ends: every call, log and timer is on disk, and
                // the next run picks them up. Clients reconnect to it.
                self.commit_and_release();
                self.sync_store();
                self.stopping = true;
                // Let go of the directory (and its lock) now: a server
                // started on it next, in this process or another, must not
                // wait for this hub's last connection to go.
                if let Some(mut store) = self.store.take() {
                    if let Err(e) = store.finish() {
                        tracing::error!(error = %e, "the last snapshot failed; the journal has everything");
                    }
                }
                self.records = None;
                let live = self.sb.calls().filter(|c| c.ended().is_none()).count();
                tracing::info!(
                    calls = live,
                    "state saved: live calls resume when the server is back"
                );
                let _ = done.send(());
            }
            HubMsg::Shutdown { done } => {
                let live = self.sb.calls().filter(|c| c.ended().is_none()).count();
                tracing::info!(calls = live, "ending live calls: the server is stopping");
                self.sb.shutdown(now);
                self.drain(Cause::Other, None);
                // Released before `done`: the server tells the connections
                // to close as soon as it hears it, and each must already
                // hold the news of its calls' end to write before `closing`.
                self.commit_and_release();
                let _ = done.send(());
            }
            HubMsg::Input {
                conn,
                input: SwitchboardInput::Sync { id },
                at,
            } => {
                let Some(link) = self.links.get(&conn) else {
                    return;
                };
                // A snapshot costs the switchboard more than most commands.
                if let Err(wait) = self.limits.charge(&link.user, None, at.into_std()) {
                    self.rate_limited(conn, id, wait);
                    return;
                }
                self.sb.handle_sync(now, conn, id);
                self.drain(Cause::Other, Some(conn));
            }
            HubMsg::Input { conn, input, .. } => {
                if self.links.contains_key(&conn) {
                    self.sb.handle_input(now, conn, input);
                    self.drain(Cause::Other, Some(conn));
                }
            }
        }
    }

    /// One message as its own turn: handled, journaled, released.
    #[cfg(test)]
    fn step(&mut self, msg: HubMsg, now: std::time::Instant) {
        self.handle(msg, now);
        self.commit_and_release();
    }

    /// Answers a request the user's budget cannot pay for.
    fn rate_limited(&mut self, conn: ConnId, id: RequestId, wait: Duration) {
        self.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
        let error = CommandError::RateLimited {
            retry_after_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1),
        };
        let body = ServerBody::Error(ErrorBody::from_command(Some(id), &error));
        self.push(conn, ServerMessage::new(body), Stamp::None);
    }

    /// Queues a message for a connection, released with its turn.
    fn push(&mut self, conn: ConnId, message: ServerMessage, stamp: Stamp) {
        let Some(link) = self.links.get(&conn) else {
            return;
        };
        self.held.push(Held {
            conn,
            tx: link.tx.clone(),
            what: Outbound::Message(Box::new(Queued { message, stamp })),
        });
    }

    /// Hands the switchboard's outputs to the connections. The requester's
    /// own messages (its reply, then its events, in that order) go last:
    /// each push wakes a connection task, tasks run in wake order, so the
    /// callee's `incoming_call` is written one socket write sooner.
    fn drain(&mut self, cause: Cause, requester: Option<ConnId>) {
        self.log_notices();
        let mut deferred = std::mem::take(&mut self.deferred);
        while let Some(out) = self.sb.poll_output() {
            match out {
                Output::Send { conn, message } if Some(conn) == requester => {
                    deferred.push(message);
                }
                Output::Send { conn, message } => self.deliver(conn, message, cause),
                Output::Close { conn, reason } => {
                    if Some(conn) == requester {
                        for message in deferred.drain(..) {
                            self.deliver(conn, message, cause);
                        }
                    }
                    if let Some(link) = self.links.remove(&conn) {
                        self.held.push(Held {
                            conn,
                            tx: link.tx,
                            what: Outbound::Close(reason),
                        });
                    }
                }
            }
        }
        if let Some(conn) = requester {
            for message in deferred.drain(..) {
                self.deliver(conn, message, cause);
            }
        }
        self.deferred = deferred;
    }

    /// One line per call milestone at `info`, each with the call id and
    /// the users involved (the caller always; the callee or callees; the
    /// device that acted), so that one call's path can be picked out of
    /// the log by its id and still say who did what.
    fn log_notices(&mut self) {
        while let Some(notice) = self.sb.poll_notice() {
            log_notice(&notice);
            if let Some(webhooks) = &mut self.webhooks {
                webhooks.note(&notice);
            }
        }
        while let Some(push) = self.sb.poll_push() {
            tracing::info!(call_id = %push.call_id, user = %push.user, device = %push.device, kind = if matches!(push.what, PushWhat::Ring { .. }) { "ring" } else { "stop" }, ttl_ms = u64::try_from(push.ttl.as_millis()).unwrap_or(u64::MAX), "push");
            if let Some(pushes) = &mut self.pushes {
                pushes.note(&push);
            }
        }
    }

    /// The `command` line at `debug`: who sent which command about which
    /// call, and how it was answered.
    fn log_command(
        &self,
        conn: ConnId,
        request: &RequestId,
        kind: &'static str,
        call_id: Option<CallId>,
        result: &Result<ReplyResult, CommandError>,
    ) {
        let call_id = call_id.or_else(|| match result {
            Ok(ReplyResult::Invited { call_id, .. } | ReplyResult::Joined { call_id, .. }) => {
                Some(call_id.clone())
            }
            _ => None,
        });
        let Some((user, device)) = self.sb.connection(conn) else {
            return;
        };
        let answer = match result {
            Ok(_) => "ok",
            Err(e) => e.code().as_str(),
        };
        match call_id {
            Some(call_id) => tracing::debug!(
                %call_id, %user, %device, %request, command = kind, answer, "command"
            ),
            None => tracing::debug!(%user, %device, %request, command = kind, answer, "command"),
        }
    }

    fn deliver(&mut self, conn: ConnId, message: ServerMessage, cause: Cause) {
        let stamp = match cause {
            Cause::Timer(deadline) => Stamp::Timer(deadline),
            Cause::Invite(at)
                if matches!(
                    message.body,
                    ServerBody::Event {
                        event: Event::IncomingCall { .. },
                        ..
                    }
                ) =>
            {
                Stamp::Ring(at)
            }
            _ => Stamp::None,
        };
        self.push(conn, message, stamp);
    }
}

/// The log line of one call milestone (see [`Hub::log_notices`]).
fn log_notice(notice: &CallNotice) {
    let names = |users: &[invitation_core::User]| {
        users
            .iter()
            .map(|u| u.id.as_str())
            .collect::<Vec<_>>()
            .join(",")
    };
    match notice {
        CallNotice::Started {
            call_id,
            caller,
            callees,
            device,
        } => tracing::info!(
            %call_id, %caller, %device, callees = %names(callees), "call started"
        ),
        CallNotice::Ringing {
            call_id,
            caller,
            callee,
        } => tracing::info!(%call_id, %caller, %callee, "callee ringing"),
        CallNotice::Outcome {
            call_id,
            callee,
            reason,
            caller,
            device: Some(device),
        } => tracing::info!(%call_id, %caller, %callee, %device, %reason, "callee outcome"),
        CallNotice::Outcome {
            call_id,
            callee,
            reason,
            caller,
            device: None,
        } => tracing::info!(%call_id, %caller, %callee, %reason, "callee outcome"),
        CallNotice::HungUp {
            call_id,
            caller,
            user,
            device,
        } => tracing::info!(%call_id, %caller, %user, %device, "hung up"),
        CallNotice::Ended {
            call_id,
            reason,
            caller,
            callees,
        } => tracing::info!(
            %call_id, %caller, callees = %names(callees), %reason, "call ended"
        ),
        _ => {}
    }
}

/// What made the switchboard produce the outputs being drained.
#[derive(Clone, Copy)]
enum Cause {
    /// An invite read at this instant.
    Invite(Instant),
    /// Timers due at (or after) this deadline.
    Timer(Instant),
    /// Anything else.
    Other,
}

#[cfg(test)]
#[path = "hub_limit_tests.rs"]
mod limit_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use invitation_core::protocol::{InviteRequest, ReplyResult};
    use invitation_core::{CallType, DeviceId, ErrorCode, Reason, User};

    fn invite(id: &str, callee: &str) -> SwitchboardInput {
        SwitchboardInput::Command {
            id: RequestId::new(id).unwrap(),
            command: Command::Invite(InviteRequest::new(
                vec![UserId::new(callee).unwrap()],
                CallType::Voice,
            )),
        }
    }

    fn open(conn: u64, user: &str, tx: Arc<Outbox>) -> HubMsg {
        HubMsg::Open {
            conn: ConnId::new(conn),
            tx,
            input: SwitchboardInput::Connect {
                user: User::named(user, user),
                device: DeviceId::new("d").unwrap(),
                last_seq: None,
                hello: RequestId::new("h").unwrap(),
            },
        }
    }

    fn next_body(rx: &Outbox) -> ServerBody {
        loop {
            match rx.try_pop().expect("a message is queued") {
                Outbound::Message(queued) => {
                    let message = queued.message;
                    if !matches!(
                        message.body,
                        ServerBody::Welcome { .. } | ServerBody::Sync { .. }
                    ) {
                        return message.body;
                    }
                }
                Outbound::Close(r) => panic!("closed: {r:?}"),
            }
        }
    }

    /// A hub (shedding after `shed_after`) with alice connected as link 1;
    /// her queue and the metrics.
    fn hub_with_alice(shed_after: Option<Duration>) -> (Hub, Arc<Outbox>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let mut hub = Hub::new(
            SwitchboardConfig::default(),
            HubLimits::unlimited(),
            shed_after,
            metrics.clone(),
        );
        let queue = Outbox::new(64);
        hub.step(open(1, "alice", queue.clone()), now());
        (hub, queue, metrics)
    }

    /// Alice's command `message`, read off her socket at `at`.
    fn alice_sends(hub: &mut Hub, input: SwitchboardInput, at: Instant) {
        hub.step(
            HubMsg::Input {
                conn: ConnId::new(1),
                input,
                at,
            },
            now(),
        );
    }

    /// An in-memory stop ends every live call and hands the news to the
    /// connections before it says it is done (the server then closes them:
    /// each writes what it holds before its `closing`), within the same
    /// turn, not at the end of the hub's batch.
    #[tokio::test(start_paused = true)]
    async fn an_in_memory_stop_releases_the_endings_before_saying_done() {
        let (mut hub, alice, _) = hub_with_alice(None);
        let bob = Outbox::new(64);
        hub.step(open(2, "bob", bob.clone()), now());
        alice_sends(&mut hub, invite("i1", "bob"), Instant::now());
        while alice.try_pop().is_some() {}
        while bob.try_pop().is_some() {}
        let (done, mut said) = tokio::sync::oneshot::channel();
        // `handle`, as the run loop does, not `step`: no release after it.
        hub.handle(HubMsg::Shutdown { done }, now());
        assert!(said.try_recv().is_ok(), "the hub said it is done");
        let reasons = |q: &Outbox| -> Vec<(String, Reason)> {
            std::iter::from_fn(|| q.try_pop())
                .filter_map(|o| match o {
                    Outbound::Message(m) => match m.message.body {
                        ServerBody::Event { event, .. } => match event {
                            Event::CalleeOutcome { reason, .. } => {
                                Some(("callee_outcome".to_owned(), reason))
                            }
                            Event::CallEnded { reason, .. } => {
                                Some(("call_ended".to_owned(), reason))
                            }
                            Event::IncomingEnded { reason, .. } => {
                                Some(("incoming_ended".to_owned(), reason))
                            }
                            _ => None,
                        },
                        _ => None,
                    },
                    Outbound::Close(_) => None,
                })
                .collect()
        };
        assert_eq!(
            reasons(&alice),
            [
                ("callee_outcome".to_owned(), Reason::ServerShutdown),
                ("call_ended".to_owned(), Reason::ServerShutdown)
            ]
        );
        assert_eq!(
            reasons(&bob),
            [("incoming_ended".to_owned(), Reason::ServerShutdown)]
        );
    }

    /// Load shedding: an invite that waited past the threshold is refused
    /// with `unavailable` + retry_after_ms and creates nothing; a fresh one
    /// goes through; other commands are never shed, however late.
    #[tokio::test(start_paused = true)]
    async fn late_invites_are_shed_other_commands_are_not() {
        let (mut hub, rx, metrics) = hub_with_alice(Some(Duration::from_millis(50)));

        let read_at = Instant::now();
        tokio::time::advance(Duration::from_millis(51)).await;
        alice_sends(&mut hub, invite("i1", "bob"), read_at);
        match next_body(&rx) {
            ServerBody::Error(e) => {
                assert_eq!(e.code, ErrorCode::Unavailable);
                assert_eq!(e.retry_after_ms, Some(SHED_RETRY_AFTER_MS));
                assert_eq!(e.re, Some(RequestId::new("i1").unwrap()));
                assert_eq!(
                    e.to_command_error(),
                    Some(CommandError::Unavailable {
                        retry_after_ms: SHED_RETRY_AFTER_MS
                    })
                );
            }
            other => panic!("expected unavailable, got {other:?}"),
        }
        assert_eq!(metrics.invites_shed.load(Ordering::Relaxed), 1);
        assert_eq!(
            hub.sb.stats().invitations,
            0,
            "a shed invite creates nothing"
        );

        // The same request id, sent again in time, is a new invitation.
        alice_sends(&mut hub, invite("i1", "bob"), Instant::now());
        let call_id = match next_body(&rx).success() {
            Some((re, ReplyResult::Invited { call_id, .. })) if re.as_str() == "i1" => call_id,
            other => panic!("expected invited, got {other:?}"),
        };

        // A cancel that waited a long time still goes through.
        while rx.try_pop().is_some() {}
        let read_at = Instant::now();
        tokio::time::advance(Duration::from_secs(1)).await;
        alice_sends(
            &mut hub,
            SwitchboardInput::Command {
                id: RequestId::new("c1").unwrap(),
                command: Command::Cancel {
                    call_id,
                    custom_data: None,
                },
            },
            read_at,
        );
        match next_body(&rx).success() {
            Some((re, _)) => assert_eq!(re.as_str(), "c1"),
            other => panic!("expected the cancel's answer, got {other:?}"),
        }
        assert_eq!(metrics.invites_shed.load(Ordering::Relaxed), 1);
    }

    /// The callee's `incoming_call` is queued (and its task woken) before
    /// the caller's reply, so it is written first.
    #[tokio::test]
    async fn the_callee_is_woken_before_the_requester() {
        let (mut hub, alice, _) = hub_with_alice(None);
        let bob = Outbox::new(64);
        hub.step(open(2, "bob", bob.clone()), now());
        while alice.try_pop().is_some() {}
        while bob.try_pop().is_some() {}
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut waiters = Vec::new();
        for (name, queue) in [("alice", alice.clone()), ("bob", bob.clone())] {
            let order = order.clone();
            waiters.push(tokio::spawn(async move {
                let first = queue.recv().await;
                order.lock().unwrap().push(name);
                first
            }));
        }
        tokio::task::yield_now().await; // both wait now
        alice_sends(&mut hub, invite("i1", "bob"), Instant::now());
        let mut firsts = Vec::new();
        for w in waiters {
            firsts.push(w.await.unwrap());
        }
        assert_eq!(*order.lock().unwrap(), ["bob", "alice"]);
        // Alice's own order is kept: the event answering her invite first.
        match &firsts[0] {
            Some(Outbound::Message(q)) => assert!(
                matches!(q.message.body.success(), Some((re, ReplyResult::Invited { .. })) if re.as_str() == "i1"),
                "{:?}",
                q.message.body
            ),
            other => panic!("expected alice's answer first, got {other:?}"),
        }
    }

    /// A lagging scheduler sheds fresh invites too (the backlog is in the
    /// sockets and the run queue, not in the hub's inbox).
    #[tokio::test(start_paused = true)]
    async fn scheduler_lag_sheds_fresh_invites() {
        let (mut hub, rx, metrics) = hub_with_alice(Some(Duration::from_millis(50)));
        metrics.scheduler_lag_us.store(60_000, Ordering::Relaxed);
        alice_sends(&mut hub, invite("i1", "bob"), Instant::now());
        match next_body(&rx) {
            ServerBody::Error(e) => assert_eq!(e.code, ErrorCode::Unavailable),
            other => panic!("expected unavailable, got {other:?}"),
        }
        metrics.scheduler_lag_us.store(1_000, Ordering::Relaxed);
        alice_sends(&mut hub, invite("i2", "bob"), Instant::now());
        assert!(matches!(
            next_body(&rx).success(),
            Some((_, ReplyResult::Invited { .. }))
        ));
    }

    /// Timer-caused messages carry the deadline, so the connection task can
    /// measure how late the timeout reached the wire.
    #[tokio::test(start_paused = true)]
    async fn timeout_events_are_stamped_with_their_deadline() {
        let (mut hub, rx, _) = hub_with_alice(None);
        alice_sends(&mut hub, invite("i1", "bob"), Instant::now());
        while rx.try_pop().is_some() {}
        let deadline = on_process_clock(hub.sb.poll_timeout().expect("ring timer"));
        tokio::time::advance(Duration::from_secs(61)).await;
        // Any message finds the due timers fired first, stamped.
        hub.fire_due_timers(now());
        hub.commit_and_release();
        let mut stamped = 0;
        while let Some(Outbound::Message(queued)) = rx.try_pop() {
            match queued.stamp {
                Stamp::Timer(at) => {
                    assert_eq!(at, deadline);
                    stamped += 1;
                }
                other => panic!("unstamped timeout event: {other:?}"),
            }
        }
        assert!(stamped >= 1, "the caller hears of the timeout");
    }

    /// A full disk: the journal write fails; new invitations are refused
    /// with `unavailable` while the call in progress is answered and ends;
    /// once the disk takes writes again a snapshot catches it up and
    /// invitations are accepted again. Nothing is lost across a reopen.
    #[tokio::test]
    async fn a_full_disk_refuses_new_invitations_while_calls_finish() {
        let tmp = crate::store::tests::TempDir::new("hub-full");
        let options = StoreOptions {
            dir: tmp.0.clone(),
            durability: crate::store::Durability::Write,
            fsync_interval: Duration::from_secs(1),
            snapshot_after_bytes: 64 << 20,
        };
        let metrics = Arc::new(Metrics::default());
        let mut hub = Hub::recover(
            SwitchboardConfig::default(),
            HubLimits::unlimited(),
            None,
            metrics.clone(),
            options.clone(),
            Duration::from_secs(86_400),
        )
        .expect("opens");
        let alice = Outbox::new(64);
        hub.step(open(1, "alice", alice.clone()), now());
        let bob = Outbox::new(64);
        hub.step(open(2, "bob", bob.clone()), now());
        alice_sends(&mut hub, invite("i1", "bob"), Instant::now());
        let call_id = match next_body(&alice).success() {
            Some((_, ReplyResult::Invited { call_id, .. })) => call_id,
            other => panic!("expected invited, got {other:?}"),
        };
        while alice.try_pop().is_some() {}
        while bob.try_pop().is_some() {}

        let fault = hub.store.as_ref().unwrap().fail_writes();
        fault.store(true, Ordering::Relaxed);
        // Bob accepts: the write fails, the call goes on anyway.
        hub.step(
            HubMsg::Input {
                conn: ConnId::new(2),
                input: SwitchboardInput::Command {
                    id: RequestId::new("a1").unwrap(),
                    command: Command::accept(call_id.clone()),
                },
                at: Instant::now(),
            },
            now(),
        );
        assert!(matches!(
            next_body(&bob),
            ServerBody::Event {
                event: Event::IncomingEnded { .. },
                ..
            }
        ));
        assert!(matches!(
            next_body(&alice),
            ServerBody::Event {
                event: Event::CalleeOutcome { .. },
                ..
            }
        ));
        assert!(hub.store_failed());
        assert!(metrics.store_failures.load(Ordering::Relaxed) >= 1);
        // A new invitation is refused, and creates nothing.
        let before = hub.sb.stats().invitations;
        alice_sends(&mut hub, invite("i2", "carol"), Instant::now());
        match next_body(&alice) {
            ServerBody::Error(e) => {
                assert_eq!(e.code, ErrorCode::Unavailable);
                assert_eq!(e.re, Some(RequestId::new("i2").unwrap()));
            }
            other => panic!("expected unavailable, got {other:?}"),
        }
        assert_eq!(hub.sb.stats().invitations, before);
        assert_eq!(metrics.invites_refused_store.load(Ordering::Relaxed), 1);
        // The call in progress ends normally.
        alice_sends(
            &mut hub,
            SwitchboardInput::Command {
                id: RequestId::new("h1").unwrap(),
                command: Command::hang_up(call_id.clone()),
            },
            Instant::now(),
        );
        assert!(matches!(
            next_body(&alice),
            ServerBody::Event {
                event: Event::CallEnded { .. },
                ..
            }
        ));

        // Room again: the next snapshot catches the disk up.
        fault.store(false, Ordering::Relaxed);
        hub.store.as_mut().unwrap().retry_now();
        hub.commit_and_release();
        assert!(!hub.store_failed());
        alice_sends(&mut hub, invite("i3", "carol"), Instant::now());
        assert!(matches!(
            next_body(&alice).success(),
            Some((_, ReplyResult::Invited { .. }))
        ));
        drop(hub);

        // What happened while the disk was full is on disk now.
        let reopened = Hub::recover(
            SwitchboardConfig::default(),
            HubLimits::unlimited(),
            None,
            Arc::new(Metrics::default()),
            options,
            Duration::from_secs(86_400),
        )
        .expect("reopens");
        let ended: Vec<_> = reopened
            .sb
            .calls()
            .filter(|c| c.ended().is_some())
            .map(|c| c.call_id().clone())
            .collect();
        assert_eq!(ended, [call_id], "the call that ended during the failure");
        assert_eq!(
            reopened.sb.calls().filter(|c| c.ended().is_none()).count(),
            1,
            "carol's invitation rings"
        );
    }
}
