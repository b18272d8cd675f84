//! One client connection, from the first byte to the close: HTTP routing,
//! upgrade, authentication by the first message, then the session loop
//! (frames in, hub messages out, heartbeats, token expiry, shutdown).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use futures_util::{SinkExt, StreamExt};
use invitation_core::protocol::{
    ClientMessage, CloseReason, Command, ErrorBody, ReplyResult, ServerBody, ServerMessage,
};
use invitation_core::{DecodeLimits, ErrorCode, ProtocolError, User};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until, timeout_at};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::auth::Identity;
use crate::http::{self, Prefixed, Route};
use crate::hub::{Hub, HubMsg, LinkKey, Outbound, Queued, Stamp};
use crate::metrics::Refusal;
use crate::outbox::Outbox;
use crate::server::Shared;

type Ws = WebSocketStream<Prefixed<TcpStream>>;

/// Serves one accepted TCP connection to the end. Never panics on input.
pub(crate) async fn serve(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>, key: LinkKey) {
    // The task's state is as large as its largest await. The handshake is
    // boxed (it is over by the time the connection idles) and `run` borrows
    // the session: an async fn taking a large `self` by value keeps it twice
    // in its state. Together ~1 KB less per idle connection.
    let Some(ws) = Box::pin(upgrade(stream, peer, &shared)).await else {
        return;
    };
    let mut session = Session::new(ws, peer, shared, key);
    session.run().await;
}

/// HTTP routing and the WebSocket upgrade; `None` when the connection was
/// answered (health, metrics, 404, refusal) or failed.
async fn upgrade(mut stream: TcpStream, peer: SocketAddr, shared: &Shared) -> Option<Ws> {
    // One deadline for the whole handshake: request head and upgrade.
    let deadline = Instant::now() + shared.config.handshake_timeout();
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
            let _ = http::respond(&mut stream, "200 OK", "text/plain", "ok\n").await;
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
        Route::Upgrade { origin } => origin,
    };
    if !http::origin_allowed(origin.as_deref(), &shared.config.allowed_origins) {
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
    let _ = stream.set_nodelay(true);
    let config = WebSocketConfig::default()
        .read_buffer_size(shared.config.read_buffer_bytes)
        // Writes are batched by the session loop (feed, then one flush).
        .write_buffer_size(64 * 1024)
        .max_write_buffer_size(shared.config.max_message_bytes * 4)
        .max_message_size(Some(shared.config.max_message_bytes))
        .max_frame_size(Some(shared.config.max_message_bytes));
    let upgrade =
        tokio_tungstenite::accept_async_with_config(Prefixed::new(bytes, stream), Some(config));
    match timeout_at(deadline, upgrade).await {
        Ok(Ok(ws)) => Some(ws),
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

/// Closes the outbox when the session ends, however it ends.
struct CloseOnDrop(Arc<Outbox>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close(None);
    }
}

struct Session {
    ws: Ws,
    peer: SocketAddr,
    shared: Arc<Shared>,
    key: LinkKey,
    limits: DecodeLimits,
    errors: u32,
}

/// How the session loop ended.
enum End {
    /// Send this close frame (and maybe a `closing` message first).
    Close(CloseCode, &'static str, Option<CloseReason>),
    /// The peer is gone; nothing to send.
    Gone,
}

impl Session {
    fn new(ws: Ws, peer: SocketAddr, shared: Arc<Shared>, key: LinkKey) -> Self {
        let limits = DecodeLimits {
            max_bytes: shared.config.max_message_bytes,
            ..DecodeLimits::default()
        };
        Self {
            ws,
            peer,
            shared,
            key,
            limits,
            errors: 0,
        }
    }

    async fn send(&mut self, body: ServerBody) -> Result<(), WsError> {
        self.shared
            .metrics
            .messages_out
            .fetch_add(1, Ordering::Relaxed);
        self.ws
            .send(Message::text(ServerMessage::new(body).encode()))
            .await
    }

    async fn close(&mut self, code: CloseCode, why: &'static str, reason: Option<CloseReason>) {
        if let Some(reason) = reason {
            let _ = self.send(ServerBody::Closing { reason }).await;
        }
        let _ = self
            .ws
            .close(Some(CloseFrame {
                code,
                reason: why.into(),
            }))
            .await;
    }

    /// Maps a read error to its close code (E1: 1009, E3: 1007).
    fn read_error(e: &WsError) -> End {
        use tokio_tungstenite::tungstenite::error::CapacityError;
        match e {
            WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
                End::Close(CloseCode::Size, "message too large", None)
            }
            WsError::Capacity(_) => End::Close(CloseCode::Size, "too large", None),
            WsError::Utf8(_) => End::Close(CloseCode::Invalid, "invalid utf-8", None),
            WsError::Protocol(_) => End::Close(CloseCode::Protocol, "protocol error", None),
            _ => End::Gone,
        }
    }

    /// Counts a bad message; answers it; past the limit, closes.
    async fn protocol_error(&mut self, e: &ProtocolError) -> Option<End> {
        self.errors += 1;
        self.shared
            .metrics
            .protocol_errors
            .fetch_add(1, Ordering::Relaxed);
        if self
            .send(ServerBody::Error(ErrorBody::from_protocol(e)))
            .await
            .is_err()
        {
            return Some(End::Gone);
        }
        (self.errors > self.shared.config.max_protocol_errors).then_some(End::Close(
            CloseCode::Policy,
            "too many protocol errors",
            Some(CloseReason::ProtocolViolation),
        ))
    }

    async fn unauthorized(&mut self, re: Option<invitation_core::RequestId>, message: String) {
        self.shared.metrics.refused(Refusal::Auth);
        let _ = self
            .send(ServerBody::Error(ErrorBody {
                re,
                code: ErrorCode::Unauthorized,
                message,
                reason: None,
                retry_after_ms: None,
            }))
            .await;
        self.close(CloseCode::Policy, "unauthorized", None).await;
    }

    /// Waits for `hello` with a valid token (D12: within the auth timeout).
    async fn authenticate(&mut self) -> Option<(Identity, ClientMessage)> {
        let deadline = Instant::now() + self.shared.config.auth_timeout();
        loop {
            let frame = match timeout_at(deadline, self.ws.next()).await {
                Err(_) => {
                    self.shared.metrics.refused(Refusal::Auth);
                    self.close(CloseCode::Policy, "no hello in time", None)
                        .await;
                    return None;
                }
                Ok(None) => return None,
                Ok(Some(Err(e))) => {
                    if let End::Close(code, why, _) = Self::read_error(&e) {
                        self.close(code, why, None).await;
                    }
                    return None;
                }
                Ok(Some(Ok(m))) => m,
            };
            let text = match frame {
                Message::Text(t) => t,
                Message::Binary(_) => {
                    self.close(CloseCode::Unsupported, "text frames only", None)
                        .await;
                    return None;
                }
                Message::Close(_) => return None,
                _ => continue,
            };
            self.shared
                .metrics
                .messages_in
                .fetch_add(1, Ordering::Relaxed);
            let message = match ClientMessage::decode(text.as_str(), &self.limits) {
                Ok(m) => m,
                Err(e) => {
                    if let Some(End::Close(code, why, reason)) = self.protocol_error(&e).await {
                        self.close(code, why, reason).await;
                        return None;
                    }
                    continue;
                }
            };
            let Command::Hello { token, .. } = &message.command else {
                self.unauthorized(
                    Some(message.id.clone()),
                    "the first message must be hello with a token".into(),
                )
                .await;
                return None;
            };
            match self.shared.authority.verify(token.as_deref().unwrap_or("")) {
                Ok(identity) => return Some((identity, message)),
                Err(e) => {
                    tracing::info!(peer = %self.peer, error = %e, "authentication failed");
                    self.unauthorized(Some(message.id.clone()), e.public_message().into())
                        .await;
                    return None;
                }
            }
        }
    }

    async fn run(&mut self) {
        // Locals of this frame live as long as the connection does: only what
        // the session needs survives the block.
        let (user, device, last_seq, mut expires) = {
            let Some((identity, hello)) = Box::pin(self.authenticate()).await else {
                return;
            };
            let Command::Hello {
                device, last_seq, ..
            } = hello.command
            else {
                unreachable!("authenticate returns hello")
            };
            (identity.user, device, last_seq, identity.expires)
        };
        let outbox = Outbox::new(self.shared.config.outbound_queue);
        // Closed whichever way this ends, so the hub stops queueing for it.
        let _closer = CloseOnDrop(outbox.clone());
        let opened = self
            .shared
            .hub
            .send(HubMsg::Open {
                key: self.key,
                user: user.clone(),
                device: device.clone(),
                last_seq,
                tx: outbox.clone(),
            })
            .await;
        if opened.is_err() {
            self.close(
                CloseCode::Away,
                "shutting down",
                Some(CloseReason::ShuttingDown),
            )
            .await;
            return;
        }
        self.shared.metrics.sessions.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(peer = %self.peer, user = %user.id, %device, "session open");
        let end = self.session(&outbox, &user, &mut expires).await;
        let _ = self.shared.hub.send(HubMsg::Close { key: self.key }).await;
        self.shared.metrics.sessions.fetch_sub(1, Ordering::Relaxed);
        if let End::Close(code, why, reason) = end {
            self.close(code, why, reason).await;
        }
        tracing::debug!(peer = %self.peer, user = %user.id, %device, "session closed");
    }

    async fn session(&mut self, rx: &Outbox, user: &User, expires: &mut SystemTime) -> End {
        let ping_every = self.shared.config.ping_every();
        let dead_after = self.shared.config.dead_after();
        let mut shutdown = self.shared.shutdown.clone();
        let mut last_rx = Instant::now();
        let mut pinged = false;
        // Commands sent to the hub and not yet answered. Past the limit the
        // socket is not read: a pipelining client is slowed down by TCP
        // instead of overflowing its own outbound queue.
        let max_in_flight = (self.shared.config.outbound_queue / 4).max(1);
        let mut in_flight = 0usize;
        // Two timers registered once and moved only when their deadline
        // really changes, not re-created for every message.
        let until_expiry = |at: SystemTime| {
            Instant::now()
                + at.duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
        };
        let mut expiry_for = *expires;
        let expiry = sleep_until(until_expiry(expiry_for));
        let beat = sleep_until(last_rx + ping_every);
        tokio::pin!(expiry, beat);
        loop {
            if *expires != expiry_for {
                expiry_for = *expires; // renewed in band
                expiry.as_mut().reset(until_expiry(expiry_for));
            }
            tokio::select! {
                biased;
                out = rx.recv() => {
                    // Write everything already queued, then flush once: one
                    // system call for a reply and the events it caused.
                    let mut next = out;
                    let mut batch = 0;
                    loop {
                        match next {
                            Some(Outbound::Message(queued)) => {
                                let Queued { message, stamp } = *queued;
                                if matches!(message.body, ServerBody::Reply { .. } | ServerBody::Error(_) | ServerBody::Pong { .. }) {
                                    in_flight = in_flight.saturating_sub(1);
                                }
                                self.shared.metrics.messages_out.fetch_add(1, Ordering::Relaxed);
                                if self.ws.feed(Message::text(message.encode())).await.is_err() {
                                    return End::Gone;
                                }
                                match stamp {
                                    Stamp::Ring(at) => self.shared.metrics.ring.observe(at.elapsed()),
                                    Stamp::Timer(at) => self.shared.metrics.timer_lateness.observe(at.elapsed()),
                                    Stamp::None => {}
                                }
                            }
                            Some(Outbound::Close(reason)) => {
                                let _ = self.ws.flush().await;
                                return End::Close(CloseCode::Normal, "closed by the server", Some(reason));
                            }
                            None => {
                                let _ = self.ws.flush().await;
                                return End::Close(CloseCode::Policy, "too slow", Some(CloseReason::TooSlow));
                            }
                        }
                        batch += 1;
                        if batch >= 64 {
                            break;
                        }
                        match rx.try_pop() {
                            Some(m) => next = Some(m),
                            None => break,
                        }
                    }
                    if self.ws.flush().await.is_err() {
                        return End::Gone;
                    }
                }
                frame = self.ws.next(), if in_flight < max_in_flight => {
                    let frame = match frame {
                        None => return End::Gone,
                        Some(Err(e)) => return Self::read_error(&e),
                        Some(Ok(f)) => f,
                    };
                    last_rx = Instant::now();
                    if std::mem::take(&mut pinged) {
                        beat.as_mut().reset(last_rx + ping_every);
                    }
                    match frame {
                        // Boxed: one small allocation per message instead of
                        // ~600 bytes in every idle connection's task.
                        Message::Text(text) => match Box::pin(self.on_text(text.as_str(), user, expires)).await {
                            Ok(true) => in_flight += 1,
                            Ok(false) => {}
                            Err(end) => return end,
                        },
                        Message::Binary(_) => return End::Close(CloseCode::Unsupported, "text frames only", None),
                        Message::Close(_) => return End::Gone,
                        _ => {} // ping / pong: tungstenite answers pings itself
                    }
                }
                () = &mut beat => {
                    // The timer is not moved on every message: when it fires,
                    // see whether the client spoke since.
                    let due = last_rx + if pinged { dead_after } else { ping_every };
                    if Instant::now() < due {
                        beat.as_mut().reset(due);
                        continue;
                    }
                    if pinged {
                        tracing::info!(peer = %self.peer, user = %user.id, "no message within the heartbeat window");
                        return End::Gone;
                    }
                    pinged = true;
                    beat.as_mut().reset(last_rx + dead_after);
                    if self.ws.send(Message::Ping(Vec::new().into())).await.is_err() {
                        return End::Gone;
                    }
                }
                () = &mut expiry => {
                    return End::Close(CloseCode::Policy, "token expired", Some(CloseReason::TokenExpired));
                }
                _ = shutdown.changed() => {
                    return End::Close(CloseCode::Away, "shutting down", Some(CloseReason::ShuttingDown));
                }
            }
        }
    }

    /// Handles one text frame. `Ok(true)`: a command went to the hub (one
    /// answer will come back through the queue).
    async fn on_text(
        &mut self,
        text: &str,
        user: &User,
        expires: &mut SystemTime,
    ) -> Result<bool, End> {
        self.shared
            .metrics
            .messages_in
            .fetch_add(1, Ordering::Relaxed);
        let message = match ClientMessage::decode(text, &self.limits) {
            Ok(m) => m,
            Err(e) => return self.protocol_error(&e).await.map_or(Ok(false), Err),
        };
        if let Command::Renew { token } = &message.command {
            let reply = match self.shared.authority.verify(token) {
                Ok(id) if id.user.id == user.id => {
                    *expires = id.expires;
                    ServerBody::Reply {
                        re: message.id,
                        result: ReplyResult::Done,
                    }
                }
                Ok(_) => ServerBody::Error(ErrorBody {
                    re: Some(message.id),
                    code: ErrorCode::Unauthorized,
                    message: "the new token names another user".into(),
                    reason: None,
                    retry_after_ms: None,
                }),
                Err(e) => ServerBody::Error(ErrorBody {
                    re: Some(message.id),
                    code: ErrorCode::Unauthorized,
                    message: e.public_message().into(),
                    reason: None,
                    retry_after_ms: None,
                }),
            };
            return self
                .send(reply)
                .await
                .map(|()| false)
                .map_err(|_| End::Gone);
        }
        let is_invite = matches!(message.command, Command::Invite(_));
        let msg = HubMsg::Command {
            key: self.key,
            message,
            at: Instant::now(),
        };
        // A full inbox means the hub is far behind: a new invitation is
        // refused at once (load shedding); other commands wait their turn.
        let sent = if is_invite && self.shared.config.shed_after().is_some() {
            match self.shared.hub.try_send(msg) {
                Ok(()) => Ok(()),
                Err(mpsc::error::TrySendError::Full(HubMsg::Command { message, .. })) => {
                    let reply = Hub::shed_reply(&self.shared.metrics, message.id);
                    return self
                        .send(reply.body)
                        .await
                        .map(|()| false)
                        .map_err(|_| End::Gone);
                }
                Err(_) => Err(()),
            }
        } else {
            self.shared.hub.send(msg).await.map_err(|_| ())
        };
        if sent.is_err() {
            return Err(End::Close(
                CloseCode::Away,
                "shutting down",
                Some(CloseReason::ShuttingDown),
            ));
        }
        Ok(true)
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
            config: crate::Config::default(),
            authority: crate::Authority::new(b"0123456789abcdef0123", "a", None),
            metrics: Default::default(),
            hub,
            shutdown,
        });
        let task = super::serve(stream, peer, shared, 1);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 2048, "the connection future grew to {size} bytes");
        assert_eq!(
            std::mem::size_of::<crate::hub::Outbound>(),
            16,
            "queue slots stay two words"
        );
    }
}
