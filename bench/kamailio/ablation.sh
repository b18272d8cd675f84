#!/usr/bin/env bash
# Why the project's first Kamailio peer cost about twice a carefully
# configured Kamailio: each factor measured on its own, back to back.
#
#   bench/kamailio/ablation.sh [RATE] [CALLS] [ROUNDS]     (default 1000 8000 2)
#
# Variants are made from the first configuration (ablation/first.cfg) and
# the current one (kamailio.cfg) by one edit each; every variant runs once
# per round, rounds alternate, and the median of the rounds is printed:
#   variant                                   us/call per round   median
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
rate="${1:-1000}"
calls="${2:-8000}"
rounds="${3:-2}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

first="$here/ablation/first.cfg"
now="$here/kamailio.cfg"
# first config, the core's method comparison instead of textops' is_method()
sed -E 's/is_method\("([A-Z]+)"\)/method == "\1"/g' "$first" > "$work/first-method.cfg"
# current config, with is_method() (textops) back in place of `method ==`
sed -E -e 's/method == "([A-Z]+)"/is_method("\1")/g' -e 's/method != "ACK"/!is_method("ACK")/' \
    -e 's/^loadmodule "siputils.so"$/loadmodule "siputils.so"\nloadmodule "textops.so"/' "$now" > "$work/now-is-method.cfg"
# current config, retransmissions routed again (no t_precheck_trans)
sed -E 's/if \(t_precheck_trans\(\)\) \{/if (0) {/' "$now" > "$work/now-no-precheck.cfg"
# current config, logging as the first one did (debug=0 to syslog)
sed -E -e 's/^debug=-1$/debug=0/' -e 's/^log_stderror=yes$/log_stderror=no\nlog_facility=LOG_LOCAL0/' "$now" > "$work/now-syslog.cfg"

# name|config|warm-up calls ("" = run.sh's default)|tail seconds
variants=(
    "first configuration, no warm-up, no tail|$first|0|0"
    "first configuration, warm-up and 7 s tail|$first||7"
    "first, methods compared by the core (method ==)|$work/first-method.cfg||7"
    "current configuration|$now||7"
    "current, methods by textops is_method()|$work/now-is-method.cfg||7"
    "current, retransmissions routed again|$work/now-no-precheck.cfg||7"
    "current, logging to syslog at debug=0|$work/now-syslog.cfg||7"
    "current, no warm-up|$now|0|7"
    "current, no tail|$now||0"
)
declare -A results
for round in $(seq "$rounds"); do
    for v in "${variants[@]}"; do
        IFS='|' read -r name cfg warm tail_s <<<"$v"
        # An empty warm-up argument is run.sh's own default.
        line="$(KAMAILIO_CFG="$cfg" bash "$here/run.sh" "$rate" "$calls" "$warm" "$tail_s" | tail -1)"
        per="$(sed -E 's/.*cpu_us_per_call=([0-9]+).*/\1/' <<<"$line")"
        failed="$(sed -E 's/.*failed=([0-9]+).*/\1/' <<<"$line")"
        [ "$failed" = 0 ] || per="$per($failed failed)"
        results[$name]="${results[$name]:-} $per"
        echo "round $round: $name: $line" >&2
    done
done
printf '%-52s %-20s %s\n' "variant ($rate calls/s, $calls calls)" "us/call per round" "median"
for v in "${variants[@]}"; do
    name="${v%%|*}"
    vals="${results[$name]}"
    median="$(tr ' ' '\n' <<<"$vals" | grep -E '^[0-9]+$' | sort -n | awk '{a[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}')"
    printf '%-52s %-20s %s\n' "$name" "$vals" "$median"
done
