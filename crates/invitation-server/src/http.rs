//! The HTTP side of a new connection: read the request head (bounded, under
//! the handshake timeout), answer `/healthz` and `/metrics` directly, refuse
//! bad Origins before any upgrade, and hand WebSocket upgrades and the HTTP
//! transport's requests (`/sessions…`) on with the bytes already read.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Largest request head accepted (request line + headers).
pub(crate) const MAX_HEAD_BYTES: usize = 8 * 1024;

/// What the request asks for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route {
    /// A WebSocket upgrade, with its Origin header if any.
    Upgrade {
        /// The `Origin` header.
        origin: Option<String>,
    },
    /// `GET /healthz`.
    Health,
    /// `GET /metrics`.
    Metrics,
    /// `GET /demo` and below (path and query): the development demo,
    /// a 404 unless `dev_demo` is on.
    Demo(String),
    /// `/sessions…`: the HTTP transport ([`crate::http_transport`]).
    Sessions,
    /// Anything else.
    NotFound,
}

/// Why the head could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeadError {
    /// Over [`MAX_HEAD_BYTES`].
    #[error("request head too large")]
    TooLarge,
    /// Not HTTP.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// The peer closed or the socket failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

/// Reads the request head; returns the route and every byte read.
pub(crate) async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<(Route, Vec<u8>), HeadError> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(HeadError::Io(io::ErrorKind::UnexpectedEof.into()));
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let route = route(&req);
                return Ok((route, buf));
            }
            Ok(httparse::Status::Partial) => {
                if buf.len() >= MAX_HEAD_BYTES {
                    return Err(HeadError::TooLarge);
                }
            }
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(e) => return Err(HeadError::Malformed(e.to_string())),
        }
        if buf.len() > MAX_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
    }
}

fn header<'a>(req: &'a httparse::Request<'_, '_>, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .and_then(|h| std::str::from_utf8(h.value).ok())
}

fn route(req: &httparse::Request<'_, '_>) -> Route {
    let upgrade = header(req, "upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if upgrade {
        return Route::Upgrade {
            origin: header(req, "origin").map(str::to_owned),
        };
    }
    match (req.method, req.path) {
        (Some("GET"), Some("/healthz")) => Route::Health,
        (Some("GET"), Some("/metrics")) => Route::Metrics,
        (Some("GET"), Some(p))
            if p == "/demo" || p.starts_with("/demo/") || p.starts_with("/demo?") =>
        {
            Route::Demo(p.to_owned())
        }
        (_, Some(p)) if p == "/sessions" || p.starts_with("/sessions/") => Route::Sessions,
        _ => Route::NotFound,
    }
}

/// Writes a small HTTP/1.1 response and closes.
pub(crate) async fn respond<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    content_type: &str,
    body: &str,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Is this Origin allowed? No Origin (a native client) is; `*` allows all.
pub(crate) fn origin_allowed(origin: Option<&str>, allowed: &[String]) -> bool {
    match origin {
        None => true,
        Some(o) => allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(o)),
    }
}

/// A stream that first replays bytes already read, then reads the inner
/// stream; writes go straight through. The buffer is freed once replayed.
#[derive(Debug)]
pub(crate) struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// Replays `prefix` before reading `inner`.
    pub(crate) fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            pos: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn routes() {
        let cases = [
            ("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", Route::Health),
            ("GET /metrics HTTP/1.1\r\n\r\n", Route::Metrics),
            ("GET /nope HTTP/1.1\r\n\r\n", Route::NotFound),
            ("POST /sessions HTTP/1.1\r\n\r\n", Route::Sessions),
            (
                "GET /sessions/ab/messages?from=0 HTTP/1.1\r\n\r\n",
                Route::Sessions,
            ),
            ("GET /sessionsx HTTP/1.1\r\n\r\n", Route::NotFound),
            (
                "GET /demo/token?user=a HTTP/1.1\r\n\r\n",
                Route::Demo("/demo/token?user=a".into()),
            ),
            ("GET /demonstration HTTP/1.1\r\n\r\n", Route::NotFound),
            (
                "GET / HTTP/1.1\r\nUpgrade: websocket\r\nOrigin: https://a.example\r\n\r\n",
                Route::Upgrade {
                    origin: Some("https://a.example".into()),
                },
            ),
        ];
        for (raw, want) in cases {
            let mut r = raw.as_bytes();
            let (route, bytes) = read_head(&mut r).await.unwrap();
            assert_eq!(route, want);
            assert_eq!(bytes, raw.as_bytes());
        }
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000));
        assert!(matches!(
            read_head(&mut huge.as_bytes()).await,
            Err(HeadError::TooLarge)
        ));
        assert!(matches!(
            read_head(&mut &b"\x16\x03\x01garbage\r\n\r\n"[..]).await,
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn origins() {
        assert!(origin_allowed(None, &[]));
        assert!(!origin_allowed(Some("https://evil.example"), &[]));
        assert!(origin_allowed(
            Some("https://app.example"),
            &["https://app.example".into()]
        ));
        assert!(origin_allowed(Some("https://x"), &["*".into()]));
    }

    #[tokio::test]
    async fn prefixed_replays_then_reads() {
        let inner: &[u8] = b" world";
        let mut p = Prefixed::new(b"hello".to_vec(), inner);
        let mut out = String::new();
        p.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}
