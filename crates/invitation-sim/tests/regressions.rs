//! Seeds that once failed, kept as regression tests, and a small sweep.
//! (CI also runs `invitation-sim --seeds 1000` in release: 6,000 runs.)

use invitation_core::CloseCause;
use invitation_sim::{DEFAULT_STEPS, Profile, run};

fn assert_passes(seed: u64, profile: Profile) {
    let r = run(seed, profile, DEFAULT_STEPS);
    assert!(
        r.violations.is_empty(),
        "seed {seed} {profile}: {:#?}\ntrace:\n{}",
        r.violations,
        r.trace.join("\n")
    );
}

/// A restarted device canceled an already-ended call twice: the cancel
/// callback fired twice (the session forgot calls it never knew live).
#[test]
fn seed_12_clean_repeated_cancel_of_an_unknown_call_fires_once() {
    assert_passes(12, Profile::Clean);
}

/// A duplicated `hello` was answered with an error carrying the hello's id,
/// after the welcome: the client took it for a refused token and stopped
/// for good, a device then stayed behind. Fixed: once welcomed, an error
/// about the hello is a duplicate's answer, not a refusal.
#[test]
fn seed_1415_lossy_a_duplicated_hello_does_not_stop_the_client() {
    assert_passes(1415, Profile::Lossy);
}

/// The last event of a stream was lost and nothing followed: the device
/// stayed behind forever. Fixed by `pong` carrying the newest sequence number.
#[test]
fn seed_4_lossy_tail_loss_is_noticed() {
    assert_passes(4, Profile::Lossy);
}

/// After a resync a group call's overall reason was given to every callee
/// (busy instead of timeout). Fixed by per-callee outcomes in `sync`.
#[test]
fn seed_6_lossy_resync_keeps_per_callee_outcomes() {
    assert_passes(6, Profile::Lossy);
}

/// The hello was lost: the hub answered every command `not_connected`
/// forever. Fixed by a welcome timeout and reconnecting on `not_connected`.
#[test]
fn seed_55_lossy_lost_hello_reconnects() {
    assert_passes(55, Profile::Lossy);
}

#[test]
fn a_small_sweep_of_every_profile() {
    for profile in [
        Profile::Clean,
        Profile::Lossy,
        Profile::Slow,
        Profile::Flapping,
        Profile::Connection,
        Profile::Restart,
        Profile::Http,
    ] {
        for seed in 100..120 {
            assert_passes(seed, profile);
        }
    }
}

#[test]
fn runs_are_deterministic() {
    for profile in [Profile::Flapping, Profile::Connection, Profile::Restart] {
        let a = run(7, profile, DEFAULT_STEPS);
        let b = run(7, profile, DEFAULT_STEPS);
        if a.trace != b.trace {
            for (x, y) in a.trace.iter().zip(&b.trace) {
                if x != y {
                    panic!("{profile}: first difference:\n{x}\n{y}");
                }
            }
        }
        assert_eq!(a.trace, b.trace, "the same seed replays the same run");
        assert!(a.calls > 0);
    }
}

/// The connection profile really injects every connection-level fault, and
/// the oracle holds through them: lost `welcome`s, tokens that expire
/// (renewals that lost the race; the client then reconnects with a fresh
/// token from its provider), bursts of `sync` each answered exactly once, clients that stop
/// reading, some of them long enough to be dropped as too slow.
#[test]
fn the_connection_profile_exercises_every_connection_fault() {
    let mut faults = invitation::testing::fault::FaultStats::default();
    let mut closes = std::collections::HashMap::new();
    let mut renewals = 0;
    for seed in 0..40 {
        let r = run(seed, Profile::Connection, DEFAULT_STEPS);
        assert!(
            r.violations.is_empty(),
            "seed {seed}: {:#?}\ntrace:\n{}",
            r.violations,
            r.trace.join("\n")
        );
        faults.add(&r.faults);
        for (cause, n) in r.closes {
            *closes.entry(cause).or_insert(0) += n;
        }
        renewals += r.trace.iter().filter(|l| l.contains("renew -> Ok")).count();
    }
    assert!(faults.welcomes_dropped > 0, "{faults:?}");
    assert!(faults.stalls > 0, "{faults:?}");
    assert!(
        faults.sync_bursts > 0 && faults.syncs_answered > 0,
        "{faults:?}"
    );
    assert_eq!(faults.syncs_answered_twice, 0);
    assert!(renewals > 0, "renewals went through");
    for cause in [CloseCause::TokenExpired, CloseCause::TooSlow] {
        assert!(
            closes.get(&cause).copied().unwrap_or(0) > 0,
            "no link closed for {cause}: {closes:?}"
        );
    }
}

/// The restart profile really crashes the server with calls ringing,
/// recovers from snapshots plus journal tails, drops every link, and
/// answers commands retried across a crash from the restored request-id
/// memory; the oracle holds through all of it.
#[test]
fn the_restart_profile_crashes_and_recovers_mid_ring() {
    let mut total = invitation_sim::Restarts::default();
    for seed in 0..40 {
        let r = run(seed, Profile::Restart, DEFAULT_STEPS);
        assert!(
            r.violations.is_empty(),
            "seed {seed}: {:#?}\ntrace:\n{}",
            r.violations,
            r.trace.join("\n")
        );
        total.add(&r.restarts);
    }
    println!("{total:?}");
    assert!(total.crashes > 40, "{total:?}");
    assert!(total.snapshots > total.crashes, "{total:?}");
    assert!(
        total.ringing > 0,
        "calls were ringing at a crash: {total:?}"
    );
    assert!(total.replayed > 0 && total.dropped > 0, "{total:?}");
    assert!(total.retries_answered > 0, "{total:?}");
}

/// The http profile runs the server's long-poll message log under the
/// oracle: answers are lost and asked for again, and no event is lost or
/// doubled for it.
#[test]
fn the_http_profile_loses_poll_answers_and_nothing_else() {
    let mut lost = 0;
    for seed in 200..210 {
        let r = run(seed, Profile::Http, DEFAULT_STEPS);
        assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
        lost += r.poll_answers_lost;
    }
    eprintln!("poll answers lost and asked for again over 10 seeds: {lost}");
    assert!(lost > 100, "the profile lost only {lost} poll answers");
}
