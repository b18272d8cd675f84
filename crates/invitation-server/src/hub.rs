//! The one task that owns the `Switchboard`. Connection tasks send it
//! commands; it answers through each connection's bounded queue. A
//! connection whose queue is full is dropped (it does not read), so server
//! memory stays flat whatever a client does.

use std::collections::HashMap;
use std::sync::Arc;

use invitation_core::protocol::{
    ClientMessage, CloseReason, Command, ErrorBody, Event, ServerBody, ServerMessage,
};
use invitation_core::{
    CallId, CallIdGenerator, CommandError, ConnId, DeviceId, Output, Switchboard,
    SwitchboardConfig, User, UserId,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::rate::KeyedLimiter;

/// What a connection task receives from the hub.
#[derive(Debug)]
pub enum Outbound {
    /// Send this message. `since`: when the invite that caused it was read
    /// (set on `incoming_call` events, for the invite-to-ring histogram).
    Message {
        /// The message (boxed: the queue's slots are allocated in blocks, so
        /// a small slot keeps an idle connection's queue small).
        message: Box<ServerMessage>,
        /// Invite read time, for ring latency.
        since: Option<Instant>,
    },
    /// Say why and close.
    Close(CloseReason),
}

/// Connection key, chosen by the server (not the switchboard's `ConnId`).
pub type LinkKey = u64;

/// What connection tasks send to the hub.
#[derive(Debug)]
pub enum HubMsg {
    /// An authenticated device joins (after `hello`).
    Open {
        /// The connection.
        key: LinkKey,
        /// From the token.
        user: User,
        /// From `hello`.
        device: DeviceId,
        /// From `hello`.
        last_seq: Option<u64>,
        /// Where to send its messages.
        tx: mpsc::Sender<Outbound>,
    },
    /// A decoded command, with the time it was read.
    Command {
        /// The connection.
        key: LinkKey,
        /// The command.
        message: ClientMessage,
        /// When it was read off the socket.
        at: Instant,
    },
    /// The connection ended.
    Close {
        /// The connection.
        key: LinkKey,
    },
}

/// Unguessable call ids (`c-` + 32 hex digits from the OS CSPRNG), drawn
/// from a refilled pool so most ids cost no system call.
pub struct RandomCallIds {
    pool: Vec<u8>,
    pos: usize,
}

impl RandomCallIds {
    /// An empty pool (filled on first use).
    pub fn new() -> Self {
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
    tx: mpsc::Sender<Outbound>,
    conn: ConnId,
    user: UserId,
}

/// The hub task's state.
pub struct Hub {
    sb: Switchboard,
    links: HashMap<LinkKey, Link>,
    by_conn: HashMap<ConnId, LinkKey>,
    invites: KeyedLimiter<UserId>,
    metrics: Arc<Metrics>,
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

impl Hub {
    /// A hub with these switchboard settings and invite rate limit.
    pub fn new(
        config: SwitchboardConfig,
        invite_rate: f64,
        invite_burst: f64,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            sb: Switchboard::new(config, RandomCallIds::new()),
            links: HashMap::new(),
            by_conn: HashMap::new(),
            invites: KeyedLimiter::new(invite_rate, invite_burst),
            metrics,
        }
    }

    /// Runs until every sender is gone.
    pub async fn run(mut self, mut rx: mpsc::Receiver<HubMsg>) {
        loop {
            let deadline = self.sb.poll_timeout().map(Instant::from_std);
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    None => break,
                },
                () = sleep_until(deadline), if deadline.is_some() => {
                    self.sb.handle_timeout(now());
                    self.drain(None);
                }
            }
            let stats = self.sb.stats();
            self.metrics
                .set_switchboard(stats.invitations, &stats.outcomes);
        }
        tracing::info!("hub stopped");
    }

    fn handle(&mut self, msg: HubMsg) {
        match msg {
            HubMsg::Open {
                key,
                user,
                device,
                last_seq,
                tx,
            } => {
                let user_id = user.id.clone();
                let conn = self.sb.connect(now(), user, device, last_seq);
                self.links.insert(
                    key,
                    Link {
                        tx,
                        conn,
                        user: user_id,
                    },
                );
                self.by_conn.insert(conn, key);
                self.drain(None);
            }
            HubMsg::Command { key, message, at } => {
                let Some(link) = self.links.get(&key) else {
                    return;
                };
                if matches!(message.command, Command::Invite(_)) {
                    if let Err(wait) = self.invites.check(&link.user, at.into_std()) {
                        self.metrics
                            .rate_limited
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let error = CommandError::RateLimited {
                            retry_after_ms: u64::try_from(wait.as_millis())
                                .unwrap_or(u64::MAX)
                                .max(1),
                        };
                        let body =
                            ServerBody::Error(ErrorBody::from_command(Some(message.id), &error));
                        self.push(key, ServerMessage::new(body), None);
                        return;
                    }
                }
                let conn = link.conn;
                let is_invite = matches!(message.command, Command::Invite(_));
                let _ = self.sb.handle_command(now(), conn, message);
                self.drain(is_invite.then_some(at));
            }
            HubMsg::Close { key } => {
                if let Some(link) = self.links.remove(&key) {
                    self.by_conn.remove(&link.conn);
                    self.sb.disconnect(now(), link.conn);
                    self.drain(None);
                }
            }
        }
    }

    fn push(&mut self, key: LinkKey, message: ServerMessage, since: Option<Instant>) {
        let Some(link) = self.links.get(&key) else {
            return;
        };
        if link
            .tx
            .try_send(Outbound::Message {
                message: Box::new(message),
                since,
            })
            .is_err()
        {
            // Full (or gone): the client does not read. Drop it; its task
            // sees the queue close and shuts the socket.
            tracing::warn!(key, user = %link.user, "outbound queue full: dropping the connection");
            self.metrics
                .too_slow
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(link) = self.links.remove(&key) {
                self.by_conn.remove(&link.conn);
                self.sb.disconnect(now(), link.conn);
            }
        }
    }

    fn drain(&mut self, invite_at: Option<Instant>) {
        while let Some(out) = self.sb.poll_output() {
            match out {
                Output::Send { conn, message } => {
                    let Some(key) = self.by_conn.get(&conn).copied() else {
                        continue;
                    };
                    let rings = matches!(
                        message.body,
                        ServerBody::Event {
                            event: Event::IncomingCall { .. },
                            ..
                        }
                    );
                    self.push(key, message, if rings { invite_at } else { None });
                }
                Output::Close { conn, reason } => {
                    if let Some(key) = self.by_conn.remove(&conn) {
                        if let Some(link) = self.links.remove(&key) {
                            let _ = link.tx.try_send(Outbound::Close(reason));
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
