//! Fault injection around any transport: lost, duplicated, delayed and
//! reordered messages, broken links and partitions — each by probability,
//! all drawn from one seed, so a run can be replayed exactly (under tokio's
//! paused clock).
//!
//! Faults apply per message: `drop` and `duplicate` in both directions,
//! `delay` (uniform jitter, which also reorders) on the way to the client,
//! `disconnect` breaks the link, and `partition` makes connects fail for a
//! while. Connection-level faults: `drop_welcome` loses the answer to a
//! `hello`; `stall` makes the client stop reading for a while (the server
//! keeps writing: its queue fills), and a stalled client may keep writing
//! (`stall_writes` `sync` requests: enough of them get the link dropped as
//! too slow); `sync_burst` sends a burst of `sync` requests ahead of a
//! client message, as a misbehaving client would. Answers to injected
//! `sync`s are taken out before the client sees them, checking that each
//! got exactly one. The knobs can be changed during a run (e.g. healed at the
//! end).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::collections::HashMap;

use async_trait::async_trait;
use invitation_core::RequestId;
use invitation_core::protocol::{ClientBody, ClientMessage, Control, ServerBody, ServerMessage};
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
    /// Probability that a `welcome` (the answer to `hello`) is lost.
    pub drop_welcome: f64,
    /// Probability, per server message the client reads, that it then
    /// stops reading for a while (not again until as long after).
    pub stall: f64,
    /// How long the client stops reading, uniform in this range.
    pub stall_for: (Duration, Duration),
    /// How many `sync` requests a stalled client writes as it stops
    /// reading, uniform in this range (each answer waits in the server's
    /// queue: more than it holds gets the link dropped as too slow).
    pub stall_writes: (u32, u32),
    /// Probability, per client message after the `hello`, that a burst of
    /// `sync` requests goes out first.
    pub sync_burst: f64,
    /// How many `sync` requests a burst has, uniform in this range.
    pub sync_burst_size: (u32, u32),
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
#[non_exhaustive]
pub struct FaultStats {
    /// Messages lost.
    pub dropped: u64,
    /// Messages duplicated.
    pub duplicated: u64,
    /// Links broken.
    pub disconnects: u64,
    /// Connects refused by a partition.
    pub partitioned_connects: u64,
    /// `welcome`s lost.
    pub welcomes_dropped: u64,
    /// Times the client stopped reading.
    pub stalls: u64,
    /// Bursts of `sync` requests sent.
    pub sync_bursts: u64,
    /// `sync` requests sent in bursts.
    pub syncs_sent: u64,
    /// Answers to them received (and kept from the client).
    pub syncs_answered: u64,
    /// Answers to a burst `sync` that was already answered: a broken rule
    /// (one answer per message).
    pub syncs_answered_twice: u64,
}

impl FaultStats {
    /// Adds `other` to these counters (to sum over links or runs).
    pub fn add(&mut self, other: &FaultStats) {
        self.dropped += other.dropped;
        self.duplicated += other.duplicated;
        self.disconnects += other.disconnects;
        self.partitioned_connects += other.partitioned_connects;
        self.welcomes_dropped += other.welcomes_dropped;
        self.stalls += other.stalls;
        self.sync_bursts += other.sync_bursts;
        self.syncs_sent += other.syncs_sent;
        self.syncs_answered += other.syncs_answered;
        self.syncs_answered_twice += other.syncs_answered_twice;
    }
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
            hello_sent: false,
            stalled_until: None,
            next_stall: None,
            bursts: 0,
            to_write: Vec::new(),
            burst_syncs: HashMap::new(),
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
    /// A `hello` went out: bursts may follow (before it, a `sync` would
    /// only get the link refused).
    hello_sent: bool,
    /// The client reads nothing until then.
    stalled_until: Option<Instant>,
    /// No new stall before then (so no message waits through two).
    next_stall: Option<Instant>,
    /// Bursts sent on this connection (for unique request ids).
    bursts: u64,
    /// A burst to write before reading on (a stall started).
    to_write: Vec<ClientMessage>,
    /// Request ids of burst `sync`s: answered yet?
    burst_syncs: HashMap<RequestId, bool>,
}

impl FaultyConnection {
    fn roll<R>(&self, f: impl FnOnce(&mut Shared) -> R) -> R {
        f(&mut self.shared.lock().expect("fault lock"))
    }

    /// Takes the answer to a burst `sync` out of the stream (true), counting
    /// it; anything else passes (false).
    fn take_burst_answer(&mut self, message: &ServerMessage) -> bool {
        let re = match &message.body {
            ServerBody::Sync(sync) => sync.re.as_ref(),
            ServerBody::Error(e) => e.re.as_ref(),
            _ => None,
        };
        let Some(answered) = re.and_then(|re| self.burst_syncs.get_mut(re)) else {
            return false;
        };
        let twice = std::mem::replace(answered, true);
        let mut s = self.shared.lock().expect("fault lock");
        if twice {
            s.stats.syncs_answered_twice += 1;
        } else {
            s.stats.syncs_answered += 1;
        }
        true
    }

    /// Rolls whether a burst of `sync`s goes out before the next message;
    /// returns the burst.
    fn roll_burst(&mut self) -> Vec<ClientMessage> {
        if !self.hello_sent {
            return Vec::new();
        }
        let n = {
            let mut s = self.shared.lock().expect("fault lock");
            let p = s.config.sync_burst;
            if !s.rng.chance(p) {
                return Vec::new();
            }
            let (lo, hi) = s.config.sync_burst_size;
            lo + s.rng.below(u64::from(hi.saturating_sub(lo)) + 1) as u32
        };
        self.burst(n)
    }

    /// `n` fresh `sync` requests, remembered so their answers are taken out.
    fn burst(&mut self, n: u32) -> Vec<ClientMessage> {
        if n == 0 {
            return Vec::new();
        }
        {
            let mut s = self.shared.lock().expect("fault lock");
            s.stats.sync_bursts += 1;
            s.stats.syncs_sent += u64::from(n);
        }
        self.bursts += 1;
        let mut out: Vec<ClientMessage> = (0..n)
            .map(|i| {
                let id = RequestId::new(format!("burst{}s{i}", self.bursts)).expect("valid id");
                self.burst_syncs.insert(id.clone(), false);
                ClientMessage::new(id, Control::Sync)
            })
            .collect();
        out.reverse(); // popped from the end: sent in order
        out
    }

    /// After the client read a message: maybe it stops reading for a while
    /// (and writes a burst of `sync`s as it does).
    fn roll_stall(&mut self) {
        let now = Instant::now();
        if self.next_stall.is_some_and(|t| now < t) {
            return;
        }
        let writes = {
            let mut s = self.shared.lock().expect("fault lock");
            let p = s.config.stall;
            if !s.rng.chance(p) {
                return;
            }
            let (lo, hi) = s.config.stall_for;
            let d = s.rng.between(lo, hi);
            s.stats.stalls += 1;
            self.stalled_until = Some(now + d);
            self.next_stall = Some(now + d + hi);
            let (wlo, whi) = s.config.stall_writes;
            wlo + s.rng.below(u64::from(whi.saturating_sub(wlo)) + 1) as u32
        };
        if self.hello_sent {
            self.to_write = self.burst(writes);
        }
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
        let mut burst = self.roll_burst();
        while let Some(sync) = burst.pop() {
            self.inner.send(sync).await?;
        }
        if matches!(message.body, ClientBody::Control(Control::Hello { .. })) {
            self.hello_sent = true;
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
            while let Some(sync) = self.to_write.pop() {
                if self.inner.send(sync).await.is_err() {
                    // The link is gone: reading on finds out.
                    self.to_write.clear();
                }
            }
            if let Some(until) = self.stalled_until {
                // Not reading: what the server writes waits in its queue.
                tokio::time::sleep_until(until).await;
                self.stalled_until = None;
            }
            if let Some(Reverse(first)) = self.held.peek() {
                if first.at <= Instant::now() {
                    let Reverse(h) = self.held.pop().expect("peeked");
                    self.roll_stall();
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
                    Ok(m) if self.take_burst_answer(&m) => {}
                    Ok(m) => {
                        let fate = self.roll(|s| s.fate(false));
                        if fate.disconnect {
                            self.broken = true;
                            self.inner.close().await;
                            return Err(TransportError::closed("link broken (injected)"));
                        }
                        let lost_welcome = matches!(m.body, ServerBody::Welcome { .. })
                            && self.roll(|s| {
                                let p = s.config.drop_welcome;
                                let lost = s.rng.chance(p);
                                s.stats.welcomes_dropped += u64::from(lost);
                                lost
                            });
                        if !fate.drop && !lost_welcome {
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
