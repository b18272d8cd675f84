//! `invitation-sim`: run the deterministic fault-injection simulation.
//!
//! ```text
//! invitation-sim --seed 42 --profile lossy      # one run, full trace
//! invitation-sim --seeds 1000                   # seeds 0..1000 x lossy, slow, flapping, connection
//! invitation-sim --seeds 100000 --start 5000    # deeper
//! ```
//! Exits non-zero on the first failing seed, after printing it and the
//! shortest failing trace.

use anyhow::{Result, bail};
use invitation::testing::fault::FaultStats;
use invitation_core::CloseCause;
use invitation_sim::{DEFAULT_STEPS, Profile, run, shrink};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let steps: usize = arg(&args, "--steps").map_or(Ok(DEFAULT_STEPS), |s| s.parse())?;
    let profiles: Vec<Profile> = match arg(&args, "--profile").as_deref() {
        None | Some("all") => Profile::ALL.to_vec(),
        Some(p) => vec![Profile::parse(p).ok_or_else(|| anyhow::anyhow!("unknown profile {p}"))?],
    };
    if let Some(seed) = arg(&args, "--seed") {
        let seed: u64 = seed.parse()?;
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
    let seeds: u64 = arg(&args, "--seeds").map_or(Ok(100), |s| s.parse())?;
    let start: u64 = arg(&args, "--start").map_or(Ok(0), |s| s.parse())?;
    let began = std::time::Instant::now();
    let mut calls = 0;
    for p in &profiles {
        let mut faults = FaultStats::default();
        let mut closes: Vec<(CloseCause, u64)> = Vec::new();
        for seed in start..start + seeds {
            let r = run(seed, *p, steps);
            calls += r.calls;
            faults.add(&r.faults);
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
