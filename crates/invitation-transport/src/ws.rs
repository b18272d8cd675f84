//! The WebSocket backend: talks to `invitation-server` (protocol v1 as JSON
//! text frames). Reconnecting, resuming and retrying are done above, by the
//! client driver, for every backend alike.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use invitation_core::DecodeLimits;
use invitation_core::protocol::{ClientMessage, ServerMessage};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::{BoxConnection, Connection, Transport, TransportError, TransportErrorKind};

/// Connects to `ws://host:port/`. The token travels in `hello` (set it on
/// the client builder); the URL carries none.
#[derive(Debug, Clone)]
pub struct WsTransport {
    url: String,
    connect_timeout: Duration,
    limits: DecodeLimits,
}

impl WsTransport {
    /// A transport for `url` (e.g. `ws://127.0.0.1:7600/`).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connect_timeout: Duration::from_secs(10),
            limits: DecodeLimits::default(),
        }
    }

    /// How long a connection attempt may take (10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }
}

fn map_err(e: WsError) -> TransportError {
    let kind = match &e {
        WsError::ConnectionClosed | WsError::AlreadyClosed => TransportErrorKind::Closed,
        WsError::Io(_) => TransportErrorKind::Io,
        WsError::Http(resp) if resp.status().is_client_error() => TransportErrorKind::Rejected,
        WsError::Protocol(_) | WsError::Utf8(_) | WsError::Capacity(_) => {
            TransportErrorKind::Protocol
        }
        _ => TransportErrorKind::Io,
    };
    TransportError::with_source(kind, "websocket", e)
}

#[async_trait]
impl Transport for WsTransport {
    async fn connect(&self) -> Result<BoxConnection, TransportError> {
        let config = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .write_buffer_size(0)
            .max_message_size(Some(self.limits.max_bytes))
            .max_frame_size(Some(self.limits.max_bytes));
        let connect =
            tokio_tungstenite::connect_async_with_config(self.url.as_str(), Some(config), true);
        let (ws, _) = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| TransportError::new(TransportErrorKind::Timeout, "connect timed out"))?
            .map_err(map_err)?;
        Ok(Box::new(WsConnection {
            ws,
            limits: self.limits,
            closed: false,
        }))
    }
}

struct WsConnection {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    limits: DecodeLimits,
    closed: bool,
}

#[async_trait]
impl Connection for WsConnection {
    async fn send(&mut self, message: ClientMessage) -> Result<(), TransportError> {
        if self.closed {
            return Err(TransportError::closed("connection closed"));
        }
        self.ws
            .send(Message::text(message.encode()))
            .await
            .map_err(map_err)
    }

    async fn recv(&mut self) -> Result<ServerMessage, TransportError> {
        if self.closed {
            return Err(TransportError::closed("connection closed"));
        }
        // `StreamExt::next` on a WebSocketStream is cancel-safe: a frame is
        // only taken out of the buffer when it is returned.
        loop {
            match self.ws.next().await {
                None => {
                    self.closed = true;
                    return Err(TransportError::closed("server closed the connection"));
                }
                Some(Err(e)) => {
                    self.closed = true;
                    return Err(map_err(e));
                }
                Some(Ok(Message::Text(text))) => {
                    return ServerMessage::decode(text.as_str(), &self.limits).map_err(|e| {
                        TransportError::with_source(
                            TransportErrorKind::Protocol,
                            "undecodable server message",
                            e,
                        )
                    });
                }
                Some(Ok(Message::Close(_))) => {
                    self.closed = true;
                    return Err(TransportError::closed("server closed the connection"));
                }
                Some(Ok(_)) => {} // ping/pong (answered by tungstenite), binary: ignored
            }
        }
    }

    async fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            let _ = self.ws.close(None).await;
        }
    }
}
