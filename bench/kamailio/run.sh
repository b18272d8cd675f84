#!/usr/bin/env bash
# Measures Kamailio's CPU per call: INVITE -> 180 -> 200 -> ACK -> BYE
# through a transaction-stateful proxy, driven by sipp, at one offered rate.
#
#   bench/kamailio/run.sh RATE CALLS [WARMUP_CALLS] [TAIL_S]
#
# A warm-up of WARMUP_CALLS (default 5 s worth, at most 10,000) runs first
# and is not counted: the first calls after start pay for memory the pool
# hands out once. The count then covers the CALLS and TAIL_S (7) seconds
# after them, so that tm's wait timer (5 s), which frees each finished
# transaction, is included: work the calls caused.
#
# KAMAILIO_CFG names another configuration (ablation.sh uses it).
#
# Installs kamailio and sip-tester from Debian if missing. Kamailio is pinned
# to CPU 0, sipp to CPU 1 (as our server and load generator are). Prints
#   kamailio rate=R calls=N failed=F cpu_us_per_call=X
# Every process it starts is stopped by its id.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
rate="${1:-500}"
calls="${2:-5000}"
warmup="${3:-$(( rate * 5 > 10000 ? 10000 : rate * 5 ))}"
tail_s="${4:-7}"
# tm keeps every finished transaction ~5 s: about 15 KB of shared memory
# each in Debian's build.
shm=1024
[ "$rate" -gt 2500 ] && shm=2048

if ! command -v kamailio >/dev/null || ! command -v sipp >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q kamailio sip-tester >/dev/null
fi

work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    if [ -f "$work/kamailio.pid" ]; then
        # kamailio forks workers; stop the whole group by the main pid.
        kill "$(cat "$work/kamailio.pid")" 2>/dev/null || true
    fi
    sleep 0.5
    rm -rf "$work"
}
trap cleanup EXIT

taskset -c 0 kamailio -f "${KAMAILIO_CFG:-$here/kamailio.cfg}" -P "$work/kamailio.pid" -m "$shm" -M 16 -w "$work" >/dev/null 2>&1
for _ in $(seq 50); do [ -s "$work/kamailio.pid" ] && break; sleep 0.1; done
main="$(cat "$work/kamailio.pid")"
# All kamailio processes of this instance: the main one and its children.
kpids() { echo "$main"; pgrep -P "$main" || true; }

taskset -c 1 sipp -sn uas -i 127.0.0.1 -p 5070 -bg -nostdin >/dev/null 2>&1 &
pids+=($!)
sleep 0.5
uas="$(pgrep -f "sipp -sn uas -i 127.0.0.1 -p 5070" | head -1 || true)"
[ -n "$uas" ] && pids+=("$uas")

cpu() { # utime+stime in clock ticks, summed over the kamailio processes
    local t=0
    for p in $(kpids); do
        if [ -r "/proc/$p/stat" ]; then
            t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
        fi
    done
    echo "$t"
}
set +e
if [ "$warmup" -gt 0 ]; then
    taskset -c 1 sipp -sn uac 127.0.0.1:5060 -i 127.0.0.1 -p 5080 -r "$rate" -m "$warmup" -d 0 \
        -nostdin >/dev/null 2>&1
    sleep "$tail_s" # the warm-up's transactions are freed before the count starts
fi
before="$(cpu)"
taskset -c 1 sipp -sn uac 127.0.0.1:5060 -i 127.0.0.1 -p 5081 -r "$rate" -m "$calls" -d 0 \
    -nostdin -trace_stat -stf "$work/stat.csv" -fd 1 >/dev/null 2>&1
set -e
sleep "$tail_s"
after="$(cpu)"
hz="$(getconf CLK_TCK)"
# The last line of the stat file holds the totals.
header="$(head -1 "$work/stat.csv")"
last="$(tail -1 "$work/stat.csv")"
col() { echo "$header" | tr ';' '\n' | grep -n "^$1\$" | cut -d: -f1; }
ok="$(echo "$last" | cut -d';' -f"$(col 'SuccessfulCall(C)')")"
failed="$(echo "$last" | cut -d';' -f"$(col 'FailedCall(C)')")"
us=$(( (after - before) * 1000000 / hz ))
per=$(( ok > 0 ? us / ok : 0 ))
echo "kamailio rate=$rate calls=$ok failed=$failed cpu_us_per_call=$per"
