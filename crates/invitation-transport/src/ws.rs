//! The WebSocket backend: talks to `invitation-server` (protocol v1 as JSON
//! text frames), over `ws://` or `wss://` (TLS through rustls, the roots of
//! a [`ClientTls`]: the system's unless given). Reconnecting, resuming and
//! retrying are done above, by the client driver, for every backend alike.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use invitation_core::DecodeLimits;
use invitation_core::protocol::{ClientMessage, ServerMessage};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::tls::ClientTls;
use crate::{BoxConnection, Connection, Transport, TransportError, TransportErrorKind};

/// Connects to `ws://host:port/` or `wss://host:port/`. The token travels
/// in `hello` (set it on the client builder); the URL carries none.
#[derive(Debug, Clone)]
pub struct WsTransport {
    url: String,
    connect_timeout: Duration,
    limits: DecodeLimits,
    tls: Option<ClientTls>,
}

impl WsTransport {
    /// A transport for `url` (e.g. `ws://127.0.0.1:7600/`,
    /// `wss://signal.example.org/`).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            connect_timeout: Duration::from_secs(10),
            limits: DecodeLimits::default(),
            tls: None,
        }
    }

    /// How long a connection attempt may take, TLS handshake included
    /// (10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The certificates trusted for `wss://` (default: the system's roots,
    /// loaded at the first `wss://` connection). Unused for `ws://`.
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The TLS configuration for a `wss://` connection.
    fn client_tls(&self) -> Result<ClientTls, TransportError> {
        if let Some(tls) = &self.tls {
            return Ok(tls.clone());
        }
        crate::tls::system_roots().map_err(|e| {
            TransportError::new(
                TransportErrorKind::Certificate,
                format!(
                    "cannot check the certificate of {}: {e}",
                    endpoint(&self.url)
                ),
            )
        })
    }
}

/// `host:port` of a `ws://` / `wss://` URL, for error messages.
fn endpoint(url: &str) -> String {
    use tokio_tungstenite::tungstenite::http::Uri;
    match url.parse::<Uri>() {
        Ok(uri) => match (uri.host(), uri.port_u16()) {
            (Some(host), Some(port)) => format!("{host}:{port}"),
            (Some(host), None) if uri.scheme_str() == Some("wss") => format!("{host}:443"),
            (Some(host), None) => format!("{host}:80"),
            _ => url.to_owned(),
        },
        Err(_) => url.to_owned(),
    }
}

/// The host of a URL (what a certificate must name).
fn host(url: &str) -> String {
    use tokio_tungstenite::tungstenite::http::Uri;
    url.parse::<Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_owned))
        .unwrap_or_default()
}

/// Refuses what is not a `ws://` or `wss://` URL with a host, before any I/O.
fn check_url(url: &str) -> Result<(), TransportError> {
    use tokio_tungstenite::tungstenite::http::Uri;
    let bad = |why: &str| {
        Err(TransportError::new(
            TransportErrorKind::Protocol,
            format!("invalid server URL {url:?}: {why} (expected ws://host:port/)"),
        ))
    };
    match url.parse::<Uri>() {
        Err(e) => bad(&e.to_string()),
        Ok(uri) if !matches!(uri.scheme_str(), Some("ws" | "wss")) => bad("not ws:// or wss://"),
        Ok(uri) if uri.host().is_none_or(str::is_empty) => bad("no host"),
        Ok(_) => Ok(()),
    }
}

/// A failed connection attempt, said in words: what happened, and where.
fn connect_error(url: &str, e: WsError) -> TransportError {
    use std::io::ErrorKind as Io;
    use tokio_tungstenite::tungstenite::error::TlsError;
    let at = endpoint(url);
    // A refused certificate or a failed TLS handshake first: it arrives
    // as an I/O error, and would otherwise read as a broken connection.
    let tls = match &e {
        WsError::Tls(TlsError::Rustls(r)) => Some(crate::tls::tls_failure(&**r, &at, &host(url))),
        WsError::Io(io) => Some(crate::tls::tls_failure(io, &at, &host(url))),
        _ => None,
    };
    if let Some(Some(tls)) = tls {
        return tls;
    }
    let (kind, message) = match &e {
        WsError::Io(io) => (
            TransportErrorKind::Io,
            match io.kind() {
                Io::ConnectionRefused => format!("connection refused at {at}"),
                Io::ConnectionReset | Io::ConnectionAborted | Io::UnexpectedEof => {
                    format!("{at} closed the connection during the WebSocket handshake")
                }
                Io::TimedOut => format!("no answer from {at}"),
                _ => format!("cannot connect to {at}: {io}"),
            },
        ),
        WsError::Http(resp) => (
            if resp.status().is_client_error() {
                TransportErrorKind::Rejected
            } else {
                TransportErrorKind::Io
            },
            format!(
                "{at} refused the WebSocket upgrade with HTTP {}",
                resp.status()
            ),
        ),
        WsError::Tls(TlsError::InvalidDnsName) => (
            TransportErrorKind::Protocol,
            format!("invalid server URL {url:?}: the host is not a valid TLS server name"),
        ),
        WsError::Url(u) => (
            TransportErrorKind::Protocol,
            format!("invalid server URL {url:?}: {u}"),
        ),
        WsError::HttpFormat(_) | WsError::Protocol(_) => (
            TransportErrorKind::Protocol,
            if url.starts_with("ws:") {
                // What a TLS server answers to plain text does not parse.
                format!("{at} does not speak WebSocket (if it serves TLS, use wss://): {e}")
            } else {
                format!("{at} does not speak WebSocket: {e}")
            },
        ),
        _ => (
            TransportErrorKind::Io,
            format!("cannot connect to {at}: {e}"),
        ),
    };
    TransportError::with_source(kind, message, e)
}

/// A failure on an open connection, said in words.
fn link_error(at: &str, e: WsError) -> TransportError {
    let (kind, message) = match &e {
        WsError::ConnectionClosed | WsError::AlreadyClosed => (
            TransportErrorKind::Closed,
            format!("the connection to {at} is closed"),
        ),
        WsError::Io(io) => (
            TransportErrorKind::Io,
            format!("the connection to {at} broke: {io}"),
        ),
        WsError::Protocol(_) | WsError::Utf8(_) | WsError::Capacity(_) => (
            TransportErrorKind::Protocol,
            format!("{at} broke the WebSocket protocol: {e}"),
        ),
        _ => (
            TransportErrorKind::Io,
            format!("the connection to {at} failed: {e}"),
        ),
    };
    TransportError::with_source(kind, message, e)
}

#[async_trait]
impl Transport for WsTransport {
    async fn connect(&self) -> Result<BoxConnection, TransportError> {
        check_url(&self.url)?;
        let config = WebSocketConfig::default()
            .read_buffer_size(8 * 1024)
            .write_buffer_size(0)
            .max_message_size(Some(self.limits.max_bytes))
            .max_frame_size(Some(self.limits.max_bytes));
        let connector = if self.url.starts_with("wss:") {
            Connector::Rustls(self.client_tls()?.config())
        } else {
            Connector::Plain
        };
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            self.url.as_str(),
            Some(config),
            true,
            Some(connector),
        );
        let (ws, _) = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| {
                TransportError::new(
                    TransportErrorKind::Timeout,
                    format!(
                        "no answer from {} within {:?}",
                        endpoint(&self.url),
                        self.connect_timeout
                    ),
                )
            })?
            .map_err(|e| connect_error(&self.url, e))?;
        Ok(Box::new(WsConnection {
            ws,
            at: endpoint(&self.url),
            limits: self.limits,
            closed: false,
        }))
    }
}

struct WsConnection {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// `host:port`, for error messages.
    at: String,
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
            .map_err(|e| link_error(&self.at, e))
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
                    return Err(TransportError::closed(format!(
                        "{} closed the connection",
                        self.at
                    )));
                }
                Some(Err(e)) => {
                    self.closed = true;
                    return Err(link_error(&self.at, e));
                }
                Some(Ok(Message::Text(text))) => {
                    return ServerMessage::decode(text.as_str(), &self.limits).map_err(|e| {
                        TransportError::with_source(
                            TransportErrorKind::Protocol,
                            format!("undecodable message from {}: {e}", self.at),
                            e,
                        )
                    });
                }
                Some(Ok(Message::Close(frame))) => {
                    self.closed = true;
                    return Err(TransportError::closed(match frame {
                        Some(f) if !f.reason.is_empty() => {
                            format!("{} closed the connection: {}", self.at, f.reason)
                        }
                        _ => format!("{} closed the connection", self.at),
                    }));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_names_host_and_port() {
        assert_eq!(endpoint("ws://127.0.0.1:7699/"), "127.0.0.1:7699");
        assert_eq!(endpoint("ws://example.org/"), "example.org:80");
        assert_eq!(endpoint("wss://example.org/x"), "example.org:443");
        assert_eq!(endpoint("not a url"), "not a url");
    }

    #[tokio::test]
    async fn refused_connection_says_so_and_where() {
        // A port that was just free: nothing listens there now.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let e = match WsTransport::new(format!("ws://127.0.0.1:{port}/"))
            .connect()
            .await
        {
            Ok(_) => panic!("nothing listens on {port}"),
            Err(e) => e,
        };
        assert_eq!(
            e.to_string(),
            format!("connection refused at 127.0.0.1:{port}")
        );
        assert_eq!(e.kind(), TransportErrorKind::Io);
        assert!(std::error::Error::source(&e).is_some());
    }

    #[tokio::test]
    async fn bad_url_is_not_retryable() {
        for url in ["not a url", "http://127.0.0.1:1/", "ws:///"] {
            let e = match WsTransport::new(url).connect().await {
                Ok(_) => panic!("{url} is not a ws url"),
                Err(e) => e,
            };
            assert!(!e.is_retryable(), "{e}");
            assert!(e.to_string().starts_with("invalid server URL"), "{e}");
        }
    }
}
