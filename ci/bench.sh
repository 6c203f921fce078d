#!/usr/bin/env bash
# Measures the lab's main operations on this host, RUNS times each (default 3), and
# prints min, median and max seconds per step as a table, with the failures; the same
# figures go to target/bench/bench.json. README's "Measured" table is filled from it.
#
# Each run: `lab destroy`, a fresh `lab up` (caches as they are), at once the
# conformance suite's checks while a DNS probe asks the cluster DNS from the host 10
# times a second for 60 s (every lost query is counted), once the probe is over the
# failover drills (the `drills` profile), then a no-op `lab up`. After the runs: `lab
# down`, `lab up` after it, and `lab destroy`, once each.
#
# With FRESH_ONLY=1 each run stops after the checks, and only `lab destroy` follows the
# runs: for emulated VMs, where the drills, each no-op re-run and the `down`/`up` pair
# take minutes.
#
# Run from the repository root as root; it destroys the lab of the current state
# directory first. Arguments go to every `lab` command, e.g. `ci/bench.sh --topology
# examples/minimal.toml --backend vagrant`; with `--backend libvirt` the CLI is built
# with its cargo feature. Logs of every step are in target/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
fresh_only=${FRESH_ONLY:-0}
out=target/bench
mkdir -p "$out"
lab=lab
features=()
case " $* " in *" --backend libvirt "*) lab=lab-libvirt; features=(--features libvirt) ;; esac
cargo build --quiet --package lab "${features[@]}"
cargo nextest run --package conformance --no-run >/dev/null 2>&1

declare -A seconds failures
record() { # NAME SECONDS OK
  seconds[$1]="${seconds[$1]:-} $2"
  [ "$3" = ok ] || failures[$1]=$(( ${failures[$1]:-0} + 1 ))
}

# Runs a step, logs it to target/bench/NAME-RUN.log and records its time.
time_step() {
  local name=$1 run=$2; shift 2
  local log="$out/${name// /-}-$run.log" started=$EPOCHREALTIME status=ok elapsed
  "$@" >"$log" 2>&1 || status=failed
  elapsed=$(awk -v a="$started" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
  record "$name" "$elapsed" "$status"
  printf '%-24s run %d: %6.1f s %s\n' "$name" "$run" "$elapsed" "$status" >&2
}

# The cluster DNS from the host: 10 queries a second for 60 s, each allowed 1 s. Sends
# nothing unless the DNS address leaves the host by the lab's bridge.
dns_probe() {
  local run=$1 status dns bridge domain lost=0
  status=$(cargo "$lab" "${args[@]}" status --json)
  dns=$(sed -n 's/.*"cluster_dns_ip": *"\([0-9.]*\)".*/\1/p' <<<"$status" | head -1)
  bridge=$(sed -n 's/.*"bridge": *"\([^"]*\)".*/\1/p' <<<"$status" | head -1)
  domain=$(sed -n 's/.*"cluster_domain": *"\([^"]*\)".*/\1/p' <<<"$status" | head -1)
  if ! ip route get "$dns" | grep -q " dev $bridge "; then
    echo "refusing to probe $dns: it does not route onto $bridge" >&2
    echo 600 >"$out/dns-lost-$run"
    return
  fi
  for _ in $(seq 600); do
    dig +short +time=1 +tries=1 "@$dns" "kubernetes.default.svc.$domain" 2>/dev/null | grep -q . || lost=$((lost + 1))
    sleep 0.1
  done
  echo "$lost" >"$out/dns-lost-$run"
}

args=("$@")
cargo "$lab" "$@" destroy >/dev/null 2>&1 || true
dns_lost=()
for run in $(seq "$runs"); do
  cargo "$lab" "$@" destroy >/dev/null 2>&1 || true
  time_step "up (fresh lab)" "$run" cargo "$lab" "$@" up
  dns_probe "$run" &
  probe=$!
  time_step "conformance" "$run" cargo nextest run --package conformance
  wait "$probe"
  dns_lost+=("$(cat "$out/dns-lost-$run")")
  [ "$fresh_only" = 1 ] && continue
  time_step "drills" "$run" cargo nextest run --package conformance --profile drills
  time_step "up (no-op re-run)" "$run" cargo "$lab" "$@" up
done
if [ "$fresh_only" != 1 ]; then
  time_step "down" 1 cargo "$lab" "$@" down
  time_step "up (after down)" 1 cargo "$lab" "$@" up
fi
time_step "destroy" 1 cargo "$lab" "$@" destroy

# min, median (the middle value; the lower middle for an even count) and max.
stats() { tr ' ' '\n' <<<"$1" | grep . | sort -g | awk '{ v[NR] = $1 } END { printf "%d %.1f %.1f %.1f", NR, v[1], v[int((NR + 1) / 2)], v[NR] }'; }

date=$(date -u +%Y-%m-%d)
printf '\n%s, %s cores, %s runs, lab arguments: %s\n' "$date" "$(nproc)" "$runs" "${*:-(default lab)}"
printf '| %-22s | %4s | %8s | %8s | %8s | %8s |\n' step runs min median max failures
printf '|%s|\n' "------------------------|------|----------|----------|----------|----------"
json="{\"date\":\"$date\",\"cores\":$(nproc),\"arguments\":\"$*\",\"steps\":["
first=1
for name in "up (fresh lab)" "up (no-op re-run)" "conformance" "drills" "down" "up (after down)" "destroy"; do
  read -r count min median max <<<"$(stats "${seconds[$name]:-}")"
  printf '| %-22s | %4d | %6.1f s | %6.1f s | %6.1f s | %8d |\n' "$name" "$count" "$min" "$median" "$max" "${failures[$name]:-0}"
  [ $first = 1 ] || json+=","
  first=0
  json+="{\"step\":\"$name\",\"runs\":$count,\"min_s\":$min,\"median_s\":$median,\"max_s\":$max,\"failures\":${failures[$name]:-0}}"
done
lost_total=0
for lost in "${dns_lost[@]}"; do lost_total=$((lost_total + lost)); done
printf 'DNS probe from the host after each fresh up (600 queries at 10/s): lost %s (total %d)\n' "${dns_lost[*]}" "$lost_total"
json+="],\"dns_probe\":{\"queries_per_run\":600,\"lost_per_run\":[$(IFS=,; echo "${dns_lost[*]}")]}}"
echo "$json" >"$out/bench.json"
echo "JSON: $out/bench.json"
