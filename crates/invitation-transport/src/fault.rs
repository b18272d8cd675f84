//! Fault injection around any transport: lost, duplicated, delayed and
//! reordered messages, broken links and partitions — each by probability,
//! all drawn from one seed, so a run can be replayed exactly (under tokio's
//! paused clock).
//!
//! Faults apply per message: `drop` and `duplicate` in both directions,
//! `delay` (uniform jitter, which also reorders) on the way to the client,
//! `disconnect` breaks the link, and `partition` makes connects fail for a
//! while. The knobs can be changed during a run (e.g. healed at the end).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use invitation_core::protocol::{ClientMessage, ServerMessage};
use tokio::time::Instant;

use crate::{BoxConnection, Connection, Transport, TransportError, TransportErrorKind};

/// Fault probabilities and ranges.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultConfig {
    /// Probability that a message (either direction) is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Delay of each server message, uniform in this range (reorders).
    pub delay: (Duration, Duration),
    /// Probability, per message, that the link breaks.
    pub disconnect: f64,
    /// Probability, per connect attempt, that a partition starts.
    pub partition: f64,
    /// How long a partition lasts, uniform in this range.
    pub partition_for: (Duration, Duration),
}

/// A small seeded generator (SplitMix64): deterministic, dependency-free.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// Uniform duration in `[lo, hi]`.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        if hi <= lo {
            return lo;
        }
        lo + (hi - lo).mul_f64(self.unit())
    }
}

struct Shared {
    config: FaultConfig,
    rng: SimRng,
    partitioned_until: Option<Instant>,
    /// Counters, for reports.
    stats: FaultStats,
}

/// What happens to one message.
struct Fate {
    disconnect: bool,
    drop: bool,
    duplicate: bool,
}

impl Shared {
    /// Rolls one message's fate and counts it. The draws (disconnect, drop,
    /// then duplicate when `may_duplicate`) keep their order: seeds replay.
    fn fate(&mut self, may_duplicate: bool) -> Fate {
        let disconnect = self.rng.chance(self.config.disconnect);
        let drop = self.rng.chance(self.config.drop);
        let duplicate = may_duplicate && self.rng.chance(self.config.duplicate);
        if disconnect {
            self.stats.disconnects += 1;
        } else if drop {
            self.stats.dropped += 1;
        } else if duplicate {
            self.stats.duplicated += 1;
        }
        Fate {
            disconnect,
            drop,
            duplicate,
        }
    }
}

/// What the injector did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Messages lost.
    pub dropped: u64,
    /// Messages duplicated.
    pub duplicated: u64,
    /// Links broken.
    pub disconnects: u64,
    /// Connects refused by a partition.
    pub partitioned_connects: u64,
}

/// A transport wrapped with faults. Clones share the knobs and the generator.
#[derive(Clone)]
pub struct FaultyTransport<T> {
    inner: T,
    shared: Arc<Mutex<Shared>>,
}

impl<T> std::fmt::Debug for FaultyTransport<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultyTransport").finish_non_exhaustive()
    }
}

impl<T: Transport> FaultyTransport<T> {
    /// Wraps `inner` with `config`, drawing from `seed`.
    pub fn new(inner: T, config: FaultConfig, seed: u64) -> Self {
        Self {
            inner,
            shared: Arc::new(Mutex::new(Shared {
                config,
                rng: SimRng::new(seed),
                partitioned_until: None,
                stats: FaultStats::default(),
            })),
        }
    }

    /// Changes the faults from now on (e.g. `FaultConfig::default()` heals).
    pub fn set_config(&self, config: FaultConfig) {
        let mut s = self.shared.lock().expect("fault lock");
        s.config = config;
        s.partitioned_until = None;
    }

    /// What was injected so far.
    pub fn stats(&self) -> FaultStats {
        self.shared.lock().expect("fault lock").stats.clone()
    }
}

#[async_trait]
impl<T: Transport> Transport for FaultyTransport<T> {
    async fn connect(&self) -> Result<BoxConnection, TransportError> {
        {
            let mut s = self.shared.lock().expect("fault lock");
            let now = Instant::now();
            if s.partitioned_until.is_some_and(|t| now < t) {
                s.stats.partitioned_connects += 1;
                return Err(TransportError::new(TransportErrorKind::Io, "partitioned"));
            }
            let p = s.config.partition;
            if s.rng.chance(p) {
                let (lo, hi) = s.config.partition_for;
                let d = s.rng.between(lo, hi);
                s.partitioned_until = Some(now + d);
                s.stats.partitioned_connects += 1;
                return Err(TransportError::new(TransportErrorKind::Io, "partitioned"));
            }
        }
        let inner = self.inner.connect().await?;
        Ok(Box::new(FaultyConnection {
            inner,
            shared: self.shared.clone(),
            held: BinaryHeap::new(),
            order: 0,
            broken: false,
            inner_closed: None,
        }))
    }
}

struct Held {
    at: Instant,
    order: u64,
    message: ServerMessage,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

struct FaultyConnection {
    inner: BoxConnection,
    shared: Arc<Mutex<Shared>>,
    held: BinaryHeap<Reverse<Held>>,
    order: u64,
    broken: bool,
    inner_closed: Option<TransportError>,
}

impl FaultyConnection {
    fn roll<R>(&self, f: impl FnOnce(&mut Shared) -> R) -> R {
        f(&mut self.shared.lock().expect("fault lock"))
    }

    fn hold(&mut self, message: ServerMessage) {
        let (delay, dup_delay, dup) = {
            let mut s = self.shared.lock().expect("fault lock");
            let (lo, hi) = s.config.delay;
            let d = s.rng.between(lo, hi);
            let d2 = s.rng.between(lo, hi);
            let p = s.config.duplicate;
            let dup = s.rng.chance(p);
            if dup {
                s.stats.duplicated += 1;
            }
            (d, d2, dup)
        };
        let now = Instant::now();
        if dup {
            self.order += 1;
            self.held.push(Reverse(Held {
                at: now + dup_delay,
                order: self.order,
                message: message.clone(),
            }));
        }
        self.order += 1;
        self.held.push(Reverse(Held {
            at: now + delay,
            order: self.order,
            message,
        }));
    }
}

#[async_trait]
impl Connection for FaultyConnection {
    async fn send(&mut self, message: ClientMessage) -> Result<(), TransportError> {
        if self.broken {
            return Err(TransportError::closed("link broken (injected)"));
        }
        let fate = self.roll(|s| s.fate(true));
        if fate.disconnect {
            self.broken = true;
            self.inner.close().await;
            return Err(TransportError::closed("link broken (injected)"));
        }
        if fate.drop {
            return Ok(());
        }
        if fate.duplicate {
            self.inner.send(message.clone()).await?;
        }
        self.inner.send(message).await
    }

    async fn recv(&mut self) -> Result<ServerMessage, TransportError> {
        loop {
            if self.broken {
                return Err(TransportError::closed("link broken (injected)"));
            }
            if let Some(Reverse(first)) = self.held.peek() {
                if first.at <= Instant::now() {
                    let Reverse(h) = self.held.pop().expect("peeked");
                    return Ok(h.message);
                }
            }
            if self.inner_closed.is_some() && self.held.is_empty() {
                return Err(self
                    .inner_closed
                    .take()
                    .unwrap_or_else(|| TransportError::closed("closed")));
            }
            let next_due = self.held.peek().map(|Reverse(h)| h.at);
            tokio::select! {
                biased;
                m = self.inner.recv(), if self.inner_closed.is_none() => match m {
                    Ok(m) => {
                        let fate = self.roll(|s| s.fate(false));
                        if fate.disconnect {
                            self.broken = true;
                            self.inner.close().await;
                            return Err(TransportError::closed("link broken (injected)"));
                        }
                        if !fate.drop {
                            self.hold(m);
                        }
                    }
                    Err(e) => self.inner_closed = Some(e),
                },
                () = sleep_until(next_due) => {}
            }
        }
    }

    async fn close(&mut self) {
        self.broken = true;
        self.inner.close().await;
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic() {
        let a: Vec<u64> = {
            let mut r = SimRng::new(7);
            (0..5).map(|_| r.next_u64()).collect()
        };
        let b: Vec<u64> = {
            let mut r = SimRng::new(7);
            (0..5).map(|_| r.next_u64()).collect()
        };
        assert_eq!(a, b);
        let mut r = SimRng::new(1);
        let n = (0..10_000).filter(|_| r.chance(0.05)).count();
        assert!((400..600).contains(&n), "{n}");
    }
}
