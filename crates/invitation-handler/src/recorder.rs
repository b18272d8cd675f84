//! A handler that records every callback, for tests (feature `testing`).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use invitation_core::{AppEvent, CallId};
use tokio::sync::Notify;

use crate::context::CallContext;
use crate::events::Callback;

/// One recorded callback.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Recorded {
    /// Which callback fired.
    pub callback: Callback,
    /// The call.
    pub call_id: CallId,
    /// The complete event.
    pub event: AppEvent,
}

/// Records every callback it gets; clone it into the builder and keep a
/// copy to inspect.
///
/// Every wait has a deadline ([`Recorder::DEFAULT_DEADLINE`], or the one
/// given to [`Recorder::with_deadline`]) and panics when it passes, listing
/// every callback that did arrive: a regression fails the test, it never
/// hangs it. Waiting does not sleep, so tests stay deterministic under
/// paused time (where the deadline costs no real time).
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<(Mutex<Vec<Recorded>>, Notify)>,
    deadline: Duration,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::with_deadline(Self::DEFAULT_DEADLINE)
    }
}

impl fmt::Debug for Recorder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recorder")
            .field("callbacks", &self.callbacks())
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// A wait that ran out of time: what was awaited and what did arrive.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{wanted} #{n} did not fire within {deadline:?}; arrived: {}", Arrived(.seen))]
#[non_exhaustive]
pub struct WaitTimeout {
    /// The callback waited for.
    pub wanted: Callback,
    /// Its occurrence waited for (1 = the first).
    pub n: usize,
    /// The deadline that passed.
    pub deadline: Duration,
    /// Every callback recorded when it passed, in order.
    pub seen: Vec<Recorded>,
}

struct Arrived<'a>(&'a [Recorded]);

impl fmt::Display for Arrived<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("nothing");
        }
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} ({})", r.callback, r.call_id)?;
        }
        Ok(())
    }
}

impl Recorder {
    /// How long a wait lasts by default: two minutes, which covers the
    /// longest flows of the paused-time tests (a ring timeout plus the
    /// local fallback) at no real cost; tests over real sockets set a
    /// shorter one.
    pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(120);

    /// An empty recorder with the default deadline.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty recorder whose waits give up after `deadline`.
    pub fn with_deadline(deadline: Duration) -> Self {
        Self {
            inner: Arc::default(),
            deadline,
        }
    }

    /// The deadline of every wait.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Everything recorded so far.
    pub fn records(&self) -> Vec<Recorded> {
        self.inner.0.lock().expect("recorder lock").clone()
    }

    /// The callbacks so far, in order.
    pub fn callbacks(&self) -> Vec<Callback> {
        self.records().into_iter().map(|r| r.callback).collect()
    }

    /// How many times `callback` fired.
    pub fn count(&self, callback: Callback) -> usize {
        self.inner
            .0
            .lock()
            .expect("recorder lock")
            .iter()
            .filter(|r| r.callback == callback)
            .count()
    }

    /// Waits until `callback` has fired at least `n` times (`n` = 0 counts
    /// as 1) and returns the n-th. Panics, listing what arrived, if it has
    /// not within the deadline.
    pub async fn wait_for(&self, callback: Callback, n: usize) -> Recorded {
        match self.try_wait_for(callback, n).await {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`Recorder::wait_for`] that returns the timeout instead of panicking.
    pub async fn try_wait_for(
        &self,
        callback: Callback,
        n: usize,
    ) -> Result<Recorded, WaitTimeout> {
        let n = n.max(1);
        let found = |records: &[Recorded]| {
            records
                .iter()
                .filter(|r| r.callback == callback)
                .nth(n - 1)
                .cloned()
        };
        let wait = async {
            loop {
                let notified = self.inner.1.notified();
                if let Some(r) = found(&self.inner.0.lock().expect("recorder lock")) {
                    return r;
                }
                notified.await;
            }
        };
        tokio::time::timeout(self.deadline, wait)
            .await
            .map_err(|_| WaitTimeout {
                wanted: callback,
                n,
                deadline: self.deadline,
                seen: self.records(),
            })
    }

    pub(crate) fn record(&self, callback: Callback, ctx: &CallContext) {
        self.inner.0.lock().expect("recorder lock").push(Recorded {
            callback,
            call_id: ctx.call_id().clone(),
            event: ctx.event().clone(),
        });
        self.inner.1.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wait_that_never_completes_fails_at_its_deadline_naming_what_arrived() {
        let rec = Recorder::with_deadline(Duration::from_secs(3));
        let started = tokio::time::Instant::now();
        let err = rec
            .try_wait_for(Callback::OutgoingCallAccepted, 2)
            .await
            .unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert_eq!(err.wanted, Callback::OutgoingCallAccepted);
        assert_eq!(err.n, 2);
        assert!(err.seen.is_empty());
        assert_eq!(
            err.to_string(),
            "on_outgoing_call_accepted #2 did not fire within 3s; arrived: nothing"
        );
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "on_incoming_call_timeout #1 did not fire within 120s")]
    async fn wait_for_panics_instead_of_hanging() {
        Recorder::new()
            .wait_for(Callback::IncomingCallTimeout, 1)
            .await;
    }
}
