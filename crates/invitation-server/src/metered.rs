//! A stream wrapper that bounds the time a peer may take to finish a
//! message it started.
//!
//! The WebSocket layer buffers a partial frame until its last byte arrives:
//! a client that sends most of a large frame and stops holds that buffer
//! (up to the message size limit) for as long as it likes, and the
//! heartbeat cannot help (a peer in the middle of a frame cannot answer a
//! ping). This wrapper counts the bytes read off the socket; the connection
//! task tells it how many bytes each complete frame took
//! ([`Metered::consumed`]). When more than [`SLACK`] bytes are read but not
//! yet part of a complete frame for longer than the message timeout, the
//! next read fails with `TimedOut`, which ends the connection.
//!
//! The count is exact for unfragmented frames (what every client of this
//! protocol sends); a fragmented message is under-counted by a few bytes per
//! fragment, which the slack absorbs.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Bytes that may sit unfinished without a deadline (a few frame headers).
pub(crate) const SLACK: u64 = 1024;

/// Wire size of a client frame (masked) carrying `payload` bytes.
pub(crate) fn client_frame_len(payload: usize) -> u64 {
    let len = payload as u64;
    let header = match len {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    };
    header + 4 + len
}

/// See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Metered<S> {
    inner: S,
    read: u64,
    consumed: u64,
    timeout: Duration,
    /// Armed while more than [`SLACK`] bytes are unfinished.
    stall: Option<Pin<Box<Sleep>>>,
}

impl<S> Metered<S> {
    /// Wraps `inner`; a started message must finish within `timeout`.
    pub(crate) fn new(inner: S, timeout: Duration) -> Self {
        Self {
            inner,
            read: 0,
            consumed: 0,
            timeout,
            stall: None,
        }
    }

    /// Forget what was read so far (after the HTTP handshake).
    pub(crate) fn reset(&mut self) {
        self.consumed = self.read;
        self.stall = None;
    }

    /// A complete frame of `bytes` wire bytes was taken out of the buffer.
    pub(crate) fn consumed(&mut self, bytes: u64) {
        self.consumed = (self.consumed + bytes).min(self.read);
        if self.unfinished() <= SLACK {
            self.stall = None;
        }
    }

    fn unfinished(&self) -> u64 {
        self.read - self.consumed
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.read += (buf.filled().len() - before) as u64;
                if this.unfinished() > SLACK && this.stall.is_none() {
                    this.stall = Some(Box::pin(tokio::time::sleep_until(
                        Instant::now() + this.timeout,
                    )));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = this
                    .stall
                    .as_mut()
                    .is_some_and(|stall| stall.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "message not completed in time",
                    )))
                } else {
                    Poll::Pending
                }
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn frame_lengths() {
        assert_eq!(client_frame_len(0), 6);
        assert_eq!(client_frame_len(125), 131);
        assert_eq!(client_frame_len(126), 134);
        assert_eq!(client_frame_len(70_000), 70_014);
    }

    /// More than the slack unfinished for the timeout: the read fails. A
    /// peer that completes its frames is never timed out.
    #[tokio::test(start_paused = true)]
    async fn an_unfinished_message_times_out() {
        let (mut peer, ours) = tokio::io::duplex(1 << 16);
        let mut m = Metered::new(ours, Duration::from_secs(10));
        let mut buf = vec![0u8; 8192];

        // Complete frames, accounted: no deadline.
        peer.write_all(&[1u8; 3000]).await.unwrap();
        let n = m.read(&mut buf).await.unwrap();
        m.consumed(n as u64);
        assert!(m.stall.is_none());

        // 2 KiB of a frame that never finishes.
        peer.write_all(&[2u8; 2048]).await.unwrap();
        let n = m.read(&mut buf).await.unwrap();
        assert_eq!(n, 2048);
        let started = Instant::now();
        let err = m.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(Instant::now() - started, Duration::from_secs(10));
    }
}
