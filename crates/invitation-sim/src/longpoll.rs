//! The HTTP transport's session logic in the simulation: a link whose
//! server messages reach the client only by long polls over the core's
//! [`FrameLog`] (numbered, acknowledged by the next poll's `from`), the
//! same log `invitation-server` keeps for an HTTP session. Poll answers are
//! lost at random; the client then asks again from the same number, as the
//! HTTP client does. Each link checks that what the client received is
//! exactly what the server wrote, in order (the client's own gap and
//! duplicate handling would hide a message lost or doubled here from the
//! oracle), and the oracle checks the rest.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use invitation::testing::fault::SimRng;
use invitation_core::DecodeLimits;
use invitation_core::longpoll::FrameLog;
use invitation_core::protocol::{ClientMessage, ServerMessage};
use invitation_transport::{
    BoxConnection, Connection, Transport, TransportError, TransportErrorKind,
};

/// Bytes a session keeps for its client (the server's default: twice a
/// 64 KiB send buffer).
const CAP: usize = 128 * 1024;

/// How long a client waits before asking again after a lost answer: at
/// once. (A wait here would not bound how late a message can arrive: the
/// link reads the server's next message only once the one before got
/// through, so waits would add up along a queue of messages, past any
/// slack the oracle can allow. What delay costs is the `slow` profile's
/// question; this profile asks whether a lost answer loses or doubles
/// anything.)
const RETRY: Duration = Duration::ZERO;

/// Answers lost in a row at most (then one gets through).
const MAX_LOST_IN_ROW: u32 = 4;

/// The longest lost answers hold a message up.
pub(crate) const MAX_HOLD: Duration = RETRY.saturating_mul(MAX_LOST_IN_ROW);

/// Wraps a transport: every connection becomes a long-polled session.
#[derive(Clone)]
pub(crate) struct LongPollTransport<T> {
    inner: T,
    rng: Arc<Mutex<SimRng>>,
    /// Chance that a poll's answer is lost.
    loss: f64,
    stats: Arc<Mutex<LongPollStats>>,
}

/// What the long-poll links did and saw, over every device.
#[derive(Debug, Default)]
pub(crate) struct LongPollStats {
    /// Answers lost and asked for again.
    pub(crate) lost: u64,
    /// Messages received that were not the next one written (must stay
    /// empty).
    pub(crate) misdelivered: Vec<String>,
}

impl<T> LongPollTransport<T> {
    pub(crate) fn new(inner: T, seed: u64, loss: f64, stats: Arc<Mutex<LongPollStats>>) -> Self {
        Self {
            inner,
            rng: Arc::new(Mutex::new(SimRng::new(seed))),
            loss,
            stats,
        }
    }
}

#[async_trait]
impl<T: Transport> Transport for LongPollTransport<T> {
    async fn connect(&self) -> Result<BoxConnection, TransportError> {
        let inner = self.inner.connect().await?;
        Ok(Box::new(LongPollConn {
            inner,
            log: FrameLog::new(CAP),
            from: 0,
            lost_in_row: 0,
            held: VecDeque::new(),
            written: VecDeque::new(),
            rng: self.rng.clone(),
            loss: self.loss,
            stats: self.stats.clone(),
        }))
    }
}

struct LongPollConn {
    /// The server side of the session: what it writes lands in `log`.
    inner: BoxConnection,
    log: FrameLog,
    /// The client's count of messages received: its next poll's `from`.
    from: u64,
    /// Answers lost since the last one that got through.
    lost_in_row: u32,
    /// Decoded from a poll answer, not yet handed to the driver.
    held: VecDeque<ServerMessage>,
    /// What the server wrote and the client has not received yet, kept
    /// apart from the log: the check.
    written: VecDeque<String>,
    rng: Arc<Mutex<SimRng>>,
    loss: f64,
    stats: Arc<Mutex<LongPollStats>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait]
impl Connection for LongPollConn {
    async fn send(&mut self, message: ClientMessage) -> Result<(), TransportError> {
        self.inner.send(message).await
    }

    /// Cancel-safe: every state change happens between awaits, and what a
    /// poll answered is kept in `held` until taken.
    async fn recv(&mut self) -> Result<ServerMessage, TransportError> {
        loop {
            if let Some(m) = self.held.pop_front() {
                return Ok(m);
            }
            // A poll: acknowledges what the client holds.
            self.log.ack(self.from).map_err(|e| {
                TransportError::new(TransportErrorKind::Protocol, format!("poll refused: {e}"))
            })?;
            if self.log.visible_from(self.from).next().is_none() {
                // Nothing yet: the poll is held until the server writes.
                let m = self.inner.recv().await?;
                self.written.push_back(m.encode());
                if self.log.push(m.encode()).is_err() {
                    return Err(TransportError::closed("the session dropped a slow client"));
                }
                self.log.flush();
            }
            if self.lost_in_row < MAX_LOST_IN_ROW && lock(&self.rng).chance(self.loss) {
                // The answer is lost on its way: ask again, same `from`.
                self.lost_in_row += 1;
                lock(&self.stats).lost += 1;
                tokio::time::sleep(RETRY).await;
                continue;
            }
            self.lost_in_row = 0;
            let limits = DecodeLimits::default();
            for frame in self.log.visible_from(self.from) {
                let expected = self.written.pop_front();
                if expected.as_deref() != Some(frame) {
                    lock(&self.stats).misdelivered.push(format!(
                        "long-poll link delivered {frame} where {expected:?} was next"
                    ));
                }
                let m = ServerMessage::decode(frame, &limits).map_err(|e| {
                    TransportError::new(TransportErrorKind::Protocol, e.to_string())
                })?;
                self.held.push_back(m);
            }
            self.from += self.held.len() as u64;
        }
    }

    async fn close(&mut self) {
        self.inner.close().await;
    }
}
