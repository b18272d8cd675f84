//! The background task behind a `Client`: runs the core `ClientSession`
//! over a transport, reconnects with backoff, keeps the link alive, and
//! hands events to the dispatcher. It never awaits a handler.

use invitation_core::protocol::{ClientMessage, Command, Control, ReplyResult, ServerBody};
use invitation_core::{AppEvent, ClientSession, CommandError, ConnectionState, RequestId};
use invitation_transport::{BoxConnection, BoxTransport, TransportError, TransportErrorKind};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::client::{Client, Options, Parts};
use crate::dispatch::Dispatcher;

type Done = oneshot::Sender<Result<ReplyResult, CommandError>>;

pub(crate) enum DriverMsg {
    Command {
        command: Command,
        done: Done,
    },
    /// A fresh token: sent in band now, used for every later reconnect.
    Renew {
        token: String,
        done: Done,
    },
    Close(oneshot::Sender<()>),
}

/// Why the first connection failed (kind and message).
#[derive(Debug, Clone)]
pub(crate) struct Failure(pub(crate) TransportErrorKind, pub(crate) String);

#[derive(Debug, Clone)]
pub(crate) enum LinkState {
    Idle,
    Up,
    Reconnecting,
    Failed(Failure),
    Closed,
}

enum Exit {
    /// The link broke; reconnect.
    Lost(TransportError),
    /// The client was closed.
    Closed,
}

pub(crate) struct Driver {
    transport: BoxTransport,
    session: ClientSession,
    cmd_rx: mpsc::UnboundedReceiver<DriverMsg>,
    state_tx: watch::Sender<LinkState>,
    token: Option<String>,
    waiters: Vec<(RequestId, Done)>,
    dispatcher: Dispatcher,
    options: Options,
    keepalive: u64,
    jitter: u64,
    last_seq: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

impl Driver {
    pub(crate) fn new(parts: Parts, client: Client, options: Options) -> Self {
        let seed = options.jitter_seed.unwrap_or_else(|| {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            u64::from(nanos) ^ 0x9e37_79b9_7f4a_7c15
        }) | 1;
        Self {
            transport: parts.transport,
            session: parts.session,
            cmd_rx: parts.cmd_rx,
            state_tx: parts.state_tx,
            token: parts.token,
            waiters: Vec::new(),
            dispatcher: Dispatcher::new(client, parts.handler),
            options,
            keepalive: 0,
            jitter: seed,
            last_seq: parts.last_seq,
        }
    }

    pub(crate) async fn run(mut self) {
        let mut attempt: u32 = 0;
        let mut ever_up = false;
        loop {
            match self.transport.connect().await {
                Ok(conn) => {
                    attempt = 0;
                    match self.serve(conn, &mut ever_up).await {
                        Exit::Closed => break,
                        Exit::Lost(e) => {
                            tracing::info!(error = %e, "connection lost; reconnecting");
                            self.session.handle_disconnected(now());
                            self.pump_events();
                            if !ever_up && !e.is_retryable() {
                                self.fail(&e);
                                break;
                            }
                            let _ = self.state_tx.send(LinkState::Reconnecting);
                        }
                    }
                }
                Err(e) => {
                    // The first attempt reports to `connect()`; a
                    // non-retryable error ends the client.
                    if !ever_up || !e.is_retryable() {
                        tracing::warn!(error = %e, "cannot connect");
                        self.fail(&e);
                        break;
                    }
                    tracing::info!(error = %e, attempt, "reconnect failed");
                }
            }
            attempt = attempt.saturating_add(1);
            if !self.backoff(attempt).await {
                break;
            }
        }
        self.shutdown();
    }

    fn fail(&mut self, e: &TransportError) {
        let _ = self
            .state_tx
            .send(LinkState::Failed(Failure(e.kind(), e.to_string())));
    }

    /// Waits before the next attempt, still taking commands (they queue in
    /// the session). Returns false if the client was closed meanwhile.
    async fn backoff(&mut self, attempt: u32) -> bool {
        let exp = self
            .options
            .backoff_min
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.options.backoff_max);
        // Full jitter in [exp/2, exp]: spreads a reconnect storm.
        self.jitter ^= self.jitter << 13;
        self.jitter ^= self.jitter >> 7;
        self.jitter ^= self.jitter << 17;
        let half = exp / 2;
        let extra = half.mul_f64((self.jitter % 1000) as f64 / 1000.0);
        let until = Instant::now() + half + extra;
        loop {
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(until) => return true,
                msg = self.cmd_rx.recv() => match msg {
                    Some(DriverMsg::Command { command, done }) => {
                        let id = self.session.command(now(), command);
                        self.waiters.push((id, done));
                    }
                    Some(DriverMsg::Renew { token, done }) => {
                        // Not connected: the next hello carries it.
                        self.token = Some(token);
                        let _ = done.send(Ok(invitation_core::protocol::ReplyResult::Done));
                    }
                    Some(DriverMsg::Close(ack)) => {
                        let _ = ack.send(());
                        return false;
                    }
                    None => return false,
                },
            }
        }
    }

    async fn serve(&mut self, mut conn: BoxConnection, ever_up: &mut bool) -> Exit {
        self.session.handle_connected(now(), self.token.clone());
        let mut last_rx = Instant::now();
        let mut pinged = false;
        // No welcome within this long: the hello was lost; start over.
        let welcome_by = Instant::now()
            + self
                .options
                .ping_every
                .min(std::time::Duration::from_secs(10));
        let mut welcomed = false;
        loop {
            if let Err(e) = self.flush(&mut conn).await {
                return Exit::Lost(e);
            }
            if self.pump_events() {
                welcomed = true;
                *ever_up = true;
            }
            if self.session.wants_reconnect() {
                conn.close().await;
                return Exit::Lost(TransportError::new(
                    TransportErrorKind::Protocol,
                    "the server has no session for this link",
                ));
            }
            let ping_at = last_rx + self.options.ping_every;
            let dead_at = last_rx + self.options.dead_after;
            let session_at = self.session.poll_timeout().map(Instant::from_std);
            let hello_at = (!welcomed).then_some(welcome_by);
            let wake = [
                Some(if pinged { dead_at } else { ping_at }),
                session_at,
                hello_at,
            ]
            .into_iter()
            .flatten()
            .min()
            .expect("at least the heartbeat");
            // `biased`: a fixed polling order keeps simulations replayable.
            tokio::select! {
                biased;
                msg = conn.recv() => match msg {
                    Ok(msg) => {
                        last_rx = Instant::now();
                        pinged = false;
                        if let ServerBody::Closing { reason } = &msg.body {
                            tracing::info!(?reason, "server is closing the connection");
                        }
                        self.session.handle_message(now(), msg);
                    }
                    Err(e) => return Exit::Lost(e),
                },
                msg = self.cmd_rx.recv() => match msg {
                    Some(DriverMsg::Command { command, done }) => {
                        let id = self.session.command(now(), command);
                        self.waiters.push((id, done));
                    }
                    Some(DriverMsg::Renew { token, done }) => {
                        self.token = Some(token.clone());
                        let id = self.session.command(now(), Control::Renew { token });
                        self.waiters.push((id, done));
                    }
                    Some(DriverMsg::Close(ack)) => {
                        conn.close().await;
                        let _ = ack.send(());
                        return Exit::Closed;
                    }
                    None => {
                        conn.close().await;
                        return Exit::Closed;
                    }
                },
                () = tokio::time::sleep_until(wake) => {
                    let t = Instant::now();
                    self.session.handle_timeout(t.into_std());
                    if !welcomed && t >= welcome_by {
                        conn.close().await;
                        return Exit::Lost(TransportError::new(
                            TransportErrorKind::Timeout,
                            "no welcome: the hello was lost",
                        ));
                    }
                    if t >= dead_at {
                        conn.close().await;
                        return Exit::Lost(TransportError::new(
                            TransportErrorKind::Timeout,
                            "no message from the server within the heartbeat window",
                        ));
                    }
                    if t >= ping_at && !pinged {
                        pinged = true;
                        self.keepalive += 1;
                        let id = RequestId::new(format!("ka{}", self.keepalive)).expect("valid id");
                        if let Err(e) = conn.send(ClientMessage::new(id, Control::Ping)).await {
                            return Exit::Lost(e);
                        }
                    }
                }
            }
        }
    }

    /// Sends what the session queued.
    async fn flush(&mut self, conn: &mut BoxConnection) -> Result<(), TransportError> {
        while let Some(msg) = self.session.poll_transmit() {
            conn.send(msg).await?;
        }
        Ok(())
    }

    /// Hands events to the dispatcher and results to their waiters. Returns
    /// true when the connection came up.
    fn pump_events(&mut self) -> bool {
        let mut up = false;
        while let Some(event) = self.session.poll_event() {
            match &event {
                AppEvent::Connection(ConnectionState::Connected { .. }) => {
                    up = true;
                    let _ = self.state_tx.send(LinkState::Up);
                }
                AppEvent::Connection(ConnectionState::Reconnecting) => {
                    let _ = self.state_tx.send(LinkState::Reconnecting);
                }
                _ => {}
            }
            let live = event
                .call_id()
                .is_some_and(|id| self.session.live_calls().any(|c| c == id));
            self.dispatcher.push(event, live);
        }
        if let Some(seq) = self.session.last_seq() {
            self.last_seq
                .store(seq, std::sync::atomic::Ordering::Relaxed);
        }
        while let Some((id, result)) = self.session.poll_completion() {
            if let Some(i) = self.waiters.iter().position(|(w, _)| *w == id) {
                let (_, done) = self.waiters.swap_remove(i);
                let _ = done.send(result);
            }
        }
        up
    }

    fn shutdown(&mut self) {
        if !matches!(*self.state_tx.borrow(), LinkState::Failed(_)) {
            let _ = self.state_tx.send(LinkState::Closed);
        }
        // Waiters are dropped: their commands fail with `Closed`.
        self.waiters.clear();
    }
}
