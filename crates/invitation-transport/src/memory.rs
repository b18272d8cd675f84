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

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use invitation_core::protocol::{ClientMessage, ServerMessage};
use invitation_core::{
    AuthRefusal, Authenticator, CallIdGenerator, CloseCause, ConnId, ConnectionConfig,
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
}

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
        Self::spawn(config, ids, None)
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
        Self::spawn(config, ids, Some(auth))
    }

    fn spawn(
        config: SwitchboardConfig,
        ids: impl CallIdGenerator + 'static,
        auth: Option<SharedAuthenticator>,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut link_config = ConnectionConfig::default();
        link_config.ping_every = None;
        // The outbound queue bounds what a client can make the hub hold.
        link_config.max_in_flight = OUTBOUND_QUEUE;
        let closes = Arc::new(Mutex::new(HashMap::new()));
        let hub = HubTask {
            sb: Switchboard::new(config, ids),
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
        self.hub
            .tx
            .send(HubMsg::Open {
                link,
                user: self.user.clone(),
                tx,
            })
            .map_err(|_| TransportError::closed("the hub stopped"))?;
        Ok(Box::new(MemoryConnection {
            hub: self.hub.tx.clone(),
            link,
            rx,
            closed: false,
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
}

struct HubTask {
    sb: Switchboard,
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
            HubMsg::Open { link, user, tx } => {
                let machine = DeviceConnection::new(now(), self.link_config.clone());
                self.links.insert(link, Link { user, tx, machine });
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
            HubMsg::Inspect(f) => f(&self.sb),
        }
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
