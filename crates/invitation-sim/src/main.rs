//! `invitation-sim`: run the deterministic fault-injection simulation.
//!
//! ```text
//! invitation-sim --seed 42 --profile lossy      # one run, full trace
//! invitation-sim --seeds 1000                   # seeds 0..1000 x lossy, slow, flapping, connection, restart
//! invitation-sim --seeds 100000 --start 5000    # deeper
//! ```
//! Exits non-zero on the first failing seed, after printing it and the
//! shortest failing trace.

use anyhow::{Result, bail};
use clap::Parser;
use invitation::testing::fault::FaultStats;
use invitation_core::CloseCause;
use invitation_sim::{DEFAULT_STEPS, Profile, Restarts, run, shrink};

/// The deterministic fault-injection simulation: six client devices of four
/// users against the in-process switchboard, a seeded workload, injected
/// faults, and an oracle that checks the invariants on everything every
/// device saw. Without --seed, runs a sweep of seeds.
#[derive(Parser, Debug)]
#[command(name = "invitation-sim")]
struct Args {
    /// Replay this one seed and print its full trace.
    #[arg(long)]
    seed: Option<u64>,
    /// How many seeds to sweep (without --seed).
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// First seed of the sweep.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Fault profile: clean, lossy, slow, flapping, connection, restart,
    /// http, or all (lossy, slow, flapping, connection, restart and http).
    #[arg(long, default_value = "all", value_parser = profiles)]
    profile: Profiles,
    /// Workload steps per run.
    #[arg(long, default_value_t = DEFAULT_STEPS)]
    steps: usize,
}

/// The profiles one `--profile` value names.
#[derive(Debug, Clone)]
struct Profiles(Vec<Profile>);

fn profiles(s: &str) -> Result<Profiles, String> {
    match s {
        "all" => Ok(Profiles(Profile::ALL.to_vec())),
        p => Profile::parse(p).map(|p| Profiles(vec![p])).ok_or_else(|| {
            format!(
                "unknown profile {p:?} (clean, lossy, slow, flapping, connection, restart, all)"
            )
        }),
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    let steps = args.steps;
    let profiles = args.profile.0;
    if let Some(seed) = args.seed {
        for p in profiles {
            let r = run(seed, p, steps);
            for line in &r.trace {
                println!("{line}");
            }
            println!(
                "seed {seed} {p}: {} calls, {} violations",
                r.calls,
                r.violations.len()
            );
            for v in &r.violations {
                println!("  VIOLATION {v}");
            }
            if !r.violations.is_empty() {
                bail!("seed {seed} ({p}) failed");
            }
        }
        return Ok(());
    }
    let (seeds, start) = (args.seeds, args.start);
    let began = std::time::Instant::now();
    let mut calls = 0;
    for p in &profiles {
        let mut faults = FaultStats::default();
        let mut closes: Vec<(CloseCause, u64)> = Vec::new();
        let mut restarts = Restarts::default();
        for seed in start..start + seeds {
            let r = run(seed, *p, steps);
            calls += r.calls;
            faults.add(&r.faults);
            restarts.add(&r.restarts);
            for (cause, n) in &r.closes {
                match closes.iter_mut().find(|(c, _)| c == cause) {
                    Some((_, total)) => *total += n,
                    None => closes.push((*cause, *n)),
                }
            }
            if !r.violations.is_empty() {
                println!("FAILED: seed {seed} profile {p}");
                for v in &r.violations {
                    println!("  {v}");
                }
                let short = shrink(&r);
                println!("shortest failing run: {} steps; trace:", short.steps);
                for line in &short.trace {
                    println!("  {line}");
                }
                println!(
                    "replay: just sim {seed} {p}   (or: cargo run --release -p invitation-sim -- --seed {seed} --profile {p} --steps {})",
                    short.steps
                );
                bail!("simulation failed");
            }
        }
        println!("{p}: seeds {start}..{} passed", start + seeds);
        println!("  injected: {faults:?}");
        let closes: Vec<String> = closes
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(c, n)| format!("{c}: {n}"))
            .collect();
        if !closes.is_empty() {
            println!("  hub closed links for: {}", closes.join(", "));
        }
        if restarts.crashes > 0 {
            println!(
                "  server: {} crashes ({} calls ringing at them, {} links dropped, {} journal entries replayed), {} snapshots, {} retried commands answered from memory",
                restarts.crashes,
                restarts.ringing,
                restarts.dropped,
                restarts.replayed,
                restarts.snapshots,
                restarts.retries_answered
            );
        }
    }
    println!(
        "{} runs ({} seeds x {} profiles), {calls} invitations, all invariants held, {:.1} s",
        seeds as usize * profiles.len(),
        seeds,
        profiles.len(),
        began.elapsed().as_secs_f64()
    );
    println!("{} passed, 0 failed", seeds as usize * profiles.len());
    Ok(())
}
