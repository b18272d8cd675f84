//! One client connection, from the first byte to the close: HTTP routing,
//! the upgrade, then a thin shell around the core's connection machine
//! (`DeviceConnection`): frames in, the machine's outputs out, the hub's
//! messages through the machine's accounting to the socket.
//!
//! The shell ([`Session`]) is written once, over a [`Link`]: the WebSocket
//! ([`WsLink`], here) and the HTTP transport's session
//! ([`crate::http_transport`]) are two links under the same loop, so the
//! hub hand-over, load shedding, the outbound queue, the deadlines on every
//! write and the accounting exist once for both.
//!
//! The WebSocket link owns only what is about its socket: the kernel's send
//! buffer is bounded, a started message must finish in time
//! ([`crate::metered`]), and WebSocket read errors map to close codes.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use invitation_core::protocol::{Command, ServerMessage};
use invitation_core::{
    AuthRefusal, Authenticator, CloseCause, ConnId, ConnectionOutput, DeviceConnection, Identity,
    SwitchboardInput,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::auth::Authority;
use crate::http::{self, Prefixed, Route};
use crate::http_transport::Sessions;
use crate::hub::{Hub, HubMsg, Outbound, Queued, Stamp};
use crate::metered::{Metered, client_frame_len};
use crate::metrics::Refusal;
use crate::outbox::Outbox;
use crate::server::Shared;
use crate::tls::Stream;

/// Bytes of queued frames written to the socket in one go.
const WRITE_BATCH: usize = 64 * 1024;

type Ws = WebSocketStream<Metered<Prefixed<Stream>>>;

/// Serves one accepted TCP connection to the end. Never panics on input.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    key: ConnId,
    sessions: Arc<Sessions>,
) {
    // The task's state is as large as its largest await. The handshake is
    // boxed (it is over by the time the connection idles) and `run` borrows
    // the session: an async fn taking a large `self` by value keeps it twice
    // in its state. Together ~1 KB less per idle connection.
    let Some(ws) = Box::pin(upgrade(stream, peer, &shared, sessions)).await else {
        return;
    };
    let mut session = Session::new(WsLink { ws }, peer, shared, key);
    session.run().await;
}

/// TLS (when the server has it), HTTP routing and the WebSocket upgrade;
/// `None` when the connection was answered (health, metrics, 404, refusal,
/// the demo, the HTTP transport) or failed.
async fn upgrade(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    sessions: Arc<Sessions>,
) -> Option<Ws> {
    // One deadline for the whole handshake: TLS, request head and upgrade.
    let deadline = Instant::now() + shared.config.handshake_timeout();
    let Some(mut stream) = crate::tls::handshake(tcp, shared.tls.as_ref(), deadline, peer).await
    else {
        shared.metrics.refused(Refusal::Handshake);
        return None;
    };
    let (route, bytes) = match timeout_at(deadline, http::read_head(&mut stream)).await {
        Ok(Ok(v)) => v,
        failed => {
            shared.metrics.refused(Refusal::Handshake);
            let answer = match failed {
                Ok(Err(http::HeadError::TooLarge)) => {
                    Some(("431 Request Header Fields Too Large", "too large\n"))
                }
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "bad request head");
                    Some(("400 Bad Request", "bad request\n"))
                }
                _ => {
                    tracing::debug!(%peer, "handshake timeout");
                    None
                }
            };
            if let Some((status, body)) = answer {
                let _ = http::respond(&mut stream, status, "text/plain", body).await;
            }
            return None;
        }
    };
    let origin = match route {
        Route::Health => {
            let (status, body) = health(shared);
            let _ = http::respond(&mut stream, status, "text/plain", body).await;
            return None;
        }
        Route::Metrics => {
            let body = shared.metrics.render();
            let _ = http::respond(&mut stream, "200 OK", "text/plain; version=0.0.4", &body).await;
            return None;
        }
        Route::NotFound => {
            let _ = http::respond(&mut stream, "404 Not Found", "text/plain", "not found\n").await;
            return None;
        }
        Route::Demo(target) => {
            crate::demo::answer(&mut stream, &target, shared).await;
            return None;
        }
        Route::Sessions => {
            // The HTTP transport: hyper reads the requests, starting with
            // the bytes already read.
            crate::http_transport::serve_connection(
                Prefixed::new(bytes, stream),
                peer,
                shared.clone(),
                sessions,
            )
            .await;
            return None;
        }
        Route::Upgrade { origin } => origin,
    };
    if !http::origin_allowed(origin.as_deref(), &shared.config.allowed_origins)
        && !crate::demo::own_origin(&shared.config, origin.as_deref(), &bytes)
    {
        tracing::info!(%peer, ?origin, "origin not allowed");
        shared.metrics.refused(Refusal::Origin);
        let _ = http::respond(
            &mut stream,
            "403 Forbidden",
            "text/plain",
            "origin not allowed\n",
        )
        .await;
        return None;
    }
    let _ = stream.tcp().set_nodelay(true);
    // What the kernel may hold for a client that stops reading. Linux
    // doubles the value for its bookkeeping.
    let _ =
        socket2::SockRef::from(stream.tcp()).set_send_buffer_size(shared.config.send_buffer_bytes);
    let config = WebSocketConfig::default()
        .read_buffer_size(shared.config.read_buffer_bytes)
        // Writes are batched by the session loop (feed, then one flush).
        .write_buffer_size(WRITE_BATCH)
        // Above the batch: room for two of the largest server messages (an
        // event carries custom data and up to nine callees). Must exceed the
        // batch size, or tungstenite panics.
        .max_write_buffer_size(WRITE_BATCH + 2 * 64 * 1024)
        .max_message_size(Some(shared.config.max_message_bytes))
        .max_frame_size(Some(shared.config.max_message_bytes));
    let metered = Metered::new(
        Prefixed::new(bytes, stream),
        shared.config.message_timeout(),
    );
    let upgrade = tokio_tungstenite::accept_async_with_config(metered, Some(config));
    match timeout_at(deadline, upgrade).await {
        Ok(Ok(mut ws)) => {
            ws.get_mut().reset();
            Some(ws)
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "websocket handshake failed");
            shared.metrics.refused(Refusal::Handshake);
            None
        }
        Err(_) => {
            shared.metrics.refused(Refusal::Handshake);
            None
        }
    }
}

/// Closes the outbox when the session ends, however it ends (a panic
/// included), so the hub stops queueing for it; and tells the hub the device
/// left if the machine could not.
struct Leave {
    outbox: Arc<Outbox>,
    hub: mpsc::Sender<HubMsg>,
    conn: ConnId,
    joined: bool,
}

impl Drop for Leave {
    fn drop(&mut self) {
        self.outbox.close(None);
        if self.joined {
            let msg = HubMsg::Input {
                conn: self.conn,
                input: SwitchboardInput::Disconnect,
                at: Instant::now(),
            };
            if let Err(mpsc::error::TrySendError::Full(msg)) = self.hub.try_send(msg) {
                let hub = self.hub.clone();
                tokio::spawn(async move {
                    let _ = hub.send(msg).await;
                });
            }
        }
    }
}

/// Verifies tokens for the connection machine; the refusal's detail goes to
/// the log here, the client only ever reads `unauthorized`.
struct Tokens<'a> {
    authority: &'a Authority,
    peer: SocketAddr,
}

impl Authenticator for Tokens<'_> {
    fn authenticate(&self, token: Option<&str>) -> Result<Identity, AuthRefusal> {
        match self.authority.verify(token.unwrap_or("")) {
            Ok(id) => {
                let valid_for = id
                    .expires
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                Ok(Identity::new(id.user, Some(valid_for)))
            }
            Err(e) => {
                tracing::info!(peer = %self.peer, error = %e, "authentication failed");
                Err(AuthRefusal::new(e.to_string()))
            }
        }
    }
}

/// The WebSocket close code for each way a connection ends.
fn close_code(cause: CloseCause) -> Option<CloseCode> {
    Some(match cause {
        CloseCause::PeerGone | CloseCause::DeadPeer | CloseCause::Stalled => return None,
        CloseCause::TooLarge => CloseCode::Size,
        CloseCause::InvalidUtf8 => CloseCode::Invalid,
        CloseCause::Unsupported => CloseCode::Unsupported,
        CloseCause::TransportProtocol => CloseCode::Protocol,
        CloseCause::ShuttingDown => CloseCode::Away,
        CloseCause::Replaced => CloseCode::Normal,
        _ => CloseCode::Policy,
    })
}

/// Maps a read error to how the connection ends.
fn read_error(e: &WsError) -> CloseCause {
    match e {
        WsError::Capacity(_) => CloseCause::TooLarge,
        WsError::Utf8(_) => CloseCause::InvalidUtf8,
        WsError::Protocol(_) => CloseCause::TransportProtocol,
        WsError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => CloseCause::Stalled,
        _ => CloseCause::PeerGone,
    }
}

/// A write or flush that did not finish in time: the peer does not read.
pub(crate) struct WriteFailed;

/// What a link read from its peer.
pub(crate) enum Inbound<T> {
    /// One protocol message (a WebSocket text frame, an HTTP request body).
    Text(T),
    /// Anything else that shows the peer is alive (a ping or pong, a poll).
    Activity,
    /// The peer closed the link (or it broke).
    Closed,
    /// The link ends for this reason (an oversized or broken frame).
    Failed(CloseCause),
}

/// The transport under a [`Session`]: how messages reach the peer and come
/// back. Every method but [`Link::next`] runs under the session's write
/// deadline; a link whose write cannot finish in time has a peer that does
/// not read, and the session ends (`too_slow`).
pub(crate) trait Link: Send {
    /// A message as read.
    type Text: AsRef<str> + Send;

    /// Queues one encoded server message (seen by the peer at the next
    /// [`Link::flush`] at the latest).
    fn feed(&mut self, text: String) -> impl Future<Output = Result<(), WriteFailed>> + Send;

    /// Asks the peer for a sign of life (the machine's probe).
    fn probe(&mut self) -> impl Future<Output = Result<(), WriteFailed>> + Send;

    /// Makes what was fed visible to the peer.
    fn flush(&mut self) -> impl Future<Output = Result<(), WriteFailed>> + Send;

    /// The next thing read. Cancel-safe (the session `select!`s on it).
    fn next(&mut self) -> impl Future<Output = Inbound<Self::Text>> + Send;

    /// Tells the peer why the session ends (after the last message).
    fn close(&mut self, cause: CloseCause) -> impl Future<Output = ()> + Send;

    /// The session ends because a write missed its deadline: no more
    /// writes, just let go.
    fn abandon(&mut self) {}
}

/// The WebSocket link: frames over the upgraded socket.
pub(crate) struct WsLink {
    ws: Ws,
}

impl Link for WsLink {
    type Text = tokio_tungstenite::tungstenite::Utf8Bytes;

    async fn feed(&mut self, text: String) -> Result<(), WriteFailed> {
        self.ws
            .feed(Message::text(text))
            .await
            .map_err(|_| WriteFailed)
    }

    async fn probe(&mut self) -> Result<(), WriteFailed> {
        self.ws
            .feed(Message::Ping(Vec::new().into()))
            .await
            .map_err(|_| WriteFailed)
    }

    async fn flush(&mut self) -> Result<(), WriteFailed> {
        self.ws.flush().await.map_err(|_| WriteFailed)
    }

    async fn next(&mut self) -> Inbound<Self::Text> {
        let frame = match self.ws.next().await {
            None => return Inbound::Closed,
            Some(Err(e)) => {
                return match read_error(&e) {
                    CloseCause::PeerGone => Inbound::Closed,
                    cause => Inbound::Failed(cause),
                };
            }
            Some(Ok(f)) => f,
        };
        match frame {
            Message::Text(text) => {
                self.ws.get_mut().consumed(client_frame_len(text.len()));
                Inbound::Text(text)
            }
            Message::Binary(_) => Inbound::Failed(CloseCause::Unsupported),
            Message::Close(_) => Inbound::Closed,
            // Ping or pong (tungstenite answers pings itself): alive.
            Message::Ping(p) | Message::Pong(p) => {
                self.ws.get_mut().consumed(client_frame_len(p.len()));
                Inbound::Activity
            }
            Message::Frame(_) => Inbound::Activity,
        }
    }

    async fn close(&mut self, cause: CloseCause) {
        if let Some(code) = close_code(cause) {
            let frame = CloseFrame {
                code,
                reason: cause.as_str().into(),
            };
            let _ = self.ws.close(Some(frame)).await;
        }
    }
}

/// One device's session over a [`Link`]: the connection machine, the hub
/// hand-over and the outbound queue, the same for every transport.
pub(crate) struct Session<L> {
    link: L,
    peer: SocketAddr,
    shared: Arc<Shared>,
    conn: ConnId,
    machine: DeviceConnection,
    /// Messages written since the last flush.
    unflushed: bool,
    /// The device joined the switchboard (for the sessions gauge and the
    /// log): as whom.
    opened: Option<(invitation_core::UserId, invitation_core::DeviceId)>,
    /// A write missed its deadline.
    write_failed: bool,
}

impl<L: Link> Session<L> {
    pub(crate) fn new(link: L, peer: SocketAddr, shared: Arc<Shared>, conn: ConnId) -> Self {
        let machine = DeviceConnection::new(Instant::now().into_std(), shared.conn_config.clone());
        Self {
            link,
            peer,
            shared,
            conn,
            machine,
            unflushed: false,
            opened: None,
            write_failed: false,
        }
    }

    async fn feed(&mut self, text: String) -> Result<(), WriteFailed> {
        self.unflushed = true;
        match timeout(self.shared.config.write_timeout(), self.link.feed(text)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(WriteFailed),
        }
    }

    async fn probe(&mut self) -> Result<(), WriteFailed> {
        self.unflushed = true;
        match timeout(self.shared.config.write_timeout(), self.link.probe()).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(WriteFailed),
        }
    }

    async fn flush(&mut self) -> Result<(), WriteFailed> {
        if !std::mem::take(&mut self.unflushed) {
            return Ok(());
        }
        match timeout(self.shared.config.write_timeout(), self.link.flush()).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(WriteFailed),
        }
    }

    /// Writes one server message, through the machine's accounting.
    async fn write(&mut self, message: &ServerMessage, stamp: Stamp) -> Result<(), WriteFailed> {
        self.machine.handle_sent(message);
        self.shared
            .metrics
            .messages_out
            .fetch_add(1, Ordering::Relaxed);
        self.feed(message.encode()).await?;
        match stamp {
            Stamp::Ring(at) => self.shared.metrics.ring.observe(at.elapsed()),
            Stamp::Timer(at) => self.shared.metrics.timer_lateness.observe(at.elapsed()),
            Stamp::None => {}
        }
        Ok(())
    }

    /// Runs the session to its end; returns why it ended.
    pub(crate) async fn run(&mut self) -> CloseCause {
        let outbox = Outbox::new(self.shared.config.outbound_queue);
        let mut leave = Leave {
            outbox: outbox.clone(),
            hub: self.shared.hub.clone(),
            conn: self.conn,
            joined: false,
        };
        let mut shutdown = self.shared.shutdown.clone();
        // One timer, moved only when the machine's next deadline changes.
        let timer = sleep_until(Instant::now());
        tokio::pin!(timer);
        let mut armed = None;
        let cause = loop {
            // Boxed, like the other rare awaits below: the task's state is
            // as large as its largest await, and every idle connection
            // pays for that; an allocation per message costs less.
            match Box::pin(self.carry_out(&outbox, &mut leave)).await {
                Ok(Some(cause)) => break cause,
                Ok(None) => {}
                Err(WriteFailed) => break self.write_failed(),
            }
            if Box::pin(self.flush()).await.is_err() {
                break self.write_failed();
            }
            let deadline = self.machine.poll_timeout().map(Instant::from_std);
            if deadline != armed {
                if let Some(d) = deadline {
                    timer.as_mut().reset(d);
                }
                armed = deadline;
            }
            tokio::select! {
                biased;
                out = outbox.recv() => {
                    // Write everything already queued, then flush once: one
                    // system call for a reply and the events it caused.
                    if Box::pin(self.outbound(out, &outbox)).await.is_err() {
                        break self.write_failed();
                    }
                }
                read = self.link.next(), if self.machine.wants_read() => {
                    self.inbound(read);
                }
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    self.machine.handle_timeout(Instant::now().into_std());
                }
                _ = shutdown.changed() => self.machine.close(CloseCause::ShuttingDown),
            }
        };
        drop(leave); // the hub learns the device left, if the machine could not tell it
        if self.opened.is_some() {
            self.shared.metrics.sessions.fetch_sub(1, Ordering::Relaxed);
        }
        if matches!(cause, CloseCause::Unauthorized | CloseCause::NoHello) {
            self.shared.metrics.refused(Refusal::Auth);
        }
        match &self.opened {
            Some((user, device)) => {
                tracing::info!(peer = %self.peer, conn = %self.conn, %user, %device, %cause, "session closed");
            }
            _ => tracing::debug!(peer = %self.peer, conn = %self.conn, %cause, "connection closed"),
        }
        if self.write_failed {
            self.link.abandon();
            return cause; // dropping the link shuts the socket
        }
        let close = timeout(self.shared.config.write_timeout(), self.link.close(cause));
        let _ = Box::pin(close).await;
        cause
    }

    /// A write missed its deadline: the connection ends without another write.
    fn write_failed(&mut self) -> CloseCause {
        tracing::info!(peer = %self.peer, conn = %self.conn, "client does not read: dropping it");
        self.shared.metrics.too_slow.fetch_add(1, Ordering::Relaxed);
        self.write_failed = true;
        self.machine.close(CloseCause::TooSlow);
        // The machine's own outputs (a `closing` message) are not written;
        // its `Disconnect` reaches the hub through `Leave`.
        while self.machine.poll_output().is_some() {}
        CloseCause::TooSlow
    }

    /// Carries out the machine's outputs. `Some(cause)` when it closed.
    async fn carry_out(
        &mut self,
        outbox: &Arc<Outbox>,
        leave: &mut Leave,
    ) -> Result<Option<CloseCause>, WriteFailed> {
        while let Some(out) = self.machine.poll_output() {
            match out {
                ConnectionOutput::Send(message) => self.write(&message, Stamp::None).await?,
                ConnectionOutput::Probe => self.probe().await?,
                ConnectionOutput::Switchboard(input) => {
                    self.hand_over(input, outbox, leave).await?;
                }
                ConnectionOutput::Close(cause) => {
                    self.flush().await?;
                    return Ok(Some(cause));
                }
                _ => {}
            }
        }
        Ok(None)
    }

    /// Hands a switchboard input to the hub.
    async fn hand_over(
        &mut self,
        input: SwitchboardInput,
        outbox: &Arc<Outbox>,
        leave: &mut Leave,
    ) -> Result<(), WriteFailed> {
        let at = Instant::now();
        let msg = match input {
            SwitchboardInput::Connect {
                ref user,
                ref device,
                ..
            } => {
                tracing::info!(peer = %self.peer, conn = %self.conn, user = %user.id, %device, "session open");
                leave.joined = true;
                self.opened = Some((user.id.clone(), device.clone()));
                self.shared.metrics.sessions.fetch_add(1, Ordering::Relaxed);
                HubMsg::Open {
                    conn: self.conn,
                    tx: outbox.clone(),
                    input,
                }
            }
            SwitchboardInput::Disconnect => {
                leave.joined = false;
                HubMsg::Input {
                    conn: self.conn,
                    input,
                    at,
                }
            }
            input => HubMsg::Input {
                conn: self.conn,
                input,
                at,
            },
        };
        let is_invite = matches!(
            &msg,
            HubMsg::Input {
                input: SwitchboardInput::Command {
                    command: Command::Invite(_),
                    ..
                },
                ..
            }
        );
        // A full inbox means the hub is far behind: a new invitation is
        // refused at once (load shedding); other inputs wait their turn.
        let sent = if is_invite && self.shared.config.shed_after().is_some() {
            match self.shared.hub.try_send(msg) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(HubMsg::Input {
                    input: SwitchboardInput::Command { id, .. },
                    ..
                })) => {
                    let reply = Hub::shed_reply(&self.shared.metrics, id);
                    return self.write(&reply, Stamp::None).await;
                }
                Err(_) => Err(()),
            }
        } else {
            self.shared.hub.send(msg).await.map_err(|_| ())
        };
        if sent.is_err() {
            leave.joined = false;
            self.machine.close(CloseCause::ShuttingDown);
        }
        Ok(())
    }

    /// Messages from the hub, as many as are queued (up to a batch).
    async fn outbound(
        &mut self,
        first: Option<Outbound>,
        outbox: &Outbox,
    ) -> Result<(), WriteFailed> {
        let mut next = first;
        for _ in 0..64 {
            match next {
                Some(Outbound::Message(queued)) => {
                    let Queued { message, stamp } = *queued;
                    self.write(&message, stamp).await?;
                }
                Some(Outbound::Close(reason)) => {
                    self.machine.close(CloseCause::from_reason(reason));
                    return Ok(());
                }
                None => {
                    // The hub dropped us: our queue overflowed.
                    self.machine.close(CloseCause::TooSlow);
                    return Ok(());
                }
            }
            match outbox.try_pop() {
                Some(m) => next = Some(m),
                None => break,
            }
        }
        Ok(())
    }

    /// One message (or sign of life, or end) from the peer.
    fn inbound(&mut self, read: Inbound<L::Text>) {
        let now = Instant::now().into_std();
        match read {
            Inbound::Closed => self.machine.handle_transport_closed(),
            Inbound::Failed(cause) => self.machine.close(cause),
            Inbound::Activity => self.machine.handle_activity(now),
            Inbound::Text(text) => {
                self.shared
                    .metrics
                    .messages_in
                    .fetch_add(1, Ordering::Relaxed);
                let errors = self.machine.protocol_errors();
                let tokens = Tokens {
                    authority: &self.shared.authority,
                    peer: self.peer,
                };
                self.machine.handle_text(now, text.as_ref(), &tokens);
                if self.machine.protocol_errors() > errors {
                    self.shared
                        .metrics
                        .protocol_errors
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// `/healthz`: 503 once the hub stopped, or while a cluster node knows no
/// leader (a load balancer then sends clients to another node).
pub(crate) fn health(shared: &Shared) -> (&'static str, &'static str) {
    if shared.hub.is_closed() {
        ("503 Service Unavailable", "hub stopped\n")
    } else if shared
        .metrics
        .cluster_no_leader
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        ("503 Service Unavailable", "no cluster leader\n")
    } else {
        ("200 OK", "ok\n")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    /// Every idle connection holds one task whose state is as large as the
    /// connection future's largest await point. The handshake is boxed and
    /// `run` borrows the session so that this stays ~1.5 KB (it was 2.7 KB);
    /// an innocent-looking `async fn f(self)` or an unboxed rare await can
    /// silently add hundreds of bytes per connection.
    #[tokio::test]
    async fn an_idle_connection_task_stays_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _client = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        let (stream, peer) = l.accept().await.unwrap();
        let (hub, _rx) = tokio::sync::mpsc::channel(1);
        let (_tx, shutdown) = tokio::sync::watch::channel(false);
        let shared = Arc::new(crate::server::Shared {
            conn_config: Arc::new(crate::Config::default().connection_config()),
            config: crate::Config::default(),
            authority: crate::Authority::new(b"0123456789abcdef0123", "a", None),
            metrics: Default::default(),
            hub,
            shutdown,
            tls: None,
            demo: Default::default(),
        });
        let sessions = crate::http_transport::Sessions::new(
            crate::slots::Slots::new(1, 1),
            Arc::new(std::sync::Mutex::new(crate::rate::KeyedLimiter::new(
                1.0, 1.0,
            ))),
            &crate::Config::default(),
        );
        let task = super::serve(
            stream,
            peer,
            shared,
            invitation_core::ConnId::new(1),
            sessions,
        );
        let size = std::mem::size_of_val(&task);
        eprintln!("connection future: {size} bytes");
        assert!(size <= 2048, "the connection future grew to {size} bytes");
        assert_eq!(
            std::mem::size_of::<crate::hub::Outbound>(),
            16,
            "queue slots stay two words"
        );
    }
}
