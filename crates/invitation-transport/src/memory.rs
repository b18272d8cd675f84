//! The in-process hub: the core `Switchboard` in a tokio task, with any
//! number of clients connected through channels. What tests, examples and
//! single-process apps use; it behaves exactly like the server minus
//! sockets and tokens (the identity is the `User` the transport was made
//! for).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use invitation_core::protocol::{
    ClientMessage, CloseReason, Command, ErrorBody, ReplyResult, ServerBody, ServerMessage,
};
use invitation_core::{
    CallIdGenerator, CommandError, ConnId, DeviceId, Output, SequentialCallIds, Switchboard,
    SwitchboardConfig, User, UserId,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::{BoxConnection, Connection, Transport, TransportError};

/// Messages queued per connection before the hub drops it as too slow.
pub const OUTBOUND_QUEUE: usize = 1024;

type LinkId = u64;
type Inspect = Box<dyn FnOnce(&Switchboard) + Send>;

enum HubMsg {
    Open {
        link: LinkId,
        user: User,
        tx: mpsc::Sender<ServerMessage>,
    },
    Message {
        link: LinkId,
        message: ClientMessage,
    },
    Close {
        link: LinkId,
    },
    Kick {
        user: UserId,
        device: DeviceId,
    },
    Inspect(Inspect),
}

/// A handle to a running hub. Cloning it is cheap; the hub stops when every
/// handle, transport and connection is gone.
#[derive(Clone, Debug)]
pub struct MemoryHub {
    tx: mpsc::UnboundedSender<HubMsg>,
    next_link: Arc<AtomicU64>,
}

impl MemoryHub {
    /// A hub with the default switchboard settings. Must be called inside a
    /// tokio runtime (it spawns the hub task).
    pub fn new() -> Self {
        Self::with_config(SwitchboardConfig::default(), SequentialCallIds::default())
    }

    /// A hub with these settings and call-id generator.
    pub fn with_config(config: SwitchboardConfig, ids: impl CallIdGenerator + 'static) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let hub = HubTask {
            sb: Switchboard::new(config, ids),
            links: HashMap::new(),
            by_conn: HashMap::new(),
        };
        tokio::spawn(hub.run(rx));
        Self {
            tx,
            next_link: Arc::new(AtomicU64::new(1)),
        }
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
        let link = self.hub.next_link.fetch_add(1, Ordering::Relaxed);
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
    link: LinkId,
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

struct Link {
    user: User,
    tx: mpsc::Sender<ServerMessage>,
    conn: Option<ConnId>,
}

struct HubTask {
    sb: Switchboard,
    links: HashMap<LinkId, Link>,
    by_conn: HashMap<ConnId, LinkId>,
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

impl HubTask {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<HubMsg>) {
        loop {
            let deadline = self.sb.poll_timeout().map(Instant::from_std);
            tokio::select! {
                biased;
                msg = rx.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    None => break,
                },
                () = sleep_until(deadline), if deadline.is_some() => {
                    self.sb.handle_timeout(now());
                }
            }
            self.drain();
        }
        tracing::debug!("memory hub stopped");
    }

    fn handle(&mut self, msg: HubMsg) {
        match msg {
            HubMsg::Open { link, user, tx } => {
                self.links.insert(
                    link,
                    Link {
                        user,
                        tx,
                        conn: None,
                    },
                );
            }
            HubMsg::Message { link, message } => self.message(link, message),
            HubMsg::Close { link } => self.close_link(link),
            HubMsg::Kick { user, device } => {
                let found = self.links.iter().find_map(|(id, l)| {
                    let (u, d) = self.sb.connection(l.conn?)?;
                    (*u == user && *d == device).then_some(*id)
                });
                if let Some(link) = found {
                    self.close_link(link);
                }
            }
            HubMsg::Inspect(f) => f(&self.sb),
        }
    }

    fn message(&mut self, link_id: LinkId, message: ClientMessage) {
        let Some(link) = self.links.get_mut(&link_id) else {
            return;
        };
        let reply_now = |link: &Link, body: ServerBody| {
            let _ = link.tx.try_send(ServerMessage::new(body));
        };
        match (&message.command, link.conn) {
            (
                Command::Hello {
                    device, last_seq, ..
                },
                None,
            ) => {
                let conn = self
                    .sb
                    .connect(now(), link.user.clone(), device.clone(), *last_seq);
                link.conn = Some(conn);
                self.by_conn.insert(conn, link_id);
            }
            (Command::Renew { .. }, Some(_)) => reply_now(
                link,
                ServerBody::Reply {
                    re: message.id,
                    result: ReplyResult::Done,
                },
            ),
            (_, Some(conn)) => {
                let _ = self.sb.handle_command(now(), conn, message);
            }
            (_, None) => reply_now(
                link,
                ServerBody::Error(ErrorBody::from_command(
                    Some(message.id),
                    &CommandError::NotConnected,
                )),
            ),
        }
    }

    fn close_link(&mut self, link_id: LinkId) {
        if let Some(link) = self.links.remove(&link_id) {
            if let Some(conn) = link.conn {
                self.by_conn.remove(&conn);
                self.sb.disconnect(now(), conn);
            }
        }
    }

    fn drain(&mut self) {
        while let Some(out) = self.sb.poll_output() {
            match out {
                Output::Send { conn, message } => {
                    let Some(link_id) = self.by_conn.get(&conn).copied() else {
                        continue;
                    };
                    let link = &self.links[&link_id];
                    if link.tx.try_send(message).is_err() {
                        tracing::warn!(%conn, "client does not read: dropping its connection");
                        let _ = link.tx.try_send(ServerMessage::new(ServerBody::Closing {
                            reason: CloseReason::TooSlow,
                        }));
                        self.close_link(link_id);
                    }
                }
                Output::Close { conn, reason } => {
                    if let Some(link_id) = self.by_conn.remove(&conn) {
                        if let Some(link) = self.links.remove(&link_id) {
                            let _ = link
                                .tx
                                .try_send(ServerMessage::new(ServerBody::Closing { reason }));
                        }
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
