//! # invitation-sim
//!
//! A deterministic simulation of one switchboard (the memory hub) with
//! several users and devices, real `Client`s and handlers, and a seeded
//! fault injector between each device and the hub, all on tokio's paused
//! clock. A seed fixes everything: the workload, the faults, the timing. A
//! run ends by healing the network and letting every timer fire; then the
//! invariant oracle of the core (`invitation_core::testing::oracle`, the one
//! the property tests use) checks the complete record of what every handler
//! and event stream saw, and the hub's switchboard (also between steps).
//!
//! `invitation-sim --seed 42 --profile lossy` replays one run;
//! `invitation-sim --seeds 1000` sweeps. See docs/testing.md.

mod longpoll;
mod world;

pub use world::{Outcome, Profile, Restarts, run_world};

use std::time::Duration;

use invitation::testing::fault::FaultStats;
use invitation_core::CloseCause;

/// The result of one run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// The fault profile.
    pub profile: Profile,
    /// Workload steps run.
    pub steps: usize,
    /// Broken invariants (empty: the run passed).
    pub violations: Vec<String>,
    /// What happened, in simulated time order.
    pub trace: Vec<String>,
    /// Invitations acknowledged to callers.
    pub calls: usize,
    /// What the fault injectors did, summed over every device.
    pub faults: FaultStats,
    /// Links the hub closed, per cause (token expiry, too slow, refused
    /// token, no `hello`).
    pub closes: Vec<(CloseCause, u64)>,
    /// Server crashes and restarts (restart profile).
    pub restarts: Restarts,
    /// Long-poll answers lost and asked for again (http profile).
    pub poll_answers_lost: u64,
}

/// Runs one seed with one profile for `steps` workload steps.
pub fn run(seed: u64, profile: Profile, steps: usize) -> Report {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime");
    let outcome = rt.block_on(run_world(seed, profile, steps));
    Report {
        seed,
        profile,
        steps,
        violations: outcome.violations,
        calls: outcome.calls,
        trace: outcome.trace,
        faults: outcome.faults,
        closes: outcome.closes,
        restarts: outcome.restarts,
        poll_answers_lost: outcome.poll_answers_lost,
    }
}

/// On failure: the shortest prefix of the workload that still fails (by
/// bisection on the number of steps), for a readable trace.
pub fn shrink(report: &Report) -> Report {
    let (mut lo, mut hi) = (0usize, report.steps);
    let mut best = report.clone();
    while lo + 1 < hi {
        let mid = (lo + hi) / 2;
        let r = run(report.seed, report.profile, mid);
        if r.violations.is_empty() {
            lo = mid;
        } else {
            hi = mid;
            best = r;
        }
    }
    best
}

/// The default number of workload steps per run.
pub const DEFAULT_STEPS: usize = 40;

/// Largest delay any profile injects (for the "no ring after the deadline"
/// check, which allows for it).
pub const MAX_INJECTED_DELAY: Duration = Duration::from_secs(2);
