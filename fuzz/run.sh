#!/usr/bin/env bash
# Runs one fuzz target for a while: fuzz/run.sh TARGET [SECONDS]
#
# cargo-fuzz passes nightly-only -Z flags to rustc; these machines have one
# stable toolchain, and RUSTC_BOOTSTRAP=1 lets it accept them.
# New interesting inputs go to corpus/TARGET (not committed); the seed
# inputs in seeds/TARGET (committed) are read too.
set -euo pipefail
cd "$(dirname "$0")"
target="$1"
seconds="${2:-60}"
export RUSTC_BOOTSTRAP=1
mkdir -p "corpus/$target" "seeds/$target"
cargo fuzz run "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1
