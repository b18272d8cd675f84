//! Empty: the crate exists for its tests (see Cargo.toml).
