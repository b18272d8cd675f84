//! Token-bucket rate limits, keyed (per IP, per user). Time is passed in,
//! so the limits behave the same under tokio's paused clock in tests.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// One bucket: `rate` tokens per second, at most `burst` stored.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Many buckets, one per key. Idle full buckets are swept so memory stays
/// bounded by the number of recently active keys.
#[derive(Debug)]
pub(crate) struct KeyedLimiter<K> {
    rate: f64,
    burst: f64,
    buckets: HashMap<K, Bucket>,
    last_sweep: Option<Instant>,
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// `rate` per second, bursts of `burst`. Nonsense values cannot make it
    /// panic: a rate that is not a positive number counts as the smallest
    /// positive one, a burst below 1 (or NaN) as 1; the server refuses such
    /// settings at start anyway.
    pub(crate) fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate: if rate > 0.0 { rate } else { f64::MIN_POSITIVE },
            burst: burst.max(1.0),
            buckets: HashMap::new(),
            last_sweep: None,
        }
    }

    /// Takes one token for `key`, or says how long until one is available.
    pub(crate) fn check(&mut self, key: &K, now: Instant) -> Result<(), Duration> {
        self.sweep(now);
        let bucket = self.buckets.entry(key.clone()).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            // Checked: a tiny rate makes a huge (or infinite) wait.
            let wait = Duration::try_from_secs_f64((1.0 - bucket.tokens) / self.rate)
                .unwrap_or(Duration::MAX);
            Err(wait.max(Duration::from_millis(1)))
        }
    }

    /// Keys currently tracked.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buckets.len()
    }

    fn sweep(&mut self, now: Instant) {
        let every = Duration::from_secs(10);
        if self
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < every)
        {
            return;
        }
        self.last_sweep = Some(now);
        let full_after =
            Duration::try_from_secs_f64(self.burst / self.rate).unwrap_or(Duration::MAX);
        self.buckets
            .retain(|_, b| now.saturating_duration_since(b.last) < full_after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut l = KeyedLimiter::new(2.0, 3.0);
        for _ in 0..3 {
            assert!(l.check(&"a", t0).is_ok());
        }
        let wait = l.check(&"a", t0).unwrap_err();
        assert!(wait > Duration::from_millis(400) && wait <= Duration::from_millis(500));
        assert!(l.check(&"b", t0).is_ok(), "keys are independent");
        assert!(l.check(&"a", t0 + Duration::from_millis(500)).is_ok());
        // Idle keys are forgotten.
        l.check(&"c", t0 + Duration::from_secs(60)).unwrap();
        assert_eq!(l.len(), 1);
    }

    /// Absurd settings (the server refuses them at start, but the limiter
    /// is public) make long waits, never a panic.
    #[test]
    fn absurd_rates_do_not_panic() {
        let t0 = Instant::now();
        for (rate, burst) in [
            (1e-300, 1.0),
            (0.0, 1.0),
            (-1.0, f64::NAN),
            (f64::NAN, 1.0),
            (f64::INFINITY, f64::INFINITY),
        ] {
            let mut l = KeyedLimiter::new(rate, burst);
            let _ = l.check(&"a", t0);
            let _ = l.check(&"a", t0);
            let _ = l.check(&"b", t0 + Duration::from_secs(20));
        }
    }
}
