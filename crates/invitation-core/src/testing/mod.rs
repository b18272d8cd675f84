//! Test helpers (feature `testing`, off by default).
//!
//! * [`oracle`]: the invariant oracle. The model-based property tests (one
//!   switchboard and `ClientSession`s moved by hand) and the deterministic
//!   simulation (the memory hub and real clients behind fault injectors)
//!   both record what every device saw and hand it, with the switchboard,
//!   to this one checker.

pub mod oracle;
