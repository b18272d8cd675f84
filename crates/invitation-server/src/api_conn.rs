//! What one client can make the HTTP API hold: a listener for axum that
//! admits at most a fixed number of connections at once (the next waits in
//! the kernel's backlog until one closes), at most a smaller number from
//! one address (more are closed at once, so that one source cannot take
//! every slot), and closes a connection that sends nothing for the idle
//! time (a request head sent a byte a minute, or a kept-alive connection
//! nobody uses). Hyper bounds the bytes buffered per connection; together
//! the API's memory is bounded.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_rustls::Accept;

use crate::tls::{ServerTls, Stream};

/// Connections served at once by the API.
pub(crate) const MAX_API_CONNECTIONS: usize = 256;
/// Connections served at once from one address (a backend's connection
/// pool needs a handful).
pub(crate) const MAX_API_CONNECTIONS_PER_IP: usize = 32;
/// Silence after which an API connection is closed.
pub(crate) const API_IDLE: Duration = Duration::from_secs(30);

/// A TCP listener with a connection cap and an idle deadline.
pub(crate) struct Bounded {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    idle: Duration,
    per_ip: usize,
    /// Connections open per address (an address goes with its last one).
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
    /// The server's TLS, and the time its handshake may take.
    tls: Option<(ServerTls, Duration)>,
}

impl Bounded {
    pub(crate) fn new(listener: TcpListener, max: usize, per_ip: usize, idle: Duration) -> Self {
        Self {
            listener,
            slots: Arc::new(Semaphore::new(max)),
            idle,
            per_ip,
            open: Arc::default(),
            tls: None,
        }
    }

    /// Serves TLS only: each admitted connection first completes the
    /// handshake, within `handshake`.
    pub(crate) fn with_tls(mut self, tls: ServerTls, handshake: Duration) -> Self {
        self.tls = Some((tls, handshake));
        self
    }

    /// Counts a connection from `ip`, unless that address is at its cap.
    fn admit(&self, ip: IpAddr) -> Option<PerIp> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.per_ip {
            return None;
        }
        *n += 1;
        Some(PerIp {
            ip,
            open: self.open.clone(),
        })
    }
}

/// One connection counted against its address until dropped.
struct PerIp {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Drop for PerIp {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

impl axum::serve::Listener for Bounded {
    type Io = Conn;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Conn, SocketAddr) {
        // A slot first: at the cap, nothing more is accepted.
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            match self.listener.accept().await {
                Ok((stream, peer)) => {
                    let Some(counted) = self.admit(peer.ip()) else {
                        // Closed at once; the slot stays for the next.
                        tracing::debug!(%peer, "too many HTTP API connections from this address: closed");
                        continue;
                    };
                    let (io, first) = match &self.tls {
                        None => (Io::Ready(Stream::Plain(stream)), self.idle),
                        Some((tls, handshake)) => {
                            (Io::Handshake(Box::pin(tls.start(stream))), *handshake)
                        }
                    };
                    return (
                        Conn {
                            io,
                            _permit: permit,
                            _counted: counted,
                            idle: self.idle,
                            deadline: Box::pin(tokio::time::sleep(first)),
                        },
                        peer,
                    );
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "HTTP API accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// Where an admitted connection is.
enum Io {
    /// The TLS handshake is under way.
    Handshake(Pin<Box<Accept<TcpStream>>>),
    /// Ready for HTTP.
    Ready(Stream),
    /// The handshake failed or took too long.
    Failed,
}

/// An admitted connection: gives its slot back when dropped; reading fails
/// with `TimedOut` after `idle` without a byte (and reading or writing,
/// when the TLS handshake does not finish within its time).
pub(crate) struct Conn {
    io: Io,
    _permit: OwnedSemaphorePermit,
    _counted: PerIp,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl Conn {
    /// Drives the TLS handshake, if one is under way, to its end; then the
    /// stream.
    fn poll_stream(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<&mut Stream>> {
        if let Io::Handshake(accept) = &mut self.io {
            match accept.as_mut().poll(cx) {
                Poll::Ready(Ok(tls)) => {
                    self.io = Io::Ready(Stream::Tls(Box::new(tls)));
                    let next = Instant::now() + self.idle;
                    self.deadline.as_mut().reset(next);
                }
                Poll::Ready(Err(e)) => {
                    self.io = Io::Failed;
                    tracing::debug!(error = %e, "HTTP API TLS handshake failed");
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => {
                    return match self.deadline.as_mut().poll(cx) {
                        Poll::Ready(()) => {
                            self.io = Io::Failed;
                            Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "the HTTP API client did not finish the TLS handshake in time",
                            )))
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
        match &mut self.io {
            Io::Ready(stream) => Poll::Ready(Ok(stream)),
            _ => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the TLS handshake failed",
            ))),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let stream = match this.poll_stream(cx) {
            Poll::Ready(Ok(stream)) => stream,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        match Pin::new(stream).poll_read(cx, buf) {
            Poll::Ready(result) => {
                let next = Instant::now() + this.idle;
                this.deadline.as_mut().reset(next);
                Poll::Ready(result)
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the HTTP API client sent nothing for too long",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.poll_stream(cx) {
            Poll::Ready(Ok(stream)) => Pin::new(stream).poll_write(cx, buf),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.poll_stream(cx) {
            Poll::Ready(Ok(stream)) => Pin::new(stream).poll_flush(cx),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.io {
            Io::Ready(stream) => Pin::new(stream).poll_shutdown(cx),
            // Nothing was said over TLS: dropping the socket is the close.
            _ => Poll::Ready(Ok(())),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.poll_stream(cx) {
            Poll::Ready(Ok(stream)) => Pin::new(stream).poll_write_vectored(cx, bufs),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_write_vectored(&self) -> bool {
        // Asked once, before the TLS handshake ends: plain sockets only.
        match &self.io {
            Io::Ready(stream) => stream.is_write_vectored(),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SOON: Duration = Duration::from_secs(10);

    /// At the cap the next connection is not accepted until one admitted
    /// closes; an admitted connection that sends nothing gets `TimedOut`
    /// after the idle time, and one that keeps sending does not.
    #[tokio::test]
    async fn connections_are_capped_and_idle_ones_time_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut bounded = Bounded::new(listener, 2, 2, Duration::from_millis(300));
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        let (mut first, _) = tokio::time::timeout(SOON, bounded.accept()).await.unwrap();
        let (second, _) = tokio::time::timeout(SOON, bounded.accept()).await.unwrap();
        // The third waits for a slot (the kernel already completed its
        // handshake: it is in the backlog).
        let mut third = Box::pin(bounded.accept());
        assert!(
            tokio::time::timeout(Duration::from_millis(200), third.as_mut())
                .await
                .is_err(),
            "a third connection was admitted past the cap of 2"
        );
        drop(second);
        let (_third, _) = tokio::time::timeout(SOON, third)
            .await
            .expect("a slot freed");

        // The first client keeps talking for longer than the idle time,
        // a byte at a time: never timed out.
        let mut buf = [0u8; 1];
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(700) {
            clients[0].write_all(b"x").await.unwrap();
            let n = tokio::time::timeout(SOON, first.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(n, 1);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Then silence: timed out within the idle time (and a bound).
        let err = tokio::time::timeout(SOON, first.read(&mut buf))
            .await
            .expect("the idle deadline fires")
            .expect_err("timed out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    /// Past the per-address cap a connection is closed at once (its slot
    /// stays free); once one of that address's connections ends, the next
    /// is admitted.
    #[tokio::test]
    async fn one_address_cannot_take_every_slot() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut bounded = Bounded::new(listener, 10, 2, Duration::from_secs(30));
        let open = bounded.open.clone();
        let mut clients = Vec::new();
        for _ in 0..3 {
            clients.push(TcpStream::connect(addr).await.unwrap());
        }
        let (a, _) = tokio::time::timeout(SOON, bounded.accept()).await.unwrap();
        let (b, _) = tokio::time::timeout(SOON, bounded.accept()).await.unwrap();
        // The third is accepted by the kernel, then closed by the cap: its
        // client reads the end of the stream.
        let mut next = Box::pin(bounded.accept());
        assert!(
            tokio::time::timeout(Duration::from_millis(200), next.as_mut())
                .await
                .is_err(),
            "a third connection from one address was admitted past its cap of 2"
        );
        let mut buf = [0u8; 1];
        let n = tokio::time::timeout(SOON, clients[2].read(&mut buf))
            .await
            .expect("closed in time")
            .unwrap_or(0);
        assert_eq!(n, 0, "the connection over the cap was closed");
        assert_eq!(open.lock().unwrap()[&addr.ip()], 2);
        drop(a);
        let _fourth = TcpStream::connect(addr).await.unwrap();
        let (d, _) = tokio::time::timeout(SOON, next)
            .await
            .expect("admitted once one ended");
        assert_eq!(open.lock().unwrap()[&addr.ip()], 2);
        drop(d);
        drop(b);
        assert!(
            open.lock().unwrap().is_empty(),
            "an address goes with its last connection"
        );
    }

    /// With TLS, an admitted client that never finishes the handshake holds
    /// its slot for the handshake time only: reading it fails with
    /// `TimedOut` then, and once it is dropped the next client is admitted.
    /// A client that completes the handshake is read as plain bytes.
    #[tokio::test]
    async fn a_tls_handshake_holds_its_slot_for_the_handshake_time_only() {
        let dir = std::env::temp_dir().join(format!("invitation-api-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let (cert, key) = (dir.join("c.pem"), dir.join("k.pem"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        let tls = ServerTls::load(&cert, &key).unwrap();
        let _ = std::fs::remove_dir_all(&dir);

        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut bounded =
            Bounded::new(listener, 1, 1, SOON).with_tls(tls, Duration::from_millis(300));
        let _silent = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        let (mut first, _) = tokio::time::timeout(SOON, bounded.accept()).await.unwrap();
        // The next client waits: the silent one holds the only slot.
        let client = tokio::spawn(async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let mut roots = rustls::RootCertStore::empty();
            roots.add(made.cert.der().clone()).unwrap();
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            let mut tls = connector.connect(name, tcp).await.unwrap();
            tls.write_all(b"hello").await.unwrap();
            tls.flush().await.unwrap();
            tls
        });
        let mut second = Box::pin(bounded.accept());
        assert!(
            tokio::time::timeout(Duration::from_millis(100), second.as_mut())
                .await
                .is_err(),
            "a second connection was admitted while the first held the slot"
        );
        let mut buf = [0u8; 8];
        let err = tokio::time::timeout(SOON, first.read(&mut buf))
            .await
            .expect("the handshake deadline fires")
            .expect_err("timed out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let held = started.elapsed();
        assert!(held >= Duration::from_millis(290), "held {held:?}");
        drop(first);
        let (mut second, _) = tokio::time::timeout(SOON, second)
            .await
            .expect("the slot came back");
        let mut got = [0u8; 5];
        tokio::time::timeout(SOON, second.read_exact(&mut got))
            .await
            .expect("in time")
            .expect("read through TLS");
        assert_eq!(&got, b"hello");
        drop(client);
    }
}
