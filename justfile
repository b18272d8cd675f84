# Thin aliases over cargo. `just --list` shows them.

# What CI runs: fmt, clippy, tests, docs, the simulation sweep, fuzz smoke runs.
ci:
    bash .ci/run

test:
    cargo test --workspace

# Replay one simulation seed with its full trace:
#   just sim 42 lossy     or     just sim SEED=42 PROFILE=lossy
sim SEED PROFILE="all":
    seed="{{SEED}}"; profile="{{PROFILE}}"; \
    cargo run --release -p invitation-sim -- --seed "${seed#SEED=}" --profile "${profile#PROFILE=}"

# The CI sweep: 1,000 seeds x 6 fault profiles.
sim-ci:
    cargo run --release -p invitation-sim -- --seeds 1000

# Deeper: 100,000 seeds x 6 profiles (several minutes).
sim-long START="0":
    cargo run --release -p invitation-sim -- --seeds 100000 --start {{START}}

# Fuzz one target for longer: just fuzz protocol_decode 600
# (cargo-fuzz: `cargo install cargo-fuzz --locked`; see docs/testing.md)
fuzz TARGET SECONDS="300":
    bash fuzz/run.sh {{TARGET}} {{SECONDS}}

# Core micro-benchmarks (flow CPU, codec, memory per pending invitation).
bench-core:
    cargo bench -p invitation-core --bench core

# Instruction counts of the core scenarios under callgrind, against the
# checked-in baseline (CI fails above +3 %); `just instructions --update`
# accepts the current counts after an intended change.
instructions *ARGS:
    python3 .ci/instructions {{ARGS}}

# Model-based property tests with another seed: just model 42  or  just model SEED=42
model SEED="20261126":
    seed="{{SEED}}"; \
    INVITATION_MODEL_SEED="${seed#SEED=}" cargo test -p invitation-core --test model

# The benchmark suite (~55 min: every figure from 3 alternating runs): ours vs Kamailio, the knee, fan-out,
# timers, persistence (in memory vs durable, recovery of 100,000 held
# invitations), memory and relay vs a bare echo. Server on CPU 0, generator
# on CPU 1.
bench:
    cargo build --release -p invitation-server -p invitation-bench
    taskset -c 1 target/release/invitation-bench suite

# Restart time of a durable server holding N invitations (SIGKILL, restart).
bench-recovery N="100000":
    cargo build --release -p invitation-server -p invitation-bench
    taskset -c 1 target/release/invitation-bench recovery --pending {{N}}

# A short smoke run of the suite.
bench-quick:
    cargo build --release -p invitation-server -p invitation-bench
    taskset -c 1 target/release/invitation-bench suite --quick
