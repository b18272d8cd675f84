//! The in-process hub: the core `Switchboard` in a tokio task, with any
//! number of clients connected through channels. What tests, examples and
//! single-process apps use. Each link runs the core's connection machine
//! (`DeviceConnection`) exactly as the server does, so `hello`, `renew`,
//! `ping`, `sync`, answers and close reasons behave the same; the identity
//! is the `User` the transport was made for (no tokens).
//!
//! What it does not do, unlike the server: no rate limits, no load
//! shedding, no heartbeats (an in-process link cannot die silently), no
//! per-IP or per-user connection caps, and by default no tokens (so no
//! token expiry and no `hello` timeout). A link whose client does not read
//! [`OUTBOUND_QUEUE`] messages is dropped as too slow.
//!
//! [`MemoryHub::with_authenticator`] makes it check tokens as the server
//! does: the identity comes from the client's token, a token's
//! `valid_for` makes the link expire unless renewed in band, and a link
//! without a valid `hello` within the hello timeout is closed. Simulations
//! use it to race renewals against expiry.
//!
//! [`MemoryHub::with_restarts`] makes it keep what a durable server keeps
//! (a snapshot of the switchboard and the journal of its inputs since, as
//! JSON) and lets a test crash it: [`MemoryHub::restart`] replaces the
//! switchboard with one recovered from them and drops every link, as a
//! server that restarts does; clients reconnect and resume.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use invitation_core::durable::{
    Durable, JournalEntry, RecoverError, Recovered, SwitchboardSnapshot, TimeFrame,
};
use invitation_core::protocol::{ClientMessage, ServerMessage};
use invitation_core::{
    AuthRefusal, Authenticator, CallId, CallIdGenerator, CloseCause, ConnId, ConnectionConfig,
    ConnectionOutput, DeviceConnection, DeviceId, Identity, Output, SequentialCallIds, Switchboard,
    SwitchboardConfig, User, UserId,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::{BoxConnection, Connection, Transport, TransportError};

/// Messages queued per connection before the hub drops it as too slow.
pub const OUTBOUND_QUEUE: usize = 1024;

type Inspect = Box<dyn FnOnce(&Switchboard) + Send>;

enum HubMsg {
    Open {
        link: ConnId,
        user: User,
        tx: mpsc::Sender<ServerMessage>,
        crashed: Arc<AtomicBool>,
    },
    Message {
        link: ConnId,
        message: ClientMessage,
    },
    Close {
        link: ConnId,
    },
    Kick {
        user: UserId,
        device: DeviceId,
    },
    Inspect(Inspect),
    Snapshot(oneshot::Sender<usize>),
    Restart(oneshot::Sender<Result<Recovered, RestartError>>),
}

/// Why [`MemoryHub::restart`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RestartError {
    /// The hub was not made with [`MemoryHub::with_restarts`].
    #[error("this hub keeps no journal")]
    NotDurable,
    /// The kept snapshot or journal did not read back.
    #[error("the kept state does not read back: {0}")]
    Unreadable(String),
    /// Recovery refused the kept state.
    #[error(transparent)]
    Recover(#[from] RecoverError),
}

/// One call-id generator shared by every switchboard a hub runs, so ids
/// never repeat across restarts (as random ids would not).
#[derive(Clone)]
struct SharedIds(Arc<Mutex<Box<dyn CallIdGenerator>>>);

impl CallIdGenerator for SharedIds {
    fn next_call_id(&mut self) -> CallId {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_call_id()
    }
}

/// What a durable server would have on disk: the newest snapshot and the
/// journal after it, as JSON.
struct Store {
    config: SwitchboardConfig,
    ids: SharedIds,
    snapshot: Option<String>,
    journal: Vec<String>,
    scratch: Vec<JournalEntry>,
}

/// The unix time the hub's clock starts at (any fixed moment will do).
const UNIX_START_NS: i64 = 1_767_225_600_000_000_000;

/// Verifies tokens for a hub made with [`MemoryHub::with_authenticator`].
pub type SharedAuthenticator = Arc<dyn Authenticator + Send + Sync>;

/// A handle to a running hub. Cloning it is cheap; the hub stops when every
/// handle, transport and connection is gone.
#[derive(Clone, Debug)]
pub struct MemoryHub {
    tx: mpsc::UnboundedSender<HubMsg>,
    next_link: Arc<AtomicU64>,
    closes: Arc<Mutex<HashMap<CloseCause, u64>>>,
}

impl MemoryHub {
    /// A hub with the default switchboard settings. Must be called inside a
    /// tokio runtime (it spawns the hub task).
    pub fn new() -> Self {
        Self::with_config(SwitchboardConfig::default(), SequentialCallIds::default())
    }

    /// A hub with these settings and call-id generator.
    pub fn with_config(config: SwitchboardConfig, ids: impl CallIdGenerator + 'static) -> Self {
        Self::spawn(config, ids, None, false)
    }

    /// A hub that checks tokens as the server does: every `hello` and
    /// `renew` goes through `auth`, the identity is the token's (not the
    /// transport's user), a token valid for a limited time closes the link
    /// (`token_expired`) unless renewed in time, and a link with no valid
    /// `hello` within [`ConnectionConfig::hello_timeout`] is closed.
    pub fn with_authenticator(
        config: SwitchboardConfig,
        ids: impl CallIdGenerator + 'static,
        auth: SharedAuthenticator,
    ) -> Self {
        Self::spawn(config, ids, Some(auth), false)
    }

    /// A hub that keeps what a durable server keeps, so that
    /// [`MemoryHub::restart`] can crash and recover it (snapshots with
    /// [`MemoryHub::snapshot`]); tokens are checked as with
    /// [`MemoryHub::with_authenticator`] when `auth` is given.
    pub fn with_restarts(
        config: SwitchboardConfig,
        ids: impl CallIdGenerator + 'static,
        auth: Option<SharedAuthenticator>,
    ) -> Self {
        Self::spawn(config, ids, auth, true)
    }

    fn spawn(
        config: SwitchboardConfig,
        ids: impl CallIdGenerator + 'static,
        auth: Option<SharedAuthenticator>,
        durable: bool,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut link_config = ConnectionConfig::default();
        link_config.ping_every = None;
        // The outbound queue bounds what a client can make the hub hold.
        link_config.max_in_flight = OUTBOUND_QUEUE;
        let closes = Arc::new(Mutex::new(HashMap::new()));
        let ids = SharedIds(Arc::new(Mutex::new(Box::new(ids))));
        let frame = TimeFrame::new(now(), UNIX_START_NS);
        let mut sb = Durable::new(config.clone(), ids.clone(), frame);
        sb.set_journaling(durable);
        let store = durable.then(|| Store {
            config,
            ids,
            snapshot: None,
            journal: Vec::new(),
            scratch: Vec::new(),
        });
        let hub = HubTask {
            sb,
            store,
            links: HashMap::new(),
            link_config: Arc::new(link_config),
            auth,
            closes: closes.clone(),
        };
        tokio::spawn(hub.run(rx));
        Self {
            tx,
            next_link: Arc::new(AtomicU64::new(1)),
            closes,
        }
    }

    /// How many links the hub closed for `cause` so far (for tests and
    /// simulations: did a fault really happen).
    pub fn closes(&self, cause: CloseCause) -> u64 {
        self.closes
            .lock()
            .expect("hub counters")
            .get(&cause)
            .copied()
            .unwrap_or(0)
    }

    /// A transport whose connections act as `user` (the in-process app
    /// vouches for the identity, as a token would).
    pub fn transport(&self, user: User) -> MemoryTransport {
        MemoryTransport {
            hub: self.clone(),
            user,
        }
    }

    /// Drops the connection of a device as if its network died (the hub
    /// notices at once). For tests of offline callees and vanished callers.
    pub fn kick(&self, user: &UserId, device: &DeviceId) {
        let _ = self.tx.send(HubMsg::Kick {
            user: user.clone(),
            device: device.clone(),
        });
    }

    /// Keeps a snapshot of the switchboard now (the journal before it is
    /// dropped, as a server does). Returns the snapshot's size in bytes;
    /// `None` if the hub stopped or keeps no journal.
    pub async fn snapshot(&self) -> Option<usize> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(HubMsg::Snapshot(tx)).ok()?;
        rx.await.ok()
    }

    /// Crashes the hub and starts it again: the switchboard is replaced by
    /// one recovered from the last snapshot and the journal since (read
    /// back from JSON), and every link is dropped at once (its client sees
    /// the connection close, reconnects and resumes). Messages in flight
    /// to the old links are lost, as with a real crash. Only for a hub made
    /// with [`MemoryHub::with_restarts`].
    pub async fn restart(&self) -> Result<Recovered, RestartError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(HubMsg::Restart(tx))
            .map_err(|_| RestartError::Unreadable("the hub stopped".into()))?;
        rx.await
            .map_err(|_| RestartError::Unreadable("the hub stopped".into()))?
    }

    /// Runs `f` on the switchboard inside the hub task and returns its result
    /// (for tests and diagnostics). `None` if the hub stopped.
    pub async fn inspect<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Switchboard) -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = oneshot::channel();
        let job: Inspect = Box::new(move |sb| {
            let _ = tx.send(f(sb));
        });
        self.tx.send(HubMsg::Inspect(job)).ok()?;
        rx.await.ok()
    }
}

impl Default for MemoryHub {
    fn default() -> Self {
        Self::new()
    }
}

/// Opens connections to a [`MemoryHub`] as one user.
#[derive(Clone, Debug)]
pub struct MemoryTransport {
    hub: MemoryHub,
    user: User,
}

#[async_trait]
impl Transport for MemoryTransport {
    async fn connect(&self) -> Result<BoxConnection, TransportError> {
        let link = ConnId::new(self.hub.next_link.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let crashed = Arc::new(AtomicBool::new(false));
        self.hub
            .tx
            .send(HubMsg::Open {
                link,
                user: self.user.clone(),
                tx,
                crashed: crashed.clone(),
            })
            .map_err(|_| TransportError::closed("the hub stopped"))?;
        Ok(Box::new(MemoryConnection {
            hub: self.hub.tx.clone(),
            link,
            rx,
            closed: false,
            crashed,
        }))
    }
}

/// One connection to a [`MemoryHub`].
#[derive(Debug)]
pub struct MemoryConnection {
    hub: mpsc::UnboundedSender<HubMsg>,
    link: ConnId,
    rx: mpsc::Receiver<ServerMessage>,
    closed: bool,
    /// The hub crashed ([`MemoryHub::restart`]): what it had queued for
    /// this link is lost with it.
    crashed: Arc<AtomicBool>,
}

#[async_trait]
impl Connection for MemoryConnection {
    async fn send(&mut self, message: ClientMessage) -> Result<(), TransportError> {
        if self.closed || self.rx.is_closed() {
            return Err(TransportError::closed("connection closed"));
        }
        self.hub
            .send(HubMsg::Message {
                link: self.link,
                message,
            })
            .map_err(|_| TransportError::closed("the hub stopped"))
    }

    async fn recv(&mut self) -> Result<ServerMessage, TransportError> {
        // mpsc::Receiver::recv is cancel-safe.
        match self.rx.recv().await {
            Some(_) | None if self.crashed.load(Ordering::Relaxed) => {
                Err(TransportError::closed("the hub crashed"))
            }
            Some(m) => Ok(m),
            None => Err(TransportError::closed("connection closed by the hub")),
        }
    }

    async fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            let _ = self.hub.send(HubMsg::Close { link: self.link });
            self.rx.close();
        }
    }
}

impl Drop for MemoryConnection {
    fn drop(&mut self) {
        if !self.closed {
            let _ = self.hub.send(HubMsg::Close { link: self.link });
        }
    }
}

/// The memory transport vouches for its user, as a token would.
struct Vouch<'a>(&'a User);

impl Authenticator for Vouch<'_> {
    fn authenticate(&self, _token: Option<&str>) -> Result<Identity, AuthRefusal> {
        Ok(Identity::new(self.0.clone(), None))
    }
}

struct Link {
    user: User,
    tx: mpsc::Sender<ServerMessage>,
    machine: DeviceConnection,
    crashed: Arc<AtomicBool>,
}

struct HubTask {
    sb: Durable,
    /// With restarts: what a durable server keeps.
    store: Option<Store>,
    links: HashMap<ConnId, Link>,
    link_config: Arc<ConnectionConfig>,
    /// Tokens are checked (and links have timers) only with one.
    auth: Option<SharedAuthenticator>,
    closes: Arc<Mutex<HashMap<CloseCause, u64>>>,
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

impl HubTask {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<HubMsg>) {
        loop {
            let deadline = [self.sb.poll_timeout(), self.link_deadline()]
                .into_iter()
                .flatten()
                .min()
                .map(Instant::from_std);
            tokio::select! {
                biased;
                msg = rx.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    None => break,
                },
                () = sleep_until(deadline), if deadline.is_some() => {
                    let now = now();
                    self.sb.handle_timeout(now);
                    self.link_timeouts(now);
                }
            }
            self.drain();
            self.keep_journal();
        }
        tracing::debug!("memory hub stopped");
    }

    /// The next link deadline (hello timeout, token expiry); links have
    /// timers only when tokens are checked.
    fn link_deadline(&self) -> Option<std::time::Instant> {
        self.auth.as_ref()?;
        self.links
            .values()
            .filter_map(|l| l.machine.poll_timeout())
            .min()
    }

    /// Fires the link timers due at `now`, in link order (replayable).
    fn link_timeouts(&mut self, now: std::time::Instant) {
        if self.auth.is_none() {
            return;
        }
        let mut due: Vec<ConnId> = self
            .links
            .iter()
            .filter(|(_, l)| l.machine.poll_timeout().is_some_and(|t| t <= now))
            .map(|(c, _)| *c)
            .collect();
        due.sort();
        for link in due {
            if let Some(l) = self.links.get_mut(&link) {
                l.machine.handle_timeout(now);
            }
            self.run_link(link);
        }
    }

    fn count_close(&self, cause: CloseCause) {
        *self
            .closes
            .lock()
            .expect("hub counters")
            .entry(cause)
            .or_default() += 1;
    }

    fn handle(&mut self, msg: HubMsg) {
        match msg {
            HubMsg::Open {
                link,
                user,
                tx,
                crashed,
            } => {
                let machine = DeviceConnection::new(now(), self.link_config.clone());
                let l = Link {
                    user,
                    tx,
                    machine,
                    crashed,
                };
                self.links.insert(link, l);
            }
            HubMsg::Message { link, message } => {
                if let Some(l) = self.links.get_mut(&link) {
                    match &self.auth {
                        Some(auth) => l.machine.handle_message(now(), message, auth),
                        None => l.machine.handle_message(now(), message, &Vouch(&l.user)),
                    }
                    self.run_link(link);
                }
            }
            HubMsg::Close { link } => {
                if let Some(l) = self.links.get_mut(&link) {
                    l.machine.handle_transport_closed();
                    self.run_link(link);
                }
            }
            HubMsg::Kick { user, device } => {
                let found = self.links.keys().copied().find(|conn| {
                    self.sb
                        .connection(*conn)
                        .is_some_and(|(u, d)| *u == user && *d == device)
                });
                if let Some(link) = found {
                    if let Some(l) = self.links.get_mut(&link) {
                        l.machine.handle_transport_closed();
                    }
                    self.run_link(link);
                }
            }
            HubMsg::Inspect(f) => f(self.sb.switchboard()),
            HubMsg::Snapshot(tx) => {
                self.keep_journal();
                if let Some(store) = &mut self.store {
                    let json = serde_json::to_string(&self.sb.snapshot())
                        .expect("snapshots always serialize");
                    let _ = tx.send(json.len());
                    store.snapshot = Some(json);
                    store.journal.clear();
                }
            }
            HubMsg::Restart(tx) => {
                let _ = tx.send(self.restart());
            }
        }
    }

    /// Appends what the switchboard journaled to the kept journal.
    fn keep_journal(&mut self) {
        let Some(store) = &mut self.store else {
            return;
        };
        self.sb.drain_journal(&mut store.scratch);
        for entry in store.scratch.drain(..) {
            let line = serde_json::to_string(&entry).expect("entries always serialize");
            store.journal.push(line);
        }
    }

    fn restart(&mut self) -> Result<Recovered, RestartError> {
        self.keep_journal();
        let Some(store) = &mut self.store else {
            return Err(RestartError::NotDurable);
        };
        let unreadable = |e: serde_json::Error| RestartError::Unreadable(e.to_string());
        let snapshot: Option<SwitchboardSnapshot> = match &store.snapshot {
            Some(json) => Some(serde_json::from_str(json).map_err(unreadable)?),
            None => None,
        };
        let entries = store
            .journal
            .iter()
            .map(|line| serde_json::from_str::<JournalEntry>(line))
            .collect::<Result<Vec<_>, _>>()
            .map_err(unreadable)?;
        let (sb, recovered) = Durable::recover(
            store.config.clone(),
            store.ids.clone(),
            self.sb.frame(),
            snapshot,
            entries,
            now(),
        )?;
        self.sb = sb;
        // Every link dies with the process, with what was queued for it:
        // dropping its sender closes the client's receiving end.
        for l in self.links.values() {
            l.crashed.store(true, Ordering::Relaxed);
        }
        self.links.clear();
        self.keep_journal();
        tracing::debug!(?recovered, "memory hub restarted");
        Ok(recovered)
    }

    /// Carries out what a link's connection machine asks for.
    fn run_link(&mut self, link: ConnId) {
        loop {
            let Some(l) = self.links.get_mut(&link) else {
                return;
            };
            let Some(out) = l.machine.poll_output() else {
                return;
            };
            match out {
                ConnectionOutput::Send(message) => self.send(link, message),
                ConnectionOutput::Switchboard(input) => self.sb.handle_input(now(), link, input),
                ConnectionOutput::Close(cause) => {
                    // The client sees its receiver end once the queue drains.
                    self.count_close(cause);
                    self.links.remove(&link);
                }
                _ => {}
            }
        }
    }

    /// Queues a message for a link; a link that does not read is dropped as
    /// too slow, one whose client let go is gone.
    fn send(&mut self, link: ConnId, message: ServerMessage) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        l.machine.handle_sent(&message);
        match l.tx.try_send(message) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::warn!(%link, "client does not read: dropping its connection");
                l.machine.close(CloseCause::TooSlow);
            }
            // The client let go of its end; its `Close` is on the way.
            Err(mpsc::error::TrySendError::Closed(_)) => l.machine.handle_transport_closed(),
        }
        // A `closing` message cannot be queued either: drop it.
        while let Some(out) = l.machine.poll_output() {
            match out {
                ConnectionOutput::Switchboard(input) => self.sb.handle_input(now(), link, input),
                ConnectionOutput::Close(cause) => {
                    self.count_close(cause);
                    self.links.remove(&link);
                    return;
                }
                _ => {}
            }
        }
    }

    fn drain(&mut self) {
        while let Some(out) = self.sb.poll_output() {
            match out {
                Output::Send { conn, message } => self.send(conn, message),
                Output::Close { conn, reason } => {
                    if let Some(l) = self.links.get_mut(&conn) {
                        l.machine.close(CloseCause::from_reason(reason));
                        self.run_link(conn);
                    }
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
