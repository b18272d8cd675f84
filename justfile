# Thin aliases over cargo. `just --list` shows them.

# What CI runs: fmt, clippy, tests, docs.
ci:
    bash .ci/run

test:
    cargo test --workspace

# Core micro-benchmarks (flow CPU, codec, memory per pending invitation).
bench-core:
    cargo bench -p invitation-core --bench core

# Model-based property tests with another seed: just model SEED=42
model SEED="20261126":
    INVITATION_MODEL_SEED={{SEED}} cargo test -p invitation-core --test model
