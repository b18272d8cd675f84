//! Seeds that once failed, kept as regression tests, and a small sweep.
//! (CI also runs `invitation-sim --seeds 1000` in release: 3,000 runs.)

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
    ] {
        for seed in 100..120 {
            assert_passes(seed, profile);
        }
    }
}

#[test]
fn runs_are_deterministic() {
    let a = run(7, Profile::Flapping, DEFAULT_STEPS);
    let b = run(7, Profile::Flapping, DEFAULT_STEPS);
    assert_eq!(a.trace, b.trace, "the same seed replays the same run");
    assert!(a.calls > 0);
}
