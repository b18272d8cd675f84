//! The `Client`: one device of one user, and its builder.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use invitation_core::protocol::{
    CalleeStatus, Command, InviteRequest, PushPlatform, PushRegistration, ReplyResult,
};
use invitation_core::{
    AppEvent, CallId, CallType, ClientSession, CommandError, CustomData, DeviceId, SessionConfig,
    User, UserId, ValidationError,
};
use invitation_transport::endpoint::{Endpoint, EndpointError};
use invitation_transport::{BoxTransport, Transport, TransportError};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::driver::{Driver, DriverMsg, LinkState};
use crate::events::{Fanout, InvitationEvents};
use crate::token::{self, TokenProvider};

/// Events kept for a slow subscriber of [`Client::events`] before it sees
/// `Lagged`.
pub const EVENT_STREAM_CAPACITY: usize = 1024;

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The switchboard refused it (typed: not found, ended, busy ...).
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The transport failed for good (rejected, protocol error), or the
    /// first connection could not be made.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The server refused the token (garbage, wrong secret, expired, another
    /// user), and a fresh one from the token provider too, if there is one.
    /// The client stopped: it does not reconnect.
    #[error("the server refused the token: {0}")]
    Unauthorized(String),
    /// Another connection with the same user and device took over this one
    /// (the newest connection wins). The client stopped: it does not
    /// reconnect, so that two processes do not take turns forever.
    #[error("another connection with the same user and device took over")]
    Replaced,
    /// The server closed the connection because the token expired, and no
    /// token provider was set to renew it. The client stopped.
    #[error("the token expired and no token provider was set to renew it")]
    TokenExpired,
    /// The token provider failed. The client stopped.
    #[error("the token provider failed: {0}")]
    TokenProvider(String),
    /// No answer within the command timeout. The command was given up: it
    /// is never sent again, and an invite the server had taken is canceled
    /// by the client (its call never reaches the app).
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// An argument broke its grammar (checked before anything is sent).
    #[error("invalid argument: {0}")]
    Invalid(#[from] ValidationError),
}

/// Why a builder could not build.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// `.user(...)` was not called.
    #[error("the user identity is missing: call .user(...)")]
    MissingUser,
    /// The device id breaks the id grammar.
    #[error("invalid device id: {0}")]
    InvalidDevice(ValidationError),
    /// The default ring timeout is outside 1-600 s.
    #[error("ring timeout must be 1..=600 s, got {0:?}")]
    RingTimeout(Duration),
    /// The server URL picks no transport: a wrong scheme, no host, or a
    /// backend that is not built in.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
}

/// A successful invitation.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Invitation {
    /// The call (also the media room id).
    pub call_id: CallId,
    /// Each callee's state right after the invite (ringing, offline, busy ...).
    pub callees: Vec<CalleeStatus>,
    /// Ring time granted.
    pub ring_remaining: Duration,
    /// Glare: the callee was inviting you at the same moment, so your invite
    /// accepted their call instead; this is the user who had invited you.
    pub joined: Option<User>,
}

/// Settings with defaults; set through the builder.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) ring_timeout: Option<Duration>,
    pub(crate) command_timeout: Duration,
    pub(crate) ping_every: Duration,
    pub(crate) dead_after: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) session: SessionConfig,
    pub(crate) jitter_seed: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            ring_timeout: None,
            command_timeout: Duration::from_secs(30),
            ping_every: Duration::from_secs(25),
            dead_after: Duration::from_secs(60),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            session: SessionConfig::default(),
            jitter_seed: None,
        }
    }
}

/// Builder state: no transport yet (`build` is not available).
#[derive(Debug)]
pub struct NoTransport;

/// Builder state: a transport, or a server URL to pick one from, is set.
pub struct WithTransport(Reach);

/// How the client reaches the switchboard, until `build`.
enum Reach {
    Transport(BoxTransport),
    Server(Endpoint),
}

impl std::fmt::Debug for WithTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WithTransport")
    }
}

/// Builds a [`Client`]. Forgetting the transport is a compile error:
/// `build` exists only once `.transport(...)` was called.
///
/// ```compile_fail
/// # use invitation_handler::Client;
/// let client = Client::builder().user(invitation_core::User::named("a", "A")).build();
/// ```
#[derive(Debug)]
pub struct ClientBuilder<T> {
    transport: T,
    user: Option<User>,
    device: String,
    token: Option<String>,
    token_provider: Option<ProviderSlot>,
    handlers: Vec<Arc<dyn InvitationEvents>>,
    options: Options,
}

/// The token provider, in the builder (printed without its contents).
#[derive(Clone)]
struct ProviderSlot(TokenProvider);

impl std::fmt::Debug for ProviderSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenProvider")
    }
}

impl std::fmt::Debug for dyn InvitationEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dyn InvitationEvents")
    }
}

impl ClientBuilder<NoTransport> {
    pub(crate) fn new() -> Self {
        Self {
            transport: NoTransport,
            user: None,
            device: "default".to_owned(),
            token: None,
            token_provider: None,
            handlers: Vec::new(),
            options: Options::default(),
        }
    }

    /// How to reach the switchboard (memory hub, mock, WebSocket ...).
    pub fn transport(self, transport: impl Transport) -> ClientBuilder<WithTransport> {
        self.reach(Reach::Transport(Arc::new(transport)))
    }

    /// The server, by URL: its scheme picks the transport (`ws://`,
    /// `wss://`). Give an [`Endpoint`] to force a transport, set the
    /// trusted TLS roots or the connect timeout:
    /// `.server(Endpoint::new(url).tls(ClientTls::with_ca_file("ca.pem")?))`.
    /// A URL that picks no transport fails [`build`](ClientBuilder::build)
    /// with [`BuildError::Endpoint`]. The in-process memory hub has no URL:
    /// give it with [`transport`](ClientBuilder::transport).
    pub fn server(self, endpoint: impl Into<Endpoint>) -> ClientBuilder<WithTransport> {
        self.reach(Reach::Server(endpoint.into()))
    }

    fn reach(self, reach: Reach) -> ClientBuilder<WithTransport> {
        ClientBuilder {
            transport: WithTransport(reach),
            user: self.user,
            device: self.device,
            token: self.token,
            token_provider: self.token_provider,
            handlers: self.handlers,
            options: self.options,
        }
    }
}

impl<T> ClientBuilder<T> {
    /// Who this client is (the server takes the identity from the token;
    /// this must match it).
    pub fn user(mut self, user: User) -> Self {
        self.user = Some(user);
        self
    }

    /// This device's id (default `"default"`); each device of a user rings.
    pub fn device(mut self, device: impl Into<String>) -> Self {
        self.device = device.into();
        self
    }

    /// The bearer token sent in `hello` (required by `invitation-server`).
    /// A token that expires needs renewing: set a
    /// [`token_provider`](Self::token_provider) too, or call
    /// [`Client::renew_token`] in time.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Where fresh tokens come from: an async callback (typically asking
    /// your backend) that returns a new bearer token. The client calls it
    ///
    /// * for the first connection, if no [`token`](Self::token) was given;
    /// * before the current token expires, 80 % through its lifetime (read
    ///   from the JWT's `exp` and `iat`, without verifying it), and sends
    ///   the new token in band (`renew`) without reconnecting;
    /// * when the server closes the connection because the token expired;
    /// * once when the server refuses a token, before giving up with
    ///   [`ClientError::Unauthorized`].
    ///
    /// An error from the callback stops the client with
    /// [`ClientError::TokenProvider`] when no usable token is left.
    ///
    /// ```
    /// # use invitation_handler::Client;
    /// # let (transport, _server) = invitation_transport::mock::pair();
    /// let client = Client::builder()
    ///     .user(invitation_core::User::named("bob", "Bob"))
    ///     .token_provider(|| async {
    ///         // e.g. an HTTPS request to your backend
    ///         Ok::<_, std::io::Error>("eyJ...".to_owned())
    ///     })
    ///     .transport(transport)
    ///     .build()
    ///     .unwrap();
    /// ```
    pub fn token_provider<F, Fut, E>(mut self, provider: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<String, E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.token_provider = Some(ProviderSlot(token::provider(provider)));
        self
    }

    /// Adds an event handler. Calling it again **adds** another one: every
    /// handler sees every event, in the order they were added (one call per
    /// event, the next handler after the previous one returned). To keep
    /// one handler, call it once.
    pub fn handler(mut self, handler: impl InvitationEvents) -> Self {
        self.handlers.push(Arc::new(handler));
        self
    }

    /// Default ring timeout of [`Client::invite`] (server default otherwise).
    pub fn ring_timeout(mut self, timeout: Duration) -> Self {
        self.options.ring_timeout = Some(timeout);
        self
    }

    /// How long a command waits for its answer, reconnects included (30 s).
    /// Past it the command is given up for good (see [`ClientError::Timeout`]).
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.options.command_timeout = timeout;
        self
    }

    /// Heartbeat: ping after this much silence (25 s), and give the
    /// connection up after `dead_after` without any message (60 s).
    pub fn heartbeat(mut self, ping_every: Duration, dead_after: Duration) -> Self {
        self.options.ping_every = ping_every;
        self.options.dead_after = dead_after;
        self
    }

    /// Reconnect backoff bounds (250 ms to 30 s, exponential with jitter).
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.options.backoff_min = min;
        self.options.backoff_max = max.max(min);
        self
    }

    /// Seeds the reconnect jitter (default: from the clock, so that devices
    /// spread out). Set it to replay a simulation exactly.
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.options.jitter_seed = Some(seed);
        self
    }

    /// Client-side session settings (late-ring threshold, fallback margin).
    pub fn session_config(mut self, config: SessionConfig) -> Self {
        self.options.session = config;
        self
    }
}

impl ClientBuilder<WithTransport> {
    /// Validates the settings (no I/O). Call [`Client::connect`] next.
    pub fn build(self) -> Result<Client, BuildError> {
        let user = self.user.ok_or(BuildError::MissingUser)?;
        let device = DeviceId::new(&self.device).map_err(BuildError::InvalidDevice)?;
        if let Some(t) = self.options.ring_timeout {
            if t < Duration::from_secs(1) || t > Duration::from_secs(600) {
                return Err(BuildError::RingTimeout(t));
            }
        }
        let transport = match self.transport.0 {
            Reach::Transport(t) => t,
            Reach::Server(endpoint) => endpoint.transport()?,
        };
        // The session owns every command's life, its deadline included.
        let mut session_config = self.options.session.clone();
        session_config.command_deadline = self.options.command_timeout;
        let session = ClientSession::new(
            user.id.clone(),
            device.clone(),
            &request_prefix(&user.id, &device),
            session_config,
        );
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (events_tx, _) = broadcast::channel(EVENT_STREAM_CAPACITY);
        let (state_tx, state_rx) = watch::channel(LinkState::Idle);
        let handler: Arc<dyn InvitationEvents> = match self.handlers.len() {
            1 => self.handlers.into_iter().next().expect("one"),
            _ => Arc::new(Fanout(self.handlers)),
        };
        let last_seq = Arc::new(AtomicU64::new(u64::MAX));
        let parts = Parts {
            transport,
            handler,
            session,
            cmd_rx,
            state_tx,
            token: self.token,
            token_provider: self.token_provider.map(|p| p.0),
            last_seq: last_seq.clone(),
        };
        Ok(Client {
            inner: Arc::new(Inner {
                user,
                device,
                options: self.options,
                cmd_tx,
                events_tx,
                state_rx,
                parts: Mutex::new(Some(parts)),
                last_seq,
            }),
        })
    }
}

/// Request ids must be unique across app restarts (the server remembers
/// them for 10 minutes): the prefix mixes the device with the start time.
fn request_prefix(user: &UserId, device: &DeviceId) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user
        .as_str()
        .bytes()
        .chain(device.as_str().bytes())
        .chain(nanos.to_le_bytes())
    {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:x}")
}

pub(crate) struct Parts {
    pub(crate) transport: BoxTransport,
    pub(crate) handler: Arc<dyn InvitationEvents>,
    pub(crate) session: ClientSession,
    pub(crate) cmd_rx: mpsc::UnboundedReceiver<DriverMsg>,
    pub(crate) state_tx: watch::Sender<LinkState>,
    pub(crate) token: Option<String>,
    pub(crate) token_provider: Option<TokenProvider>,
    pub(crate) last_seq: Arc<AtomicU64>,
}

struct Inner {
    user: User,
    device: DeviceId,
    options: Options,
    cmd_tx: mpsc::UnboundedSender<DriverMsg>,
    events_tx: broadcast::Sender<AppEvent>,
    state_rx: watch::Receiver<LinkState>,
    parts: Mutex<Option<Parts>>,
    /// The session's last applied sequence number (`u64::MAX`: none).
    last_seq: Arc<AtomicU64>,
}

/// One device of one user: issues commands and runs the handler. Cheap to
/// clone (a handle); the work happens in a background task started by
/// [`Client::connect`].
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("user", &self.inner.user.id)
            .field("device", &self.inner.device)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Starts building a client.
    pub fn builder() -> ClientBuilder<NoTransport> {
        ClientBuilder::new()
    }

    /// This client's user.
    pub fn user(&self) -> &User {
        &self.inner.user
    }

    /// This client's device.
    pub fn device(&self) -> &DeviceId {
        &self.inner.device
    }

    /// Starts the background task and waits until the first connection is
    /// established (the server said `welcome`). Later losses are repaired in
    /// the background (reconnect with backoff, resume, resend).
    ///
    /// Fails if the first attempt fails: [`ClientError::Unauthorized`] when
    /// the server refuses the token (after one fresh token from the token
    /// provider, if set), [`ClientError::Transport`] when the server cannot
    /// be reached. Calling it twice is a no-op.
    ///
    /// Some failures stop a client for good, also later: a refused token,
    /// an expired token nothing renews, a connection replaced by another
    /// one of the same user and device. The client then does not reconnect;
    /// the event stream says so with
    /// `AppEvent::Connection(ConnectionState::Stopped { reason })`, and
    /// commands fail with the same error as here.
    pub async fn connect(&self) -> Result<(), ClientError> {
        let parts = self.inner.parts.lock().expect("client lock").take();
        if let Some(parts) = parts {
            let driver = Driver::new(parts, self.clone(), self.inner.options.clone());
            tokio::spawn(driver.run());
        }
        let mut state = self.inner.state_rx.clone();
        loop {
            match &*state.borrow_and_update() {
                LinkState::Up => return Ok(()),
                LinkState::Failed(stop) => return Err(stop.to_error()),
                LinkState::Closed => return Err(ClientError::Closed),
                LinkState::Idle | LinkState::Reconnecting => {}
            }
            if state.changed().await.is_err() {
                return Err(ClientError::Closed);
            }
        }
    }

    /// The last event sequence number this device applied (for
    /// diagnostics and tests: it matches the server's once in step).
    pub fn last_seq(&self) -> Option<u64> {
        match self.inner.last_seq.load(Ordering::Relaxed) {
            u64::MAX => None,
            n => Some(n),
        }
    }

    /// Why the client stopped for good, if it did (see [`Client::connect`]).
    pub fn stopped(&self) -> Option<ClientError> {
        match &*self.inner.state_rx.borrow() {
            LinkState::Failed(stop) => Some(stop.to_error()),
            _ => None,
        }
    }

    /// The error for a command the driver could not take: why it stopped,
    /// or `Closed`.
    fn gone(&self) -> ClientError {
        self.stopped().unwrap_or(ClientError::Closed)
    }

    /// True while a connection is up.
    pub fn is_connected(&self) -> bool {
        matches!(*self.inner.state_rx.borrow(), LinkState::Up)
    }

    /// Every event this device sees, including those the ten callbacks do
    /// not cover (answered elsewhere, receipts, call ended, connection
    /// state, resync). A subscriber more than [`EVENT_STREAM_CAPACITY`]
    /// events behind gets `Lagged`.
    pub fn events(&self) -> broadcast::Receiver<AppEvent> {
        self.inner.events_tx.subscribe()
    }

    pub(crate) fn events_tx(&self) -> &broadcast::Sender<AppEvent> {
        &self.inner.events_tx
    }

    /// Invites `callees` (user ids) with the builder's default ring timeout.
    pub async fn invite<I, S>(
        &self,
        callees: I,
        call_type: CallType,
        custom_data: Option<CustomData>,
    ) -> Result<Invitation, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let callees = callees
            .into_iter()
            .map(|c| UserId::new(c.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let timeout_s = self
            .inner
            .options
            .ring_timeout
            .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX));
        self.invite_with(
            InviteRequest::new(callees, call_type)
                .with_custom_data(custom_data)
                .with_timeout_s(timeout_s),
        )
        .await
    }

    /// Invites with every field of the request under your control.
    pub async fn invite_with(&self, request: InviteRequest) -> Result<Invitation, ClientError> {
        match self.command(Command::Invite(request)).await? {
            ReplyResult::Invited {
                call_id,
                ring_remaining_ms,
                callees,
            } => Ok(Invitation {
                call_id,
                callees,
                ring_remaining: Duration::from_millis(ring_remaining_ms),
                joined: None,
            }),
            ReplyResult::Joined { call_id, caller } => Ok(Invitation {
                call_id,
                callees: Vec::new(),
                ring_remaining: Duration::ZERO,
                joined: Some(caller),
            }),
            other => Err(ClientError::Command(CommandError::Rejected {
                code: invitation_core::ErrorCode::Invalid,
                message: format!("unexpected reply to invite: {other:?}"),
            })),
        }
    }

    /// Accepts an incoming call on this device.
    pub async fn accept(&self, call_id: &CallId) -> Result<(), ClientError> {
        self.accept_with(call_id, None).await
    }

    /// Accepts with custom data for the caller (it arrives with
    /// `on_outgoing_call_accepted`, as `ctx.custom_data()`) and for this
    /// user's other devices (with their "answered elsewhere").
    pub async fn accept_with(
        &self,
        call_id: &CallId,
        custom_data: Option<CustomData>,
    ) -> Result<(), ClientError> {
        self.done(Command::accept(call_id.clone()).with_custom_data(custom_data))
            .await
    }

    /// Declines an incoming call (for all of this user's devices).
    pub async fn decline(&self, call_id: &CallId) -> Result<(), ClientError> {
        self.decline_with(call_id, None).await
    }

    /// Declines with custom data for the caller (`on_outgoing_call_declined`,
    /// as `ctx.custom_data()`) and this user's other devices.
    pub async fn decline_with(
        &self,
        call_id: &CallId,
        custom_data: Option<CustomData>,
    ) -> Result<(), ClientError> {
        self.done(Command::decline(call_id.clone(), false).with_custom_data(custom_data))
            .await
    }

    /// Declines an incoming call as busy: the caller sees "busy".
    pub async fn decline_busy(&self, call_id: &CallId) -> Result<(), ClientError> {
        self.decline_busy_with(call_id, None).await
    }

    /// Declines as busy with custom data: the caller's
    /// `on_outgoing_call_rejected_cause_busy` gets it as `custom_data`.
    pub async fn decline_busy_with(
        &self,
        call_id: &CallId,
        custom_data: Option<CustomData>,
    ) -> Result<(), ClientError> {
        self.done(Command::decline(call_id.clone(), true).with_custom_data(custom_data))
            .await
    }

    /// Cancels an outgoing call (every callee still ringing stops).
    pub async fn cancel(&self, call_id: &CallId) -> Result<(), ClientError> {
        self.cancel_with(call_id, None).await
    }

    /// Cancels with custom data: every callee whose ring it stops gets it
    /// with `on_incoming_call_canceled`.
    pub async fn cancel_with(
        &self,
        call_id: &CallId,
        custom_data: Option<CustomData>,
    ) -> Result<(), ClientError> {
        self.done(Command::cancel(call_id.clone()).with_custom_data(custom_data))
            .await
    }

    /// Leaves the call. The others go on while at least two remain (they
    /// see [`AppEvent::ParticipantLeft`]); otherwise the call ends for
    /// everyone. The caller hanging up before anyone answered cancels.
    pub async fn hang_up(&self, call_id: &CallId) -> Result<(), ClientError> {
        self.hang_up_with(call_id, None).await
    }

    /// Leaves with custom data, delivered with the `CallEnded` events this
    /// hang-up causes (and, from the caller, with the cancel of callees
    /// still ringing).
    pub async fn hang_up_with(
        &self,
        call_id: &CallId,
        custom_data: Option<CustomData>,
    ) -> Result<(), ClientError> {
        self.done(Command::hang_up(call_id.clone()).with_custom_data(custom_data))
            .await
    }

    /// Leaves the call: the same as [`Client::hang_up`].
    pub async fn leave(&self, call_id: &CallId) -> Result<(), ClientError> {
        self.hang_up(call_id).await
    }

    /// Rings more users into an accepted call you are in. The callee limit
    /// counts everyone the call ever invited. The answer lists the added
    /// callees' states (a user whose own invitation was ringing you is in
    /// the call at once: status `joined`).
    pub async fn invite_more<I, S>(
        &self,
        call_id: &CallId,
        callees: I,
    ) -> Result<Invitation, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let callees = callees
            .into_iter()
            .map(|c| UserId::new(c.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let command = Command::Add {
            call_id: call_id.clone(),
            callees,
        };
        match self.command(command).await? {
            ReplyResult::Invited {
                call_id,
                ring_remaining_ms,
                callees,
            } => Ok(Invitation {
                call_id,
                callees,
                ring_remaining: Duration::from_millis(ring_remaining_ms),
                joined: None,
            }),
            other => Err(ClientError::Command(CommandError::Rejected {
                code: invitation_core::ErrorCode::Invalid,
                message: format!("unexpected reply to add: {other:?}"),
            })),
        }
    }

    /// Joins a call that goes on, on this device: for an invitee whose ring
    /// ended (timeout, declined, missed) or who left. Everyone in the call
    /// sees [`AppEvent::ParticipantJoined`]; so do this user's other
    /// devices ("joined elsewhere").
    pub async fn join(&self, call_id: &CallId) -> Result<(), ClientError> {
        self.done(Command::Join {
            call_id: call_id.clone(),
        })
        .await
    }

    /// Ends the call for everyone in it. The server's end policy says who
    /// may (by default the caller only); others get `wrong_role`.
    pub async fn end(&self, call_id: &CallId) -> Result<(), ClientError> {
        self.done(Command::End {
            call_id: call_id.clone(),
        })
        .await
    }

    /// Stores this device's push credentials on the server, so that the
    /// device is woken through the operator's push gateway when it is
    /// called while not connected (docs/push.md). Replaces what this
    /// device registered before; they outlive the connection. A token that
    /// is empty, over 4,096 bytes or has control characters is refused
    /// here ([`ClientError::Invalid`]) before anything is sent.
    pub async fn register_push(
        &self,
        platform: PushPlatform,
        token: impl Into<String>,
    ) -> Result<(), ClientError> {
        let registration = PushRegistration::new(platform, token.into());
        registration.validate()?;
        self.done(Command::RegisterPush(registration)).await
    }

    /// Forgets this device's push credentials on the server.
    pub async fn unregister_push(&self) -> Result<(), ClientError> {
        self.done(Command::UnregisterPush).await
    }

    /// Tells the server the app went to the background (`true`) or came
    /// back (`false`): while every connected device of the user is in the
    /// background, invitations are also pushed. It holds for the live
    /// connection: a new connection starts in the foreground, so an app
    /// that reconnects while in the background says it again.
    pub async fn set_background(&self, background: bool) -> Result<(), ClientError> {
        self.done(Command::AppState { background }).await
    }

    /// Replaces the bearer token before it expires: sent in band (`renew`)
    /// on the live connection, and used for every later reconnect. The
    /// server closes a connection whose token expired without renewal.
    pub async fn renew_token(&self, token: impl Into<String>) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .cmd_tx
            .send(DriverMsg::Renew {
                token: token.into(),
                done: tx,
            })
            .map_err(|_| self.gone())?;
        match rx.await {
            Ok(result) => result.map(|_| ()).map_err(|e| self.command_error(e)),
            Err(_) => Err(self.gone()),
        }
    }

    /// Stops the background task and closes the connection. Commands still
    /// waiting fail with [`ClientError::Closed`].
    pub async fn close(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.cmd_tx.send(DriverMsg::Close(tx)).is_ok() {
            let _ = rx.await;
        }
        // A client never connected has its parts still here: drop them.
        self.inner.parts.lock().expect("client lock").take();
    }

    async fn done(&self, command: Command) -> Result<(), ClientError> {
        self.command(command).await.map(|_| ())
    }

    async fn command(&self, command: Command) -> Result<ReplyResult, ClientError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .cmd_tx
            .send(DriverMsg::Command { command, done: tx })
            .map_err(|_| self.gone())?;
        // No timer here: the session gives the command up at its deadline
        // and answers `TimedOut`; a dropped future is abandoned by the driver.
        match rx.await {
            Ok(result) => result.map_err(|e| self.command_error(e)),
            Err(_) => Err(self.gone()),
        }
    }

    fn command_error(&self, e: CommandError) -> ClientError {
        match e {
            CommandError::TimedOut => ClientError::Timeout(self.inner.options.command_timeout),
            e => ClientError::Command(e),
        }
    }
}
