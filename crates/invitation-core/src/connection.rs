//! The server side of one device connection, sans-IO: everything about a
//! connection that is not a call.
//!
//! A [`DeviceConnection`] owns a connection's life from its first message to
//! its close: the `hello` handshake (authentication through an injected
//! [`Authenticator`], so the core stays free of token crates), in-band token
//! renewal and expiry, `ping` / `pong`, the dead-peer deadline, `sync`, the
//! in-flight limit that turns a pipelining client into TCP back-pressure,
//! protocol-error counting, and the reason a connection closes. The
//! switchboard sees only what concerns calls: a device joining, its call
//! commands, its `sync` requests, and it leaving ([`SwitchboardInput`]).
//!
//! Every front door (the WebSocket server, the in-process memory hub, test
//! harnesses, future HTTP or multi-node edges) is a thin shell around this
//! machine and the [`crate::Switchboard`]; none of them parses or answers a
//! connection-level message itself.
//!
//! # Run loop
//!
//! Like the switchboard: feed one input with the current time
//! ([`DeviceConnection::handle_text`], [`DeviceConnection::handle_activity`],
//! [`DeviceConnection::handle_sent`], [`DeviceConnection::handle_timeout`],
//! [`DeviceConnection::close`], [`DeviceConnection::handle_transport_closed`]),
//! drain [`DeviceConnection::poll_output`] until `None`, then sleep until
//! [`DeviceConnection::poll_timeout`] or the next input.
//!
//! # One answer per message
//!
//! Every client message gets exactly one answer carrying its request id
//! (`re`): `welcome` or `error` for `hello`, `reply` or `error` for `renew`,
//! `pong` for `ping`, `sync` for `sync`, `reply` or `error` for a call
//! command, an `error` for a message that could not be decoded. The machine
//! counts messages read and answers written ([`DeviceConnection::handle_sent`]
//! sees every message the shell writes); while more than
//! [`ConnectionConfig::max_in_flight`] are unanswered it asks the shell to
//! stop reading ([`DeviceConnection::wants_read`]).
//!
//! The one exception is a device's `received` receipt for an incoming call:
//! it is never answered, so it never counts as in flight. The machine
//! forwards one only for a call it sent this connection as ringing (an
//! `incoming_call` event, or a ringing callee call in a `sync`), once per
//! such call; any other receipt (unknown, foreign, repeated) goes no further
//! and counts as a protocol error, silently. The calls awaiting a receipt
//! are bounded ([`MAX_AWAITING_RECEIPT`], oldest forgotten first).

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{CommandError, ErrorCode, ProtocolError};
use crate::guard::DecodeLimits;
use crate::id::{CallId, DeviceId, RequestId};
use crate::model::User;
use crate::protocol::{
    ClientBody, ClientMessage, CloseReason, Command, Control, ErrorBody, Event, ReplyResult, Role,
    ServerBody, ServerMessage, SnapshotState,
};

/// Most calls one connection remembers as sent ringing and not yet
/// acknowledged by a `received` receipt; past it the oldest is forgotten
/// (its receipt, if it ever comes, is then a protocol error).
pub const MAX_AWAITING_RECEIPT: usize = 32;

/// Who a valid token says the client is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Identity {
    /// The user (id and display name) the token vouches for.
    pub user: User,
    /// How long the token stays valid from now; `None` for never (the memory
    /// hub vouches for its users without tokens).
    pub valid_for: Option<Duration>,
}

impl Identity {
    /// An identity valid for `valid_for` from now (`None`: no expiry).
    pub fn new(user: User, valid_for: Option<Duration>) -> Self {
        Self { user, valid_for }
    }
}

/// Why a token was refused. The detail goes to the log, never to the client:
/// the wire says only `unauthorized`, so a client cannot learn whether a
/// signature was valid or which algorithms are accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct AuthRefusal {
    /// For the log.
    pub detail: String,
}

impl AuthRefusal {
    /// A refusal with this detail (for the log only).
    pub fn new(detail: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
        }
    }
}

/// Verifies bearer tokens. The server implements it with signed tokens; the
/// memory hub with an identity its transport vouches for.
pub trait Authenticator {
    /// The identity behind `token` (absent when the client sent none).
    fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthRefusal>;
}

impl<A: Authenticator + ?Sized> Authenticator for &A {
    fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthRefusal> {
        (**self).authenticate(token)
    }
}

impl<A: Authenticator + ?Sized> Authenticator for Arc<A> {
    fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthRefusal> {
        (**self).authenticate(token)
    }
}

/// Connection settings. Shared by every connection of a server (`Arc`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionConfig {
    /// Time from the start of the connection to a valid `hello` (5 s).
    pub hello_timeout: Duration,
    /// Probe a silent peer after this long (25 s); `None`: never (in-process
    /// links cannot die silently).
    pub ping_every: Option<Duration>,
    /// Drop a peer silent for this long (60 s).
    pub dead_after: Duration,
    /// Unanswered messages before the shell stops reading (16).
    pub max_in_flight: usize,
    /// Undecodable messages tolerated before the connection is closed (10).
    pub max_protocol_errors: u32,
    /// Caps for decoding untrusted input.
    pub limits: DecodeLimits,
    /// Messages per second and burst one connection may send after `hello`
    /// (every kind: pings and syncs too); past it, each message is answered
    /// `rate_limited` with the wait and goes no further. `None`: no limit.
    pub message_rate: Option<(f64, f64)>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            hello_timeout: Duration::from_secs(5),
            ping_every: Some(Duration::from_secs(25)),
            dead_after: Duration::from_secs(60),
            max_in_flight: 16,
            max_protocol_errors: 10,
            limits: DecodeLimits::default(),
            message_rate: None,
        }
    }
}

/// What the switchboard must be told about this connection. Serializes
/// with serde (a server that runs the switchboard on another node sends it
/// there).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
#[non_exhaustive]
pub enum SwitchboardInput {
    /// The device authenticated: join it (answer: `welcome`, re = `hello`).
    Connect {
        /// From the token.
        user: User,
        /// From `hello`.
        device: DeviceId,
        /// From `hello`: where to resume.
        last_seq: Option<u64>,
        /// The `hello`'s request id, for the `welcome`.
        hello: RequestId,
    },
    /// A call command (answer: `reply` or `error`).
    Command {
        /// Request id.
        id: RequestId,
        /// The command.
        command: Command,
    },
    /// A `sync` request (answer: `sync` with `re`).
    Sync {
        /// Request id.
        id: RequestId,
    },
    /// The device left (only after a `Connect`).
    Disconnect,
    /// A device receipt (`received`) for a call this connection was sent as
    /// ringing (no answer).
    Receipt {
        /// The call.
        call_id: CallId,
    },
}

/// Why a connection ends. The shell maps it to its transport's close (a
/// WebSocket close code, an HTTP status).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCause {
    /// No valid `hello` within the hello timeout.
    NoHello,
    /// The token was refused, or the first message was not `hello`.
    Unauthorized,
    /// Too many undecodable messages.
    ProtocolViolation,
    /// The token expired and was not renewed.
    TokenExpired,
    /// The peer was silent past the dead-peer deadline.
    DeadPeer,
    /// The peer closed, or the transport failed.
    PeerGone,
    /// The same device connected again.
    Replaced,
    /// The server is stopping.
    ShuttingDown,
    /// The peer does not read what it is sent.
    TooSlow,
    /// The user has as many devices connected as the server allows.
    TooManyDevices,
    /// A message over the size limit.
    TooLarge,
    /// A text frame that is not UTF-8.
    InvalidUtf8,
    /// A frame kind the protocol does not use (binary).
    Unsupported,
    /// The transport's own framing was broken.
    TransportProtocol,
    /// A message was started but not finished in time.
    Stalled,
}

impl CloseCause {
    /// The `closing` reason the client is told before the close, if any.
    pub fn closing_reason(self) -> Option<CloseReason> {
        Some(match self {
            CloseCause::ProtocolViolation => CloseReason::ProtocolViolation,
            CloseCause::TokenExpired => CloseReason::TokenExpired,
            CloseCause::Replaced => CloseReason::Replaced,
            CloseCause::ShuttingDown => CloseReason::ShuttingDown,
            CloseCause::TooSlow => CloseReason::TooSlow,
            CloseCause::TooManyDevices => CloseReason::TooManyDevices,
            _ => return None,
        })
    }

    /// From the reason the switchboard (or the shell) gives.
    pub fn from_reason(reason: CloseReason) -> Self {
        match reason {
            CloseReason::Replaced => CloseCause::Replaced,
            CloseReason::ShuttingDown => CloseCause::ShuttingDown,
            CloseReason::TokenExpired => CloseCause::TokenExpired,
            CloseReason::ProtocolViolation => CloseCause::ProtocolViolation,
            CloseReason::TooSlow => CloseCause::TooSlow,
            CloseReason::TooManyDevices => CloseCause::TooManyDevices,
        }
    }

    /// Short text for logs and close frames.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseCause::NoHello => "no hello in time",
            CloseCause::Unauthorized => "unauthorized",
            CloseCause::ProtocolViolation => "too many protocol errors",
            CloseCause::TokenExpired => "token expired",
            CloseCause::DeadPeer => "no message within the heartbeat window",
            CloseCause::PeerGone => "peer gone",
            CloseCause::Replaced => "replaced by a newer connection",
            CloseCause::ShuttingDown => "shutting down",
            CloseCause::TooSlow => "too slow",
            CloseCause::TooManyDevices => "too many devices",
            CloseCause::TooLarge => "message too large",
            CloseCause::InvalidUtf8 => "invalid utf-8",
            CloseCause::Unsupported => "text frames only",
            CloseCause::TransportProtocol => "protocol error",
            CloseCause::Stalled => "message not completed in time",
        }
    }
}

impl fmt::Display for CloseCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the shell must do, drained after every input.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionOutput {
    /// Write this message to the peer.
    Send(ServerMessage),
    /// Send a transport-level liveness probe (a WebSocket ping).
    Probe,
    /// Hand this to the switchboard, tagged with this connection.
    Switchboard(SwitchboardInput),
    /// Write what is queued, then close the transport. Always the last
    /// output; every later input is ignored.
    Close(CloseCause),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Waiting for `hello` until the deadline.
    AwaitingHello { deadline: Instant },
    /// Authenticated; the token expires at `expires` (never if `None`).
    Open {
        user: User,
        expires: Option<Instant>,
    },
    /// Closed: every input is ignored.
    Closed,
}

/// One device connection, server side. See the [module docs](self).
#[derive(Debug)]
pub struct DeviceConnection {
    config: Arc<ConnectionConfig>,
    phase: Phase,
    /// Last time anything arrived from the peer.
    last_rx: Instant,
    /// A probe was sent and not yet answered by any traffic.
    probed: bool,
    /// Messages read and not yet answered.
    in_flight: usize,
    /// Undecodable messages so far.
    errors: u32,
    /// Newest event sequence number written on this connection (for `pong`).
    seq: u64,
    /// The message-rate bucket: tokens left, as of `refilled`.
    tokens: f64,
    refilled: Instant,
    out: VecDeque<ConnectionOutput>,
    /// Calls sent ringing on this connection and not yet acknowledged by a
    /// receipt, oldest first (at most [`MAX_AWAITING_RECEIPT`]).
    awaiting_receipt: VecDeque<CallId>,
}

impl DeviceConnection {
    /// A connection that started at `now` (the hello timeout counts from here).
    pub fn new(now: Instant, config: Arc<ConnectionConfig>) -> Self {
        let deadline = now + config.hello_timeout;
        let tokens = config.message_rate.map_or(0.0, |(_, burst)| burst);
        Self {
            config,
            phase: Phase::AwaitingHello { deadline },
            last_rx: now,
            probed: false,
            in_flight: 0,
            errors: 0,
            seq: 0,
            tokens,
            refilled: now,
            out: VecDeque::new(),
            awaiting_receipt: VecDeque::new(),
        }
    }

    // ----- inputs -------------------------------------------------------

    /// One text message from the peer.
    pub fn handle_text(&mut self, now: Instant, text: &str, auth: &dyn Authenticator) {
        if self.phase == Phase::Closed {
            return;
        }
        self.handle_activity(now);
        let message = match ClientMessage::decode(text, &self.config.limits) {
            Ok(m) => m,
            Err(e) => return self.protocol_error(&e),
        };
        self.handle_message(now, message, auth);
    }

    /// One decoded message from the peer (for shells whose transport carries
    /// typed messages, like the memory hub).
    pub fn handle_message(
        &mut self,
        now: Instant,
        message: ClientMessage,
        auth: &dyn Authenticator,
    ) {
        if self.phase == Phase::Closed {
            return;
        }
        self.handle_activity(now);
        if let (Phase::Open { .. }, ClientBody::Command(Command::Received { call_id })) =
            (&self.phase, &message.body)
        {
            let call_id = call_id.clone();
            return self.receipt(now, call_id);
        }
        self.in_flight += 1;
        let ClientMessage { id, body, .. } = message;
        if matches!(self.phase, Phase::Open { .. }) {
            if let Err(wait) = self.charge(now) {
                let retry_after_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
                return self.answer_error(id, &CommandError::RateLimited { retry_after_ms });
            }
        }
        match (&mut self.phase, body) {
            (Phase::AwaitingHello { .. }, ClientBody::Control(Control::Hello { device, .. }))
                if device.as_str() == crate::BACKEND_DEVICE =>
            {
                // The backend's commands use this device id; a client that
                // took it could make the backend's callers look gone.
                let reserved = crate::error::ValidationError::Reserved {
                    field: "device",
                    value: crate::BACKEND_DEVICE,
                };
                self.answer_error(id, &CommandError::Invalid(reserved));
            }
            (
                Phase::AwaitingHello { .. },
                ClientBody::Control(Control::Hello {
                    device,
                    token,
                    last_seq,
                }),
            ) => match auth.authenticate(token.as_deref()) {
                Ok(identity) => {
                    let expires = identity.valid_for.and_then(|d| now.checked_add(d));
                    self.phase = Phase::Open {
                        user: identity.user.clone(),
                        expires,
                    };
                    self.out
                        .push_back(ConnectionOutput::Switchboard(SwitchboardInput::Connect {
                            user: identity.user,
                            device,
                            last_seq,
                            hello: id,
                        }));
                }
                Err(_) => self.refuse(Some(id)),
            },
            (Phase::AwaitingHello { .. }, _) => self.refuse(Some(id)),
            (Phase::Open { .. }, ClientBody::Control(Control::Hello { .. })) => {
                self.answer_error(id, &CommandError::Misplaced);
            }
            (Phase::Open { user, expires }, ClientBody::Control(Control::Renew { token })) => {
                let body = match auth.authenticate(Some(&token)) {
                    Ok(identity) if identity.user.id == user.id => {
                        *expires = identity.valid_for.and_then(|d| now.checked_add(d));
                        ServerBody::Reply {
                            re: id,
                            result: ReplyResult::Done,
                        }
                    }
                    Ok(_) | Err(_) => ServerBody::Error(ErrorBody {
                        re: Some(id),
                        code: ErrorCode::Unauthorized,
                        message: "unauthorized".into(),
                        reason: None,
                        retry_after_ms: None,
                    }),
                };
                self.send(body);
            }
            (Phase::Open { .. }, ClientBody::Control(Control::Ping)) => {
                let seq = Some(self.seq);
                self.send(ServerBody::Pong { re: Some(id), seq });
            }
            (Phase::Open { .. }, ClientBody::Control(Control::Sync)) => {
                self.out
                    .push_back(ConnectionOutput::Switchboard(SwitchboardInput::Sync { id }));
            }
            (Phase::Open { .. }, ClientBody::Command(command)) => {
                self.out
                    .push_back(ConnectionOutput::Switchboard(SwitchboardInput::Command {
                        id,
                        command,
                    }));
            }
            (Phase::Closed, _) => {}
        }
    }

    /// Anything else arrived from the peer (a transport-level pong, ping or
    /// partial data): it is alive.
    pub fn handle_activity(&mut self, now: Instant) {
        if now > self.last_rx {
            self.last_rx = now;
        }
        self.probed = false;
    }

    /// The shell wrote `message` to the peer (whatever its source: the
    /// switchboard, this machine, the shell's own load shedding). Answers
    /// release the in-flight count; events advance the `pong` sequence.
    pub fn handle_sent(&mut self, message: &ServerMessage) {
        let answer = match &message.body {
            ServerBody::Welcome { re, seq, .. } => {
                self.seq = self.seq.max(*seq);
                re.is_some()
            }
            ServerBody::Reply { .. } => true,
            ServerBody::Error(e) => e.re.is_some(),
            ServerBody::Pong { re, .. } => re.is_some(),
            ServerBody::Sync(sync) => {
                self.seq = self.seq.max(sync.seq);
                for call in &sync.calls {
                    if call.role == Role::Callee && call.state == SnapshotState::Ringing {
                        self.await_receipt(&call.call_id);
                    }
                }
                sync.re.is_some()
            }
            ServerBody::Event { seq, re, event, .. } => {
                self.seq = self.seq.max(*seq);
                if let Event::IncomingCall {
                    call_id,
                    ring_remaining_ms,
                    ..
                } = event
                    && *ring_remaining_ms > 0
                {
                    self.await_receipt(call_id);
                }
                re.is_some() // an event that answers a command
            }
            _ => false,
        };
        if answer {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
    }

    /// Fires what is due at `now`: the hello deadline, the heartbeat probe,
    /// the dead-peer deadline, token expiry. Spurious calls are no-ops.
    pub fn handle_timeout(&mut self, now: Instant) {
        match &self.phase {
            Phase::Closed => {}
            Phase::AwaitingHello { deadline } => {
                if now >= *deadline {
                    self.finish(CloseCause::NoHello);
                }
            }
            Phase::Open { expires, .. } => {
                if expires.is_some_and(|at| now >= at) {
                    return self.finish(CloseCause::TokenExpired);
                }
                let Some(ping_every) = self.config.ping_every else {
                    return;
                };
                if now >= self.last_rx + self.config.dead_after {
                    self.finish(CloseCause::DeadPeer);
                } else if !self.probed && now >= self.last_rx + ping_every {
                    self.probed = true;
                    self.out.push_back(ConnectionOutput::Probe);
                }
            }
        }
    }

    /// Closes the connection for `cause` (the server stops, the switchboard
    /// replaced the device, the shell found the peer too slow or broken).
    pub fn close(&mut self, cause: CloseCause) {
        if self.phase != Phase::Closed {
            self.finish(cause);
        }
    }

    /// The transport closed or failed under the machine: tell the switchboard.
    pub fn handle_transport_closed(&mut self) {
        if self.phase != Phase::Closed {
            self.leave();
            self.phase = Phase::Closed;
            self.out
                .push_back(ConnectionOutput::Close(CloseCause::PeerGone));
        }
    }

    // ----- outputs ------------------------------------------------------

    /// The next thing to do, until `None`.
    pub fn poll_output(&mut self) -> Option<ConnectionOutput> {
        let next = self.out.pop_front();
        if next.is_none() && self.out.capacity() != 0 {
            // Drained: give the buffer back. Outputs are a few hundred bytes
            // each and the deque keeps room for four, so an idle connection
            // would otherwise hold about a kilobyte it no longer uses; one
            // allocation per handled input costs far less than that.
            self.out = VecDeque::new();
        }
        next
    }

    /// When [`DeviceConnection::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.phase {
            Phase::Closed => None,
            Phase::AwaitingHello { deadline } => Some(*deadline),
            Phase::Open { expires, .. } => {
                let beat = self.config.ping_every.map(|every| {
                    if self.probed {
                        self.last_rx + self.config.dead_after
                    } else {
                        self.last_rx + every.min(self.config.dead_after)
                    }
                });
                match (beat, *expires) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        }
    }

    // ----- getters ------------------------------------------------------

    /// True while the shell should read from the peer: open, and fewer than
    /// [`ConnectionConfig::max_in_flight`] messages unanswered.
    pub fn wants_read(&self) -> bool {
        self.phase != Phase::Closed && self.in_flight < self.config.max_in_flight
    }

    /// Messages read and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Undecodable messages seen so far.
    pub fn protocol_errors(&self) -> u32 {
        self.errors
    }

    /// The authenticated user, once `hello` succeeded.
    pub fn user(&self) -> Option<&User> {
        match &self.phase {
            Phase::Open { user, .. } => Some(user),
            _ => None,
        }
    }

    /// True once closed.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    // ----- internals ----------------------------------------------------

    /// Takes one token from the message-rate bucket, or says how long until
    /// one is there.
    fn charge(&mut self, now: Instant) -> Result<(), Duration> {
        let Some((rate, burst)) = self.config.message_rate else {
            return Ok(());
        };
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now.max(self.refilled);
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - self.tokens) / rate;
            Err(Duration::try_from_secs_f64(wait).unwrap_or(Duration::MAX))
        }
    }

    /// A `received` receipt: forwarded once for a call sent ringing here,
    /// never answered. Over the message rate it is dropped; one for a call
    /// not awaiting a receipt counts as a protocol error.
    fn receipt(&mut self, now: Instant, call_id: CallId) {
        if self.charge(now).is_err() {
            return;
        }
        match self.awaiting_receipt.iter().position(|c| *c == call_id) {
            Some(i) => {
                self.awaiting_receipt.remove(i);
                self.out
                    .push_back(ConnectionOutput::Switchboard(SwitchboardInput::Receipt {
                        call_id,
                    }));
            }
            None => {
                self.errors += 1;
                if self.errors > self.config.max_protocol_errors {
                    self.finish(CloseCause::ProtocolViolation);
                }
            }
        }
    }

    /// `call_id` was sent ringing on this connection: a receipt may follow.
    fn await_receipt(&mut self, call_id: &CallId) {
        if self.awaiting_receipt.contains(call_id) {
            return;
        }
        if self.awaiting_receipt.len() >= MAX_AWAITING_RECEIPT {
            self.awaiting_receipt.pop_front();
        }
        self.awaiting_receipt.push_back(call_id.clone());
    }

    /// Calls sent ringing here that still await a receipt.
    pub fn awaiting_receipt(&self) -> usize {
        self.awaiting_receipt.len()
    }

    fn send(&mut self, body: ServerBody) {
        self.out
            .push_back(ConnectionOutput::Send(ServerMessage::new(body)));
    }

    fn answer_error(&mut self, id: RequestId, e: &CommandError) {
        self.send(ServerBody::Error(ErrorBody::from_command(Some(id), e)));
    }

    /// A refused `hello` (or a first message that is not one): one generic
    /// `unauthorized` answer, then close.
    fn refuse(&mut self, re: Option<RequestId>) {
        self.send(ServerBody::Error(ErrorBody {
            re,
            code: ErrorCode::Unauthorized,
            message: "unauthorized".into(),
            reason: None,
            retry_after_ms: None,
        }));
        self.finish(CloseCause::Unauthorized);
    }

    fn protocol_error(&mut self, e: &ProtocolError) {
        self.errors += 1;
        if e.request().is_some() {
            self.in_flight += 1; // answered below, with its id
        }
        self.send(ServerBody::Error(ErrorBody::from_protocol(e)));
        if self.errors > self.config.max_protocol_errors {
            self.finish(CloseCause::ProtocolViolation);
        }
    }

    fn leave(&mut self) {
        if matches!(self.phase, Phase::Open { .. }) {
            self.out
                .push_back(ConnectionOutput::Switchboard(SwitchboardInput::Disconnect));
        }
    }

    fn finish(&mut self, cause: CloseCause) {
        if let Some(reason) = cause.closing_reason() {
            self.send(ServerBody::Closing { reason });
        }
        self.leave();
        self.phase = Phase::Closed;
        self.out.push_back(ConnectionOutput::Close(cause));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::UserId;

    struct Fixed;
    impl Authenticator for Fixed {
        fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthRefusal> {
            match token {
                Some("good") => Ok(Identity::new(
                    User::named("alice", "Alice"),
                    Some(Duration::from_secs(60)),
                )),
                Some("bob") => Ok(Identity::new(User::named("bob", "Bob"), None)),
                Some("forever") => Ok(Identity::new(User::named("alice", "Alice"), None)),
                Some("huge") => Ok(Identity::new(
                    User::named("alice", "Alice"),
                    Some(Duration::MAX),
                )),
                _ => Err(AuthRefusal::new("bad signature")),
            }
        }
    }

    fn rid(s: &str) -> RequestId {
        RequestId::new(s).unwrap()
    }

    fn hello(token: &str) -> String {
        format!(r#"{{"v":1,"id":"h1","type":"hello","device":"d","token":"{token}"}}"#)
    }

    fn drain(c: &mut DeviceConnection) -> Vec<ConnectionOutput> {
        std::iter::from_fn(|| c.poll_output()).collect()
    }

    fn open(now: Instant) -> DeviceConnection {
        let mut c = DeviceConnection::new(now, Arc::new(ConnectionConfig::default()));
        c.handle_text(now, &hello("good"), &Fixed);
        let out = drain(&mut c);
        assert!(matches!(
            out.as_slice(),
            [ConnectionOutput::Switchboard(SwitchboardInput::Connect { hello, .. })] if hello.as_str() == "h1"
        ));
        c
    }

    #[allow(clippy::disallowed_methods)] // the origin of test time
    fn t0() -> Instant {
        Instant::now()
    }

    /// Every idle connection holds its machine: once the outputs are taken,
    /// their buffer is given back (it held ~800 bytes per connection).
    #[test]
    fn a_drained_machine_holds_no_output_buffer() {
        let c = open(t0());
        assert_eq!(c.out.capacity(), 0);
        assert!(
            std::mem::size_of::<DeviceConnection>() <= 256,
            "the machine grew to {} bytes",
            std::mem::size_of::<DeviceConnection>()
        );
    }

    #[test]
    fn a_refused_token_gets_one_generic_answer_then_close() {
        let now = t0();
        let mut c = DeviceConnection::new(now, Arc::new(ConnectionConfig::default()));
        c.handle_text(now, &hello("forged"), &Fixed);
        let out = drain(&mut c);
        match out.as_slice() {
            [
                ConnectionOutput::Send(m),
                ConnectionOutput::Close(CloseCause::Unauthorized),
            ] => {
                let ServerBody::Error(e) = &m.body else {
                    panic!("{m:?}")
                };
                assert_eq!(e.code, ErrorCode::Unauthorized);
                assert_eq!(e.re, Some(rid("h1")));
                assert_eq!(e.message, "unauthorized", "no detail on the wire");
            }
            other => panic!("{other:?}"),
        }
        c.handle_text(now, &hello("good"), &Fixed);
        assert!(drain(&mut c).is_empty(), "closed: inputs ignored");
        assert_eq!(c.poll_timeout(), None);
    }

    /// The backend's device id is the server's: a hello that claims it is
    /// answered `invalid` and reaches nothing; a proper hello may follow.
    #[test]
    fn a_hello_with_the_backends_device_id_is_refused() {
        let now = t0();
        let mut c = DeviceConnection::new(now, Arc::new(ConnectionConfig::default()));
        let claimed = format!(
            r#"{{"v":1,"id":"h0","type":"hello","device":"{}","token":"good"}}"#,
            crate::BACKEND_DEVICE
        );
        c.handle_text(now, &claimed, &Fixed);
        match drain(&mut c).as_slice() {
            [ConnectionOutput::Send(m)] => {
                let ServerBody::Error(e) = &m.body else {
                    panic!("{m:?}")
                };
                assert_eq!(e.code, ErrorCode::Invalid);
                assert_eq!(e.re, Some(rid("h0")));
                assert_eq!(
                    e.message,
                    "invalid: device \"backend\" is reserved for the server"
                );
            }
            other => panic!("{other:?}"),
        }
        c.handle_text(now, &hello("good"), &Fixed);
        assert!(matches!(
            drain(&mut c).as_slice(),
            [ConnectionOutput::Switchboard(
                SwitchboardInput::Connect { .. }
            )]
        ));
    }

    #[test]
    fn no_hello_in_time_closes() {
        let now = t0();
        let mut c = DeviceConnection::new(now, Arc::new(ConnectionConfig::default()));
        assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(5)));
        c.handle_timeout(now + Duration::from_secs(4));
        assert!(drain(&mut c).is_empty());
        c.handle_timeout(now + Duration::from_secs(5));
        assert_eq!(
            drain(&mut c),
            [ConnectionOutput::Close(CloseCause::NoHello)]
        );
    }

    #[test]
    fn a_call_command_before_hello_is_refused() {
        let now = t0();
        let mut c = DeviceConnection::new(now, Arc::new(ConnectionConfig::default()));
        c.handle_text(
            now,
            r#"{"v":1,"id":"a1","type":"accept","call_id":"c-1"}"#,
            &Fixed,
        );
        let out = drain(&mut c);
        assert!(matches!(
            out.last(),
            Some(ConnectionOutput::Close(CloseCause::Unauthorized))
        ));
    }

    #[test]
    fn every_message_gets_one_answer_and_sync_releases_the_read_limit() {
        let now = t0();
        let mut c = open(now);
        // The switchboard's welcome answers the hello.
        c.handle_sent(&welcome(3));
        assert_eq!(c.in_flight(), 0);
        for i in 0..1000 {
            assert!(c.wants_read(), "still reading at sync {i}");
            c.handle_text(
                now,
                &format!(r#"{{"v":1,"id":"s{i}","type":"sync"}}"#),
                &Fixed,
            );
            let out = drain(&mut c);
            let [ConnectionOutput::Switchboard(SwitchboardInput::Sync { id })] = out.as_slice()
            else {
                panic!("{out:?}")
            };
            // The switchboard's snapshot answers it.
            c.handle_sent(&ServerMessage::new(ServerBody::Sync(
                crate::protocol::SyncBody {
                    re: Some(id.clone()),
                    seq: 3,
                    calls: vec![],
                    ended: vec![],
                },
            )));
        }
        assert_eq!(c.in_flight(), 0);
        // Unanswered messages stop the reading at the limit.
        for i in 0..16 {
            c.handle_text(
                now,
                &format!(r#"{{"v":1,"id":"x{i}","type":"sync"}}"#),
                &Fixed,
            );
        }
        assert!(!c.wants_read());
    }

    #[test]
    fn an_event_carrying_an_answer_releases_its_command() {
        let now = t0();
        let mut c = open(now);
        let before = c.in_flight();
        c.handle_text(
            now,
            r#"{"v":1,"id":"h1","type":"hang_up","call_id":"c-1"}"#,
            &Fixed,
        );
        drain(&mut c);
        assert_eq!(c.in_flight(), before + 1);
        let ended = crate::protocol::Event::CallEnded {
            call_id: crate::id::CallId::new("c-1").unwrap(),
            reason: crate::model::Reason::HungUp,
            custom_data: None,
        };
        // An event answering nothing leaves the command in flight ...
        c.handle_sent(&ServerMessage::new(ServerBody::event(4, ended.clone())));
        assert_eq!(c.in_flight(), before + 1);
        // ... the one carrying its `re` answers it.
        c.handle_sent(&ServerMessage::new(ServerBody::Event {
            seq: 5,
            re: Some(rid("h1")),
            result: None,
            event: ended,
        }));
        assert_eq!(c.in_flight(), before);
    }

    #[test]
    fn ping_is_answered_with_the_newest_sequence_sent() {
        let now = t0();
        let mut c = open(now);
        c.handle_sent(&ServerMessage::new(ServerBody::event(
            7,
            crate::protocol::Event::CalleeRinging {
                call_id: crate::id::CallId::new("c-1").unwrap(),
                callee: UserId::new("bob").unwrap(),
            },
        )));
        c.handle_text(now, r#"{"v":1,"id":"p1","type":"ping"}"#, &Fixed);
        let out = drain(&mut c);
        assert_eq!(
            out,
            [ConnectionOutput::Send(ServerMessage::new(
                ServerBody::Pong {
                    re: Some(rid("p1")),
                    seq: Some(7)
                }
            ))]
        );
    }

    #[test]
    fn heartbeat_probes_then_drops_a_silent_peer() {
        let now = t0();
        let mut c = DeviceConnection::new(now, Arc::new(ConnectionConfig::default()));
        c.handle_text(now, &hello("forever"), &Fixed);
        drain(&mut c);
        let probe_at = now + Duration::from_secs(25);
        assert_eq!(c.poll_timeout(), Some(probe_at));
        c.handle_timeout(probe_at);
        assert_eq!(drain(&mut c), [ConnectionOutput::Probe]);
        assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(60)));
        // A pong (any traffic) rearms the heartbeat.
        let later = now + Duration::from_secs(30);
        c.handle_activity(later);
        assert_eq!(c.poll_timeout(), Some(later + Duration::from_secs(25)));
        c.handle_timeout(later + Duration::from_secs(25));
        assert_eq!(drain(&mut c), [ConnectionOutput::Probe]);
        c.handle_timeout(later + Duration::from_secs(60));
        assert_eq!(
            drain(&mut c),
            [
                ConnectionOutput::Switchboard(SwitchboardInput::Disconnect),
                ConnectionOutput::Close(CloseCause::DeadPeer)
            ]
        );
    }

    #[test]
    fn token_expiry_closes_unless_renewed_by_the_same_user() {
        let now = t0();
        let mut c = open(now); // valid 60 s
        assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(25)));
        // Renewal by another user is refused and changes nothing.
        c.handle_text(
            now,
            r#"{"v":1,"id":"r1","type":"renew","token":"bob"}"#,
            &Fixed,
        );
        let out = drain(&mut c);
        assert!(
            matches!(&out[..], [ConnectionOutput::Send(m)] if matches!(&m.body, ServerBody::Error(e) if e.code == ErrorCode::Unauthorized && e.message == "unauthorized")),
            "{out:?}"
        );
        let t = now + Duration::from_secs(50);
        c.handle_activity(t);
        c.handle_timeout(now + Duration::from_secs(60));
        let out = drain(&mut c);
        assert_eq!(
            out.last(),
            Some(&ConnectionOutput::Close(CloseCause::TokenExpired))
        );
        assert!(out.contains(&ConnectionOutput::Send(ServerMessage::new(
            ServerBody::Closing {
                reason: CloseReason::TokenExpired
            }
        ))));

        // Renewed in time: no expiry.
        let mut c = open(now);
        c.handle_text(
            now,
            r#"{"v":1,"id":"r2","type":"renew","token":"forever"}"#,
            &Fixed,
        );
        assert!(matches!(
            &drain(&mut c)[..],
            [ConnectionOutput::Send(m)] if matches!(m.body, ServerBody::Reply { .. })
        ));
        c.handle_activity(now + Duration::from_secs(59));
        c.handle_timeout(now + Duration::from_secs(61));
        assert!(drain(&mut c).is_empty());
    }

    #[test]
    fn a_huge_token_lifetime_does_not_overflow() {
        let now = t0();
        let mut c = DeviceConnection::new(now, Arc::new(ConnectionConfig::default()));
        c.handle_text(now, &hello("huge"), &Fixed);
        drain(&mut c);
        assert!(c.user().is_some());
        assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(25)));
    }

    #[test]
    fn repeated_garbage_closes_after_the_limit() {
        let now = t0();
        let mut c = open(now);
        for _ in 0..10 {
            c.handle_text(now, "not json", &Fixed);
        }
        assert!(!c.is_closed());
        c.handle_text(now, "not json", &Fixed);
        let out = drain(&mut c);
        assert_eq!(
            out.last(),
            Some(&ConnectionOutput::Close(CloseCause::ProtocolViolation))
        );
        assert!(out.contains(&ConnectionOutput::Switchboard(SwitchboardInput::Disconnect)));
    }

    #[test]
    fn every_message_is_paid_for_per_connection() {
        let now = t0();
        let config = ConnectionConfig {
            message_rate: Some((2.0, 3.0)),
            ..ConnectionConfig::default()
        };
        let mut c = DeviceConnection::new(now, Arc::new(config));
        c.handle_text(now, &hello("forever"), &Fixed); // hello is free
        drain(&mut c);
        for i in 0..3 {
            c.handle_text(
                now,
                &format!(r#"{{"v":1,"id":"p{i}","type":"ping"}}"#),
                &Fixed,
            );
            assert!(
                matches!(&drain(&mut c)[..], [ConnectionOutput::Send(m)] if matches!(m.body, ServerBody::Pong { .. }))
            );
        }
        c.handle_text(now, r#"{"v":1,"id":"s","type":"sync"}"#, &Fixed);
        let out = drain(&mut c);
        match &out[..] {
            [ConnectionOutput::Send(m)] => match &m.body {
                ServerBody::Error(e) => {
                    assert_eq!(e.code, ErrorCode::RateLimited);
                    assert_eq!(e.re, Some(rid("s")));
                    assert_eq!(e.retry_after_ms, Some(500));
                }
                other => panic!("{other:?}"),
            },
            other => panic!("the 4th message reached {other:?}"),
        }
        // Half a second later one token is back.
        let later = now + Duration::from_millis(500);
        c.handle_text(later, r#"{"v":1,"id":"s2","type":"sync"}"#, &Fixed);
        assert!(matches!(
            &drain(&mut c)[..],
            [ConnectionOutput::Switchboard(SwitchboardInput::Sync { .. })]
        ));
    }

    #[test]
    fn a_second_hello_is_answered_not_obeyed() {
        let now = t0();
        let mut c = open(now);
        c.handle_text(now, &hello("good"), &Fixed);
        let out = drain(&mut c);
        assert!(
            matches!(&out[..], [ConnectionOutput::Send(m)] if matches!(&m.body, ServerBody::Error(e) if e.re == Some(rid("h1")))),
            "{out:?}"
        );
    }

    fn ringing(call: &str, remaining: u64) -> ServerMessage {
        ServerMessage::new(ServerBody::Event {
            seq: 1,
            re: None,
            result: None,
            event: Event::IncomingCall {
                call_id: CallId::new(call).unwrap(),
                caller: User::named("bob", "Bob"),
                call_type: crate::model::CallType::Voice,
                callees: vec![User::named("alice", "Alice")].into(),
                custom_data: None,
                ring_remaining_ms: remaining,
                ring_timeout_ms: 60_000,
            },
        })
    }

    /// The switchboard's welcome answering the hello `h1`, at `seq`.
    fn welcome(seq: u64) -> ServerMessage {
        ServerMessage::new(ServerBody::Welcome {
            re: Some(rid("h1")),
            user: User::named("alice", "Alice"),
            device: DeviceId::new("d").unwrap(),
            seq,
            resumed: true,
        })
    }

    fn receipt(id: &str, call: &str) -> String {
        format!(r#"{{"v":1,"id":"{id}","type":"received","call_id":"{call}"}}"#)
    }

    /// A receipt is never answered, so it is never in flight: a client
    /// acknowledging many calls is never throttled for it, and the reading
    /// limit still counts only what will be answered.
    #[test]
    fn a_receipt_is_forwarded_once_and_never_in_flight() {
        let now = t0();
        let mut c = open(now);
        c.handle_sent(&welcome(0));
        c.handle_sent(&ringing("c-1", 30_000));
        c.handle_sent(&ringing("c-1", 30_000)); // replayed: still one
        c.handle_sent(&ringing("c-2", 0)); // already over: no receipt due
        assert_eq!(c.awaiting_receipt(), 1);
        c.handle_text(now, &receipt("r1", "c-1"), &Fixed);
        assert_eq!(
            drain(&mut c),
            [ConnectionOutput::Switchboard(SwitchboardInput::Receipt {
                call_id: CallId::new("c-1").unwrap()
            })]
        );
        assert_eq!(c.in_flight(), 0);
        assert_eq!(c.protocol_errors(), 0);
        // Repeated, over, unknown: nothing goes further, nothing answers,
        // each counts as a protocol error.
        for (id, call) in [("r2", "c-1"), ("r3", "c-2"), ("r4", "c-9")] {
            c.handle_text(now, &receipt(id, call), &Fixed);
            assert_eq!(drain(&mut c), [], "{call}");
        }
        assert_eq!(c.in_flight(), 0);
        assert_eq!(c.protocol_errors(), 3);
        assert!(c.wants_read());
    }

    /// What a client that never acknowledges makes the machine hold is
    /// bounded; a flood of bogus receipts closes the connection like any
    /// other protocol abuse.
    #[test]
    fn receipts_awaited_are_bounded_and_bogus_ones_close_the_connection() {
        let now = t0();
        let mut c = open(now);
        for i in 0..(MAX_AWAITING_RECEIPT + 10) {
            c.handle_sent(&ringing(&format!("c-{i}"), 30_000));
        }
        assert_eq!(c.awaiting_receipt(), MAX_AWAITING_RECEIPT);
        // The newest are kept.
        let newest = format!("c-{}", MAX_AWAITING_RECEIPT + 9);
        c.handle_text(now, &receipt("r", &newest), &Fixed);
        assert!(matches!(
            &drain(&mut c)[..],
            [ConnectionOutput::Switchboard(
                SwitchboardInput::Receipt { .. }
            )]
        ));
        for i in 0..=10 {
            c.handle_text(now, &receipt(&format!("b{i}"), "c-bogus"), &Fixed);
        }
        let out = drain(&mut c);
        assert_eq!(
            out.last(),
            Some(&ConnectionOutput::Close(CloseCause::ProtocolViolation)),
            "{out:?}"
        );
    }

    /// A ringing callee call learned from a snapshot may be acknowledged.
    #[test]
    fn a_ringing_call_in_a_snapshot_awaits_a_receipt() {
        let now = t0();
        let mut c = open(now);
        let snap = crate::protocol::CallSnapshot {
            call_id: CallId::new("c-7").unwrap(),
            role: Role::Callee,
            caller: User::named("bob", "Bob"),
            caller_device: DeviceId::new("phone").unwrap(),
            call_type: crate::model::CallType::Voice,
            callees: vec![User::named("alice", "Alice")].into(),
            custom_data: None,
            state: SnapshotState::Ringing,
            ring_remaining_ms: 10_000,
            ring_timeout_ms: 60_000,
            device: None,
            outcomes: vec![],
            delivered: vec![],
            participants: vec![],
        };
        c.handle_sent(&ServerMessage::new(ServerBody::Sync(
            crate::protocol::SyncBody::new(None, 1, vec![snap], vec![]),
        )));
        c.handle_text(now, &receipt("r", "c-7"), &Fixed);
        assert!(matches!(
            &drain(&mut c)[..],
            [ConnectionOutput::Switchboard(
                SwitchboardInput::Receipt { .. }
            )]
        ));
    }

    /// Receipts are paid for like every message; one over the rate is
    /// dropped unanswered (the answer would be the only write it causes).
    #[test]
    fn a_receipt_over_the_message_rate_is_dropped_unanswered() {
        let now = t0();
        let config = ConnectionConfig {
            message_rate: Some((1.0, 1.0)),
            ..ConnectionConfig::default()
        };
        let mut c = DeviceConnection::new(now, Arc::new(config));
        c.handle_text(now, &hello("forever"), &Fixed);
        drain(&mut c);
        c.handle_sent(&ringing("c-1", 30_000));
        c.handle_text(now, r#"{"v":1,"id":"p","type":"ping"}"#, &Fixed);
        drain(&mut c); // the pong took the only token
        let in_flight = c.in_flight();
        c.handle_text(now, &receipt("r", "c-1"), &Fixed);
        assert_eq!(drain(&mut c), []);
        assert_eq!((c.in_flight(), c.protocol_errors()), (in_flight, 0));
        // A second later it would go through.
        let later = now + Duration::from_secs(1);
        c.handle_text(later, &receipt("r", "c-1"), &Fixed);
        assert!(matches!(
            &drain(&mut c)[..],
            [ConnectionOutput::Switchboard(
                SwitchboardInput::Receipt { .. }
            )]
        ));
    }
}
