//! The HTTP backend: talks to `invitation-server` over plain HTTP requests,
//! for networks where a WebSocket cannot get through (proxies that refuse
//! the upgrade) and for short-lived backends. docs/protocol.md, "HTTP
//! binding", is the wire contract.
//!
//! A [`Connection`] is one server-side *session*: `POST /sessions` opens it,
//! each client message is one `POST /sessions/{id}/messages`, and server
//! messages come back by long polling `GET /sessions/{id}/messages`. The
//! messages are the WebSocket's frames, byte for byte, so sequence numbers,
//! `hello` with `last_seq`, `sync` and every resume rule are the same; the
//! client driver reconnects, resumes and retries above this, for every
//! backend alike.
//!
//! Long polling rather than server-sent events: a poll is an ordinary
//! request/response that every proxy passes and buffers correctly, each
//! poll acknowledges the frames the previous one returned (the server keeps
//! them until then, so an answer can be asked for again), and the poll's
//! own deadline is the heartbeat: a poll that the server holds returns
//! empty after `poll_wait` at the latest, so a poll with no answer within
//! `poll_wait + poll_grace` means the server (or the path to it) is dead,
//! the way a missing pong does on a WebSocket.
//!
//! Dead-peer detection: a poll or a send that fails or overruns its
//! deadline ends the connection with a retryable error, as a broken
//! WebSocket does; the driver then reconnects with its usual backoff and
//! jitter, opens a new session and resumes from the last sequence number
//! it saw (the old session, if it still lives, is replaced by the new
//! `hello` of the same device).

use std::time::Duration;

use async_trait::async_trait;
use invitation_core::DecodeLimits;
use invitation_core::protocol::{ClientMessage, ServerMessage};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::tls::ClientTls;
use crate::{BoxConnection, Connection, Transport, TransportError, TransportErrorKind};

/// Server messages read by the poller and not yet taken by `recv`.
const RECEIVED_QUEUE: usize = 64;

/// Connects to `http://host:port/`. The token travels in `hello` (set it on
/// the client builder); the URL carries none.
#[derive(Debug, Clone)]
pub struct HttpTransport {
    /// The base URL, ending in `/`.
    base: String,
    client: Result<reqwest::Client, String>,
    /// The roots trusted for `https://` (the system's when not given).
    tls: Option<ClientTls>,
    connect_timeout: Duration,
    request_timeout: Duration,
    poll_wait: Duration,
    poll_grace: Duration,
    limits: DecodeLimits,
}

/// The one place the HTTP client is made: HTTP/1.1, bounded connection
/// attempts, the rustls configuration of `tls` (reqwest has no TLS
/// provider of its own in this build, so it gets one even for plain
/// `http://`: one that trusts nothing).
fn http_client(
    base: &str,
    tls: Option<&ClientTls>,
    connect_timeout: Duration,
) -> Result<reqwest::Client, String> {
    let tls = match tls {
        Some(tls) => tls.clone(),
        None if base.starts_with("https://") => crate::tls::system_roots()?,
        None => {
            ClientTls::with_root_store(rustls::RootCertStore::empty()).map_err(|e| e.to_string())?
        }
    };
    reqwest::Client::builder()
        .tls_backend_preconfigured((*tls.config()).clone())
        .http1_only()
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| e.to_string())
}

impl HttpTransport {
    /// A transport for `url` (e.g. `http://127.0.0.1:7600/`, or `https://`:
    /// the system's root certificates unless [`HttpTransport::tls`] gives
    /// others); paths are relative to it (`{url}sessions`).
    pub fn new(url: impl Into<String>) -> Self {
        let mut base: String = url.into();
        if !base.ends_with('/') {
            base.push('/');
        }
        let connect_timeout = Duration::from_secs(10);
        Self {
            client: http_client(&base, None, connect_timeout),
            base,
            tls: None,
            connect_timeout,
            request_timeout: Duration::from_secs(10),
            poll_wait: Duration::from_secs(20),
            poll_grace: Duration::from_secs(10),
            limits: DecodeLimits::default(),
        }
    }

    /// How long opening a session may take (10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self.client = http_client(&self.base, self.tls.as_ref(), timeout);
        self
    }

    /// The certificates trusted for `https://` (default: the system's
    /// roots). Unused for `http://`.
    pub fn tls(mut self, tls: ClientTls) -> Self {
        self.client = http_client(&self.base, Some(&tls), self.connect_timeout);
        self.tls = Some(tls);
        self
    }

    /// How long one message's `POST` may take (10 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long the server may hold a poll when it has nothing to say (20 s;
    /// the server holds one at most 30 s), and how much longer than that a
    /// poll may take before the server counts as gone (10 s).
    pub fn poll_timing(mut self, wait: Duration, grace: Duration) -> Self {
        self.poll_wait = wait;
        self.poll_grace = grace;
        self
    }
}

/// `host:port` of an `http://` URL, for error messages.
fn endpoint(url: &reqwest::Url) -> String {
    match (url.host_str(), url.port_or_known_default()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        _ => url.to_string(),
    }
}

/// Refuses what is not an `http://` URL with a host, before any I/O.
fn check_url(url: &str) -> Result<reqwest::Url, TransportError> {
    let bad = |why: &str| {
        TransportError::new(
            TransportErrorKind::Protocol,
            format!("invalid server URL {url:?}: {why} (expected http(s)://host:port/)"),
        )
    };
    let parsed = reqwest::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    match parsed.scheme() {
        "http" | "https" => {}
        _ => return Err(bad("not http:// or https://")),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    Ok(parsed)
}

/// The host of a `host:port` (what a certificate must name).
fn host_of(at: &str) -> &str {
    at.rsplit_once(':').map_or(at, |(h, _)| h)
}

/// A failed request, said in words: what happened, and where.
fn request_error(at: &str, what: &str, e: reqwest::Error) -> TransportError {
    use std::error::Error as _;
    // A certificate problem is said as such (and not retried).
    if let Some(tls) = crate::tls::tls_failure(&e, at, host_of(at)) {
        return tls;
    }
    if e.is_timeout() {
        return TransportError::with_source(
            TransportErrorKind::Timeout,
            format!("no answer from {at} to {what} in time"),
            e,
        );
    }
    // The refusal is an I/O error somewhere down the chain of causes.
    let refused = std::iter::successors(e.source(), |s| (*s).source())
        .filter_map(|s| s.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::ConnectionRefused);
    let message = if refused {
        format!("connection refused at {at}")
    } else if e.is_connect() {
        format!("cannot connect to {at}: {e}")
    } else {
        format!("{what} to {at} failed: {e}")
    };
    TransportError::with_source(TransportErrorKind::Io, message, e)
}

/// An answer with an unexpected status, as an error of the right kind.
fn status_error(at: &str, what: &str, status: reqwest::StatusCode) -> TransportError {
    use reqwest::StatusCode as S;
    let kind = match status {
        S::NOT_FOUND | S::GONE => TransportErrorKind::Closed,
        S::FORBIDDEN | S::UNAUTHORIZED => TransportErrorKind::Rejected,
        // Full, too many connections from here, busy: try again later.
        S::TOO_MANY_REQUESTS | S::SERVICE_UNAVAILABLE | S::REQUEST_TIMEOUT => {
            TransportErrorKind::Io
        }
        s if s.is_server_error() => TransportErrorKind::Io,
        _ => TransportErrorKind::Protocol,
    };
    let message = match kind {
        TransportErrorKind::Closed => format!("{at} ended the session ({what}: HTTP {status})"),
        _ => format!("{at} answered {what} with HTTP {status}"),
    };
    TransportError::new(kind, message)
}

#[async_trait]
impl Transport for HttpTransport {
    async fn connect(&self) -> Result<BoxConnection, TransportError> {
        let base = check_url(&self.base)?;
        let at = endpoint(&base);
        let client = self
            .client
            .clone()
            .map_err(|e| TransportError::new(TransportErrorKind::Io, e))?;
        let url = |path: &str| {
            base.join(path)
                .map_err(|e| TransportError::new(TransportErrorKind::Protocol, e.to_string()))
        };
        let create = client
            .post(url("sessions")?)
            .timeout(self.connect_timeout)
            .send()
            .await
            .map_err(|e| request_error(&at, "opening a session", e))?;
        let status = create.status();
        if status != reqwest::StatusCode::CREATED {
            let mut e = status_error(&at, "opening a session", status);
            if e.kind() == TransportErrorKind::Closed {
                // No `/sessions` there: not an invitation server (or one
                // without the HTTP transport).
                e = TransportError::new(
                    TransportErrorKind::Protocol,
                    format!("{at} does not serve the HTTP transport (HTTP {status})"),
                );
            }
            return Err(e);
        }
        let body = create
            .bytes()
            .await
            .map_err(|e| request_error(&at, "opening a session", e))?;
        let id = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("session")?.as_str().map(str::to_owned))
            .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()))
            .ok_or_else(|| {
                TransportError::new(
                    TransportErrorKind::Protocol,
                    format!("{at} answered opening a session with an unexpected body"),
                )
            })?;
        let messages = url(&format!("sessions/{id}/messages"))?;
        let session = url(&format!("sessions/{id}"))?;
        let (tx, rx) = mpsc::channel(RECEIVED_QUEUE);
        let poller = tokio::spawn(
            Poller {
                client: client.clone(),
                url: messages.clone(),
                at: at.clone(),
                wait: self.poll_wait,
                deadline: self.poll_wait + self.poll_grace,
                limits: self.limits,
                tx,
            }
            .run(),
        );
        Ok(Box::new(HttpConnection {
            client,
            messages,
            session,
            at,
            request_timeout: self.request_timeout,
            rx,
            poller,
            closed: false,
        }))
    }
}

/// Long-polls the session and hands what arrives to `recv`, in order.
struct Poller {
    client: reqwest::Client,
    url: reqwest::Url,
    at: String,
    wait: Duration,
    /// A poll not answered within this is a dead server.
    deadline: Duration,
    limits: DecodeLimits,
    tx: mpsc::Sender<Result<ServerMessage, TransportError>>,
}

impl Poller {
    async fn run(self) {
        // The index of the next frame: every poll acknowledges the frames
        // before it.
        let mut from: u64 = 0;
        loop {
            let ended = match self.poll(from).await {
                Ok((frames, closed)) => {
                    for frame in frames {
                        from += 1;
                        let message = ServerMessage::decode(&frame, &self.limits).map_err(|e| {
                            TransportError::with_source(
                                TransportErrorKind::Protocol,
                                format!("undecodable message from {}: {e}", self.at),
                                e,
                            )
                        });
                        if self.tx.send(message).await.is_err() {
                            return; // the connection is gone
                        }
                    }
                    closed.map(|reason| {
                        TransportError::closed(format!("{} closed the session: {reason}", self.at))
                    })
                }
                Err(e) => Some(e),
            };
            if let Some(e) = ended {
                let _ = self.tx.send(Err(e)).await;
                return;
            }
        }
    }

    /// One poll: the frames from `from` on, and the close reason if the
    /// session closed after them.
    async fn poll(&self, from: u64) -> Result<(Vec<String>, Option<String>), TransportError> {
        let mut url = self.url.clone();
        url.query_pairs_mut()
            .append_pair("from", &from.to_string())
            .append_pair("wait_ms", &self.wait.as_millis().to_string());
        let what = "a poll";
        // One deadline for the whole exchange, body included.
        let answer = tokio::time::timeout(self.deadline, async {
            let resp = self.client.get(url).send().await?;
            let status = resp.status();
            let closed = resp
                .headers()
                .get("invitation-closed")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, closed, body))
        })
        .await;
        let (status, closed, body) = match answer {
            Err(_) => {
                return Err(TransportError::new(
                    TransportErrorKind::Timeout,
                    format!(
                        "no answer from {} to a poll within {:?}: the server is gone",
                        self.at, self.deadline
                    ),
                ));
            }
            Ok(Err(e)) => return Err(request_error(&self.at, what, e)),
            Ok(Ok(v)) => v,
        };
        if status != reqwest::StatusCode::OK {
            return Err(status_error(&self.at, what, status));
        }
        let text = String::from_utf8(body.to_vec()).map_err(|e| {
            TransportError::with_source(
                TransportErrorKind::Protocol,
                format!("{} answered a poll with non-UTF-8 bytes", self.at),
                e,
            )
        })?;
        let frames = text
            .split('\n')
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect();
        Ok((frames, closed))
    }
}

struct HttpConnection {
    client: reqwest::Client,
    messages: reqwest::Url,
    session: reqwest::Url,
    /// `host:port`, for error messages.
    at: String,
    request_timeout: Duration,
    rx: mpsc::Receiver<Result<ServerMessage, TransportError>>,
    poller: JoinHandle<()>,
    closed: bool,
}

impl HttpConnection {
    /// Ends the session on the server (best effort) and stops polling.
    fn leave(&mut self) -> Option<impl Future<Output = ()> + Send + 'static> {
        self.poller.abort();
        if std::mem::replace(&mut self.closed, true) {
            return None;
        }
        let delete = self
            .client
            .delete(self.session.clone())
            .timeout(self.request_timeout.min(Duration::from_secs(2)))
            .send();
        Some(async move {
            let _ = delete.await;
        })
    }
}

impl Drop for HttpConnection {
    fn drop(&mut self) {
        // Dropping closes: the server learns at once, as with a WebSocket.
        if let Some(delete) = self.leave() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(delete);
            }
        }
    }
}

#[async_trait]
impl Connection for HttpConnection {
    async fn send(&mut self, message: ClientMessage) -> Result<(), TransportError> {
        if self.closed {
            return Err(TransportError::closed("connection closed"));
        }
        let what = "a message";
        let sent = self
            .client
            .post(self.messages.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(message.encode())
            .timeout(self.request_timeout)
            .send()
            .await;
        match sent {
            Ok(resp) if resp.status() == reqwest::StatusCode::ACCEPTED => Ok(()),
            Ok(resp) => Err(status_error(&self.at, what, resp.status())),
            Err(e) => Err(request_error(&self.at, what, e)),
        }
    }

    async fn recv(&mut self) -> Result<ServerMessage, TransportError> {
        if self.closed {
            return Err(TransportError::closed("connection closed"));
        }
        // `mpsc::Receiver::recv` is cancel-safe.
        match self.rx.recv().await {
            Some(Ok(message)) => Ok(message),
            Some(Err(e)) => {
                if !matches!(e.kind(), TransportErrorKind::Protocol) {
                    // The poller stopped: the session is over for us.
                    self.closed = true;
                    self.poller.abort();
                }
                Err(e)
            }
            None => {
                self.closed = true;
                Err(TransportError::closed(format!(
                    "the session at {} is closed",
                    self.at
                )))
            }
        }
    }

    async fn close(&mut self) {
        if let Some(delete) = self.leave() {
            delete.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_before_any_io() {
        assert!(check_url("http://127.0.0.1:7600/").is_ok());
        assert!(check_url("https://example.org/").is_ok());
        for url in ["not a url", "ws://127.0.0.1:1/", "http:///", "ftp://x/"] {
            let e = check_url(url).unwrap_err();
            assert!(!e.is_retryable(), "{e}");
            assert!(e.to_string().starts_with("invalid server URL"), "{e}");
        }
        let u = check_url("http://example.org/x/").unwrap();
        assert_eq!(endpoint(&u), "example.org:80");
    }

    #[tokio::test]
    async fn refused_connection_says_so_and_where() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let e = match HttpTransport::new(format!("http://127.0.0.1:{port}"))
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
        assert!(e.is_retryable());
    }
}
