//! Connection slots: how many connections are open, overall and per source
//! address, and a small reserve that only health and metrics probes may
//! use once the server is full.
//!
//! A slot is held by a [`SlotGuard`] and given back when the guard drops,
//! however the connection task ends: normally, by an error, or by a panic
//! (unwinding drops the guard), so no failure can leak a slot.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

/// Probes (`/healthz`, `/metrics`) that may be answered at once while every
/// regular slot is taken.
pub(crate) const PROBE_RESERVE: usize = 8;

/// What the accept loop may do with a new connection.
#[derive(Debug)]
pub(crate) enum Admission {
    /// A regular slot: serve it.
    Serve(SlotGuard),
    /// The server is full; one of the reserved slots: answer health and
    /// metrics probes only.
    ProbeOnly(SlotGuard),
    /// Too many connections from this address.
    PerIp,
    /// Full, and the probe reserve too.
    Full,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    probes: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// The slot counts, shared by the accept loop and every guard.
#[derive(Debug)]
pub(crate) struct Slots {
    max_total: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
}

impl Slots {
    /// At most `max_total` connections, `max_per_ip` from one address.
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Self {
            max_total,
            max_per_ip,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        // Nothing panics while holding the lock; a poisoned one is still
        // consistent.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a slot for a connection from `ip`, if one is free.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Admission {
        let mut c = self.counts();
        let from_ip = c.per_ip.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.max_per_ip {
            return Admission::PerIp;
        }
        let probe = if c.total < self.max_total {
            c.total += 1;
            false
        } else if c.probes < PROBE_RESERVE {
            c.probes += 1;
            true
        } else {
            return Admission::Full;
        };
        *c.per_ip.entry(ip).or_insert(0) += 1;
        let guard = SlotGuard {
            slots: self.clone(),
            ip,
            probe,
        };
        if probe {
            Admission::ProbeOnly(guard)
        } else {
            Admission::Serve(guard)
        }
    }

    /// Regular connections open.
    pub(crate) fn open(&self) -> usize {
        self.counts().total
    }

    /// Probe connections open (over the regular cap).
    #[cfg(test)]
    pub(crate) fn probes(&self) -> usize {
        self.counts().probes
    }

    /// Connections open from `ip` (regular and probes).
    #[cfg(test)]
    pub(crate) fn open_from(&self, ip: IpAddr) -> usize {
        self.counts().per_ip.get(&ip).copied().unwrap_or(0)
    }
}

/// One taken slot; dropping it gives the slot back.
#[derive(Debug)]
pub(crate) struct SlotGuard {
    slots: Arc<Slots>,
    ip: IpAddr,
    probe: bool,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let mut c = self.slots.counts();
        if self.probe {
            c.probes -= 1;
        } else {
            c.total -= 1;
        }
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, last])
    }

    #[test]
    fn caps_per_ip_then_overall_then_the_probe_reserve() {
        let slots = Slots::new(3, 2);
        let a1 = slots.admit(ip(1));
        let a2 = slots.admit(ip(1));
        assert!(matches!(a1, Admission::Serve(_)));
        assert!(matches!(a2, Admission::Serve(_)));
        assert!(matches!(slots.admit(ip(1)), Admission::PerIp));
        let b1 = slots.admit(ip(2));
        assert!(matches!(b1, Admission::Serve(_)));
        assert_eq!(slots.open(), 3);
        // Full: probes only, PROBE_RESERVE of them.
        let mut probes = Vec::new();
        for i in 0..PROBE_RESERVE {
            match slots.admit(ip(10 + i as u8)) {
                Admission::ProbeOnly(g) => probes.push(g),
                other => panic!("probe {i}: {other:?}"),
            }
        }
        assert!(matches!(slots.admit(ip(99)), Admission::Full));
        drop(probes);
        assert_eq!(slots.probes(), 0);
        drop(a1);
        assert_eq!(slots.open_from(ip(1)), 1);
        assert!(matches!(slots.admit(ip(1)), Admission::Serve(_)));
        drop((a2, b1));
        assert_eq!(slots.open(), 0);
        assert_eq!(slots.open_from(ip(1)), 0);
    }

    /// A connection task that panics still gives its slot back: the guard
    /// is dropped while the panic unwinds.
    #[tokio::test]
    async fn a_panicking_task_gives_its_slot_back() {
        let slots = Slots::new(1, 1);
        let Admission::Serve(guard) = slots.admit(ip(1)) else {
            panic!("a free slot");
        };
        let task = tokio::spawn(async move {
            let _guard = guard;
            tokio::task::yield_now().await;
            panic!("a bug in a connection task");
        });
        let joined = tokio::time::timeout(std::time::Duration::from_secs(10), task)
            .await
            .expect("the task ends");
        assert!(joined.unwrap_err().is_panic());
        assert_eq!(slots.open(), 0);
        assert_eq!(slots.open_from(ip(1)), 0);
        assert!(matches!(slots.admit(ip(1)), Admission::Serve(_)));
    }
}
