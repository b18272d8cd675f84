//! Counters and two latency histograms, rendered in the Prometheus text
//! format at `/metrics`. Plain atomics: cheap on the hot path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use invitation_core::Reason;

/// Histogram bucket upper bounds, in microseconds.
const BUCKETS_US: [u64; 18] = [
    10, 25, 50, 75, 100, 150, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000,
    250_000, 500_000, 1_000_000,
];

/// A fixed-bucket latency histogram (Prometheus `histogram` type).
#[derive(Debug, Default)]
pub struct Buckets {
    counts: [AtomicU64; BUCKETS_US.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Buckets {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        if let Some(i) = BUCKETS_US.iter().position(|b| us <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, s: &mut String, name: &str, help: &str) {
        let _ = writeln!(s, "# HELP {name} {help}");
        let _ = writeln!(s, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, c) in BUCKETS_US.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(
                s,
                "{name}_bucket{{le=\"{}\"}} {cumulative}",
                *b as f64 / 1e6
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(s, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            s,
            "{name}_sum {}",
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(s, "{name}_count {count}");
    }
}

/// Why a connection was refused or closed early.
#[derive(Debug, Clone, Copy)]
#[allow(missing_docs)]
pub enum Refusal {
    RateLimited,
    Capacity,
    Origin,
    Handshake,
    Auth,
    /// Too many connections open from one address.
    PerIp,
    /// The user already had the most devices online.
    Devices,
}

/// Server-wide metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    /// A cluster node whose edge knows no leader: it cannot serve calls
    /// (`/healthz` answers 503). Always false on a single node.
    pub cluster_no_leader: AtomicBool,
    /// The term this cluster node leads (0: it does not run the switchboard).
    pub cluster_leading: AtomicU64,
    /// The term of the leader this node's edge follows (0: none known).
    pub cluster_term: AtomicU64,
    /// Times this node took the lead.
    pub cluster_terms: AtomicU64,
    /// Open WebSocket sessions (authenticated).
    pub sessions: AtomicI64,
    /// TCP connections accepted.
    pub accepted_total: AtomicU64,
    refused: [AtomicU64; 7],
    /// Client messages received.
    pub messages_in: AtomicU64,
    /// Server messages sent.
    pub messages_out: AtomicU64,
    /// Undecodable client messages.
    pub protocol_errors: AtomicU64,
    /// Commands answered `rate_limited`.
    pub rate_limited: AtomicU64,
    /// Connections dropped because they did not read.
    pub too_slow: AtomicU64,
    /// New invitations refused with `unavailable` (load shedding).
    pub invites_shed: AtomicU64,
    /// Invitations created.
    pub invitations: AtomicU64,
    outcomes: [AtomicU64; Reason::COUNT],
    /// From reading an invite to writing `incoming_call` to a callee device.
    pub ring: Buckets,
    /// How late the scheduler-lag ticker last woke, µs (see
    /// [`Metrics::run_lag_meter`]).
    pub scheduler_lag_us: AtomicU64,
    /// From a timer's deadline (ring timeout, caller-gone grace) to writing
    /// the events it caused. Timers fired together are stamped with the
    /// earliest deadline of the batch, so this errs on the late side.
    pub timer_lateness: Buckets,
    /// Journal bytes written (framing included).
    pub journal_bytes: AtomicU64,
    /// Journal entries written (one per switchboard input).
    pub journal_entries: AtomicU64,
    /// Snapshots started (each begins a new journal).
    pub snapshots: AtomicU64,
    /// Writes to the data directory that failed (a full disk ...).
    pub store_failures: AtomicU64,
    /// New invitations refused with `unavailable` because the data
    /// directory cannot be written.
    pub invites_refused_store: AtomicU64,
    /// Webhook events delivered (a 2xx answer), all endpoints together.
    pub webhooks_delivered: AtomicU64,
    /// Webhook attempts that failed (non-2xx, timeout, connection error).
    pub webhook_failed_attempts: AtomicU64,
    /// Webhook events given up on: older than `webhook_max_age_s`, or
    /// refused by a full queue.
    pub webhooks_dropped: AtomicU64,
    /// Push requests the gateway accepted (a 2xx answer).
    pub pushes_sent: AtomicU64,
    /// Push attempts that failed (non-2xx, timeout, connection error).
    pub push_failed_attempts: AtomicU64,
    /// Push requests given up on: past their time to live, refused for
    /// good by the gateway (a 4xx), or refused by a full queue.
    pub pushes_dropped: AtomicU64,
}

impl Metrics {
    /// Counts a refusal.
    pub fn refused(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The last scheduler lag sample.
    pub fn scheduler_lag(&self) -> Duration {
        Duration::from_micros(self.scheduler_lag_us.load(Ordering::Relaxed))
    }

    /// Wakes every `period` and records how late it woke: the time every
    /// ready task waits for its turn (event-loop lag). Under overload the
    /// backlog sits in socket buffers and the run queue, before any message
    /// is read, so this sees it when the hub's inbox does not. Never ends.
    pub async fn run_lag_meter(&self, period: Duration) {
        let mut next = tokio::time::Instant::now() + period;
        loop {
            tokio::time::sleep_until(next).await;
            let now = tokio::time::Instant::now();
            let lag =
                u64::try_from(now.saturating_duration_since(next).as_micros()).unwrap_or(u64::MAX);
            self.scheduler_lag_us.store(lag, Ordering::Relaxed);
            next = now + period;
        }
    }

    /// Copies the switchboard's cumulative counters.
    pub fn set_switchboard(&self, invitations: u64, outcomes: &[u64; Reason::COUNT]) {
        self.invitations.store(invitations, Ordering::Relaxed);
        for (slot, v) in self.outcomes.iter().zip(outcomes) {
            slot.store(*v, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = String::with_capacity(4096);
        let _ = writeln!(
            s,
            "# HELP invitation_sessions Open authenticated WebSocket sessions."
        );
        let _ = writeln!(s, "# TYPE invitation_sessions gauge");
        let _ = writeln!(
            s,
            "invitation_sessions {}",
            self.sessions.load(Ordering::Relaxed)
        );
        for (name, help, flag) in [
            (
                "invitation_cluster_leader_known",
                "1 unless this cluster node knows no leader (then it serves no calls).",
                !self.cluster_no_leader.load(Ordering::Relaxed),
            ),
            (
                "invitation_cluster_leading",
                "1 while this cluster node runs the switchboard.",
                self.cluster_leading.load(Ordering::Relaxed) > 0,
            ),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} gauge");
            let _ = writeln!(s, "{name} {}", u8::from(flag));
        }
        let _ = writeln!(
            s,
            "# HELP invitation_connections_accepted_total TCP connections accepted."
        );
        let _ = writeln!(s, "# TYPE invitation_connections_accepted_total counter");
        let _ = writeln!(
            s,
            "invitation_connections_accepted_total {}",
            g(&self.accepted_total)
        );
        let _ = writeln!(
            s,
            "# HELP invitation_connections_refused_total Connections refused, by reason."
        );
        let _ = writeln!(s, "# TYPE invitation_connections_refused_total counter");
        for (name, i) in [
            ("rate_limited", Refusal::RateLimited),
            ("capacity", Refusal::Capacity),
            ("origin", Refusal::Origin),
            ("handshake", Refusal::Handshake),
            ("auth", Refusal::Auth),
            ("per_ip", Refusal::PerIp),
            ("devices", Refusal::Devices),
        ] {
            let _ = writeln!(
                s,
                "invitation_connections_refused_total{{reason=\"{name}\"}} {}",
                g(&self.refused[i as usize])
            );
        }
        for (name, help, v) in [
            (
                "invitation_messages_in_total",
                "Client messages received.",
                &self.messages_in,
            ),
            (
                "invitation_messages_out_total",
                "Server messages sent.",
                &self.messages_out,
            ),
            (
                "invitation_protocol_errors_total",
                "Undecodable client messages.",
                &self.protocol_errors,
            ),
            (
                "invitation_rate_limited_total",
                "Commands answered rate_limited.",
                &self.rate_limited,
            ),
            (
                "invitation_invites_shed_total",
                "New invitations refused with unavailable because the server is overloaded.",
                &self.invites_shed,
            ),
            (
                "invitation_too_slow_total",
                "Connections dropped for not reading.",
                &self.too_slow,
            ),
            (
                "invitation_invitations_total",
                "Invitations created.",
                &self.invitations,
            ),
            (
                "invitation_journal_bytes_total",
                "Bytes written to the journal.",
                &self.journal_bytes,
            ),
            (
                "invitation_journal_entries_total",
                "Switchboard inputs written to the journal.",
                &self.journal_entries,
            ),
            (
                "invitation_cluster_terms_total",
                "Times this node took the lead of its cluster.",
                &self.cluster_terms,
            ),
            (
                "invitation_snapshots_total",
                "Snapshots started.",
                &self.snapshots,
            ),
            (
                "invitation_store_failures_total",
                "Writes to the data directory that failed.",
                &self.store_failures,
            ),
            (
                "invitation_invites_refused_store_total",
                "New invitations refused with unavailable because the data directory cannot be written.",
                &self.invites_refused_store,
            ),
            (
                "invitation_webhooks_delivered_total",
                "Webhook events delivered (2xx), all endpoints together.",
                &self.webhooks_delivered,
            ),
            (
                "invitation_webhook_failed_attempts_total",
                "Webhook delivery attempts that failed (non-2xx, timeout, connection error).",
                &self.webhook_failed_attempts,
            ),
            (
                "invitation_webhooks_dropped_total",
                "Webhook events given up on (older than webhook_max_age_s, or a full queue).",
                &self.webhooks_dropped,
            ),
            (
                "invitation_pushes_sent_total",
                "Push requests the gateway accepted (2xx).",
                &self.pushes_sent,
            ),
            (
                "invitation_push_failed_attempts_total",
                "Push attempts that failed (non-2xx, timeout, connection error).",
                &self.push_failed_attempts,
            ),
            (
                "invitation_pushes_dropped_total",
                "Push requests given up on (past their time to live, refused by the gateway with a 4xx, or a full queue).",
                &self.pushes_dropped,
            ),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} counter");
            let _ = writeln!(s, "{name} {}", g(v));
        }
        let _ = writeln!(
            s,
            "# HELP invitation_scheduler_lag_seconds How late the last 10 ms scheduler tick woke (event-loop lag)."
        );
        let _ = writeln!(s, "# TYPE invitation_scheduler_lag_seconds gauge");
        let _ = writeln!(
            s,
            "invitation_scheduler_lag_seconds {}",
            self.scheduler_lag_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(
            s,
            "# HELP invitation_callee_outcomes_total Per-callee outcomes, by reason."
        );
        let _ = writeln!(s, "# TYPE invitation_callee_outcomes_total counter");
        for r in Reason::ALL {
            let _ = writeln!(
                s,
                "invitation_callee_outcomes_total{{reason=\"{r}\"}} {}",
                g(&self.outcomes[r.index()])
            );
        }
        self.ring.render(
            &mut s,
            "invitation_invite_to_ring_seconds",
            "From reading an invite to writing incoming_call to a callee device.",
        );
        self.timer_lateness.render(
            &mut s,
            "invitation_timer_lateness_seconds",
            "From a timer's deadline to writing the events it caused (ring timeouts, caller-gone grace).",
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let m = Metrics::default();
        m.ring.observe(Duration::from_micros(80));
        m.ring.observe(Duration::from_millis(3));
        m.timer_lateness.observe(Duration::from_millis(40));
        m.refused(Refusal::Origin);
        let mut outcomes = [0; Reason::COUNT];
        outcomes[Reason::Timeout.index()] = 4;
        m.set_switchboard(7, &outcomes);
        let text = m.render();
        assert!(text.contains("invitation_invite_to_ring_seconds_bucket{le=\"0.0001\"} 1"));
        assert!(text.contains("invitation_invite_to_ring_seconds_bucket{le=\"0.005\"} 2"));
        assert!(text.contains("invitation_invite_to_ring_seconds_count 2"));
        assert!(text.contains("invitation_timer_lateness_seconds_bucket{le=\"0.025\"} 0"));
        assert!(text.contains("invitation_timer_lateness_seconds_bucket{le=\"0.05\"} 1"));
        assert!(text.contains("invitation_invites_shed_total 0"));
        assert!(text.contains("invitation_callee_outcomes_total{reason=\"timeout\"} 4"));
        assert!(text.contains("invitation_connections_refused_total{reason=\"origin\"} 1"));
        assert!(text.contains("invitation_invitations_total 7"));
    }
}
