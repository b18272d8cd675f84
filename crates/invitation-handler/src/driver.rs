//! The background task behind a `Client`: runs the core `ClientSession`
//! over a transport, reconnects with backoff, keeps the link alive, and
//! hands events to the dispatcher. It never awaits a handler.

use std::time::{Duration, SystemTime};

use invitation_core::protocol::{
    ClientMessage, CloseReason, Command, Control, ReplyResult, ServerBody,
};
use invitation_core::{
    AppEvent, ClientSession, CommandError, ConnectionState, ErrorCode, RequestId, StopReason,
};
use invitation_transport::{BoxConnection, BoxTransport, TransportError, TransportErrorKind};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::client::{Client, ClientError, Options, Parts};
use crate::dispatch::Dispatcher;
use crate::token::{TokenFuture, TokenProvider, UnverifiedClaims};

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

/// Why the client stopped for good.
#[derive(Debug, Clone)]
pub(crate) enum Stop {
    /// A transport failure (first connection, or one retrying cannot fix).
    Transport(TransportErrorKind, String),
    /// The server refused the token.
    Unauthorized(String),
    /// The server refused the hello for another reason.
    Refused(ErrorCode, String),
    /// Another connection of the same user and device took over.
    Replaced,
    /// The token expired; nothing renewed it.
    TokenExpired,
    /// The token provider failed.
    TokenProvider(String),
}

impl Stop {
    pub(crate) fn to_error(&self) -> ClientError {
        match self {
            Stop::Transport(kind, message) => {
                ClientError::Transport(TransportError::new(*kind, message.clone()))
            }
            Stop::Unauthorized(m) => ClientError::Unauthorized(m.clone()),
            Stop::Refused(code, message) => ClientError::Command(CommandError::Rejected {
                code: *code,
                message: message.clone(),
            }),
            Stop::Replaced => ClientError::Replaced,
            Stop::TokenExpired => ClientError::TokenExpired,
            Stop::TokenProvider(m) => ClientError::TokenProvider(m.clone()),
        }
    }

    fn reason(&self) -> StopReason {
        match self {
            Stop::Transport(..) | Stop::Refused(..) => StopReason::Failed,
            Stop::Unauthorized(_) => StopReason::Unauthorized,
            Stop::Replaced => StopReason::Replaced,
            Stop::TokenExpired => StopReason::TokenExpired,
            Stop::TokenProvider(_) => StopReason::TokenProviderFailed,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum LinkState {
    Idle,
    Up,
    Reconnecting,
    Failed(Stop),
    Closed,
}

enum Exit {
    /// The link broke; reconnect.
    Lost(TransportError),
    /// The server answered the hello with an error (and closes the link).
    Refused(ErrorCode, String),
    /// The server closed the link saying why.
    ClosedBy(CloseReason),
    /// The client was closed.
    Closed,
}

/// Resolves when the token fetch in flight (if any) does; never otherwise.
async fn fetched(fetch: &mut Option<TokenFuture>) -> Result<String, String> {
    match fetch {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

pub(crate) struct Driver {
    transport: BoxTransport,
    session: ClientSession,
    cmd_rx: mpsc::UnboundedReceiver<DriverMsg>,
    state_tx: watch::Sender<LinkState>,
    token: Option<String>,
    provider: Option<TokenProvider>,
    /// When to ask the provider for the next token (80 % of the lifetime).
    renew_at: Option<Instant>,
    /// A proactive token fetch in flight.
    fetching: Option<TokenFuture>,
    /// The in-band `renew` of a fetched token, awaiting its answer.
    renew_id: Option<RequestId>,
    /// Set once the client stops for good: no more "reconnecting" news.
    stopping: bool,
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
        let mut driver = Self {
            transport: parts.transport,
            session: parts.session,
            cmd_rx: parts.cmd_rx,
            state_tx: parts.state_tx,
            token: None,
            provider: parts.token_provider,
            renew_at: None,
            fetching: None,
            renew_id: None,
            stopping: false,
            waiters: Vec::new(),
            dispatcher: Dispatcher::new(client, parts.handler),
            options,
            keepalive: 0,
            jitter: seed,
            last_seq: parts.last_seq,
        };
        if let Some(token) = parts.token {
            driver.set_token(token);
        }
        driver
    }

    /// Takes a new token: used for the next hello, and renewed 80 % through
    /// its lifetime when a provider can give the next one.
    fn set_token(&mut self, token: String) {
        self.renew_at = self
            .provider
            .as_ref()
            .and_then(|_| UnverifiedClaims::peek(&token).ok())
            .and_then(|claims| claims.renew_in(SystemTime::now()))
            .map(|d| Instant::now() + d);
        self.token = Some(token);
    }

    /// Asks the provider for a token while offline (still taking commands,
    /// which queue). `Ok(false)`: the client was closed meanwhile.
    async fn fetch_token(&mut self) -> Result<bool, Stop> {
        let Some(provider) = self.provider.clone() else {
            return Err(Stop::TokenExpired);
        };
        let limit = self.options.command_timeout;
        let mut fetch = Some(self.fetching.take().unwrap_or_else(|| provider()));
        let until = Instant::now() + limit;
        loop {
            tokio::select! {
                biased;
                got = fetched(&mut fetch) => {
                    return match got {
                        Ok(token) => {
                            self.set_token(token);
                            Ok(true)
                        }
                        Err(e) => Err(Stop::TokenProvider(e)),
                    };
                }
                () = tokio::time::sleep_until(until) => {
                    return Err(Stop::TokenProvider(format!("no token within {limit:?}")));
                }
                msg = self.cmd_rx.recv() => if !self.offline(msg) {
                    return Ok(false);
                },
            }
        }
    }

    /// A message from the app while not connected. Returns false when the
    /// client was closed.
    fn offline(&mut self, msg: Option<DriverMsg>) -> bool {
        match msg {
            Some(DriverMsg::Command { command, done }) => {
                let id = self.session.command(now(), command);
                self.waiters.push((id, done));
                true
            }
            Some(DriverMsg::Renew { token, done }) => {
                // Not connected: the next hello carries it.
                self.set_token(token);
                let _ = done.send(Ok(ReplyResult::Done));
                true
            }
            Some(DriverMsg::Close(ack)) => {
                let _ = ack.send(());
                false
            }
            None => false,
        }
    }

    pub(crate) async fn run(mut self) {
        // Failed attempts in a row: the backoff exponent. Reset only by a
        // welcome, so that attempts which reach the server and are turned
        // away back off too.
        let mut failures: u32 = 0;
        let mut ever_up = false;
        // The provider was asked for a fresh token after a refusal.
        let mut fresh_after_refusal = false;
        let stop = loop {
            if self.token.is_none() && self.provider.is_some() {
                match self.fetch_token().await {
                    Ok(true) => {}
                    Ok(false) => break None,
                    Err(stop) => break Some(stop),
                }
            }
            match self.transport.connect().await {
                Ok(conn) => {
                    let mut welcomed = false;
                    let exit = self.serve(conn, &mut welcomed).await;
                    if welcomed {
                        ever_up = true;
                        failures = 0;
                        fresh_after_refusal = false;
                    }
                    match exit {
                        Exit::Closed => break None,
                        Exit::Lost(e) => {
                            if !ever_up && !e.is_retryable() {
                                tracing::warn!(error = %e, "cannot connect");
                                break Some(Stop::Transport(e.kind(), e.to_string()));
                            }
                            tracing::info!(error = %e, "connection lost; reconnecting");
                        }
                        Exit::Refused(ErrorCode::Unauthorized, message) => {
                            if self.provider.is_none() || fresh_after_refusal {
                                tracing::warn!(%message, "the server refused the token");
                                break Some(Stop::Unauthorized(message));
                            }
                            tracing::info!(%message, "token refused; asking the provider for a fresh one");
                            fresh_after_refusal = true;
                            self.token = None; // fetched before the next attempt
                        }
                        Exit::Refused(
                            code @ (ErrorCode::Unavailable | ErrorCode::RateLimited),
                            message,
                        ) => {
                            tracing::info!(?code, %message, "the server turned the hello away; retrying");
                        }
                        Exit::Refused(code, message) => {
                            tracing::warn!(?code, %message, "the server refused the hello");
                            break Some(Stop::Refused(code, message));
                        }
                        Exit::ClosedBy(CloseReason::Replaced) => {
                            tracing::warn!(
                                "another connection with this user and device took over; stopping"
                            );
                            break Some(Stop::Replaced);
                        }
                        Exit::ClosedBy(CloseReason::TokenExpired) => {
                            if self.provider.is_none() {
                                tracing::warn!(
                                    "the token expired and no token provider is set; stopping"
                                );
                                break Some(Stop::TokenExpired);
                            }
                            self.token = None; // fetched before the next attempt
                        }
                        Exit::ClosedBy(reason) => {
                            tracing::info!(
                                ?reason,
                                "the server closed the connection; reconnecting"
                            );
                        }
                    }
                    self.session.handle_disconnected(now());
                    self.pump_events();
                    let _ = self.state_tx.send(LinkState::Reconnecting);
                }
                Err(e) => {
                    // The first attempt reports to `connect()`; a
                    // non-retryable error ends the client.
                    if !ever_up || !e.is_retryable() {
                        tracing::warn!(error = %e, "cannot connect");
                        break Some(Stop::Transport(e.kind(), e.to_string()));
                    }
                    tracing::info!(error = %e, failures, "reconnect failed");
                }
            }
            failures = failures.saturating_add(1);
            if !self.backoff(failures).await {
                break None;
            }
        };
        if let Some(stop) = stop {
            self.stop(stop);
        }
        self.shutdown();
    }

    /// Stops for good: the app hears why, on the event stream and from
    /// `connect()` and every later command.
    fn stop(&mut self, stop: Stop) {
        self.stopping = true;
        self.session.handle_disconnected(now());
        self.pump_events();
        let reason = stop.reason();
        let _ = self.state_tx.send(LinkState::Failed(stop));
        self.dispatcher.push(
            AppEvent::Connection(ConnectionState::Stopped { reason }),
            false,
        );
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
                msg = self.cmd_rx.recv() => if !self.offline(msg) {
                    return false;
                },
            }
        }
    }

    async fn serve(&mut self, mut conn: BoxConnection, welcomed: &mut bool) -> Exit {
        self.session.handle_connected(now(), self.token.clone());
        let mut last_rx = Instant::now();
        let mut pinged = false;
        // No welcome within this long: the hello was lost; start over.
        let welcome_by = Instant::now()
            + self
                .options
                .ping_every
                .min(std::time::Duration::from_secs(10));
        loop {
            if let Err(e) = self.flush(&mut conn).await {
                return Exit::Lost(e);
            }
            if self.pump_events() {
                *welcomed = true;
            }
            if let Some(refusal) = self.session.refusal() {
                let exit = Exit::Refused(refusal.code, refusal.message.clone());
                conn.close().await;
                return exit;
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
            let hello_at = (!*welcomed).then_some(welcome_by);
            let renew_at = self
                .renew_at
                .filter(|_| *welcomed && self.fetching.is_none());
            let wake = [
                Some(if pinged { dead_at } else { ping_at }),
                session_at,
                hello_at,
                renew_at,
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
                        if let ServerBody::Closing { reason } = msg.body {
                            tracing::info!(?reason, "server is closing the connection");
                            conn.close().await;
                            return Exit::ClosedBy(reason);
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
                        self.set_token(token.clone());
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
                got = fetched(&mut self.fetching) => {
                    self.fetching = None;
                    match got {
                        Ok(token) => {
                            tracing::debug!("token renewed by the provider; sending it in band");
                            self.set_token(token.clone());
                            self.renew_id = Some(self.session.command(now(), Control::Renew { token }));
                        }
                        Err(e) => {
                            // Try again halfway to the expiry; if that
                            // passes, the server closes and the reconnect
                            // asks the provider once more.
                            let left = self
                                .token
                                .as_deref()
                                .and_then(|t| UnverifiedClaims::peek(t).ok())
                                .and_then(|c| c.expires_at())
                                .and_then(|exp| exp.duration_since(SystemTime::now()).ok())
                                .unwrap_or(Duration::ZERO);
                            tracing::warn!(error = %e, "the token provider failed; the token expires in {left:?}");
                            self.renew_at = (left > Duration::from_secs(1))
                                .then(|| Instant::now() + left / 2);
                        }
                    }
                }
                () = tokio::time::sleep_until(wake) => {
                    let t = Instant::now();
                    self.session.handle_timeout(t.into_std());
                    if let (Some(at), Some(provider)) = (self.renew_at, &self.provider) {
                        if *welcomed && t >= at && self.fetching.is_none() {
                            self.renew_at = None;
                            self.fetching = Some(provider());
                        }
                    }
                    if !*welcomed && t >= welcome_by {
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
                    if self.stopping {
                        continue; // it will not: `Stopped` follows
                    }
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
            if self.renew_id.as_ref() == Some(&id) {
                self.renew_id = None;
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "the server refused the renewed token");
                }
            }
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
