#!/usr/bin/env bash
# The nightly cluster rebuild: destroy whatever an earlier night left, rebuild the
# lab from scratch, run the conformance suite, and keep the evidence in
# ARTIFACTS_DIR (default target/nightly): the JUnit report and its Markdown summary
# (summary.md, which the workflow shows on the run's page), the timings of every
# step and stage of `lab up` (written on failure too), the lab's status, every
# node's console, the Vagrant log, the Kubernetes build log, and on failure the log
# bundles (which hold no private keys) and every lab unit's journal. The lab is
# destroyed at the end whatever happened. Exit status is the outcome. Run as root
# from a checkout; `TOPOLOGY` selects another topology file and `BACKEND` another
# kind of machine (nspawn, libvirt, vagrant; libvirt runs the CLI built with its
# cargo feature).
set -euo pipefail
cd "$(dirname "$0")/.."
artifacts=${ARTIFACTS_DIR:-target/nightly}
topology=(${TOPOLOGY:+--topology "$TOPOLOGY"} ${BACKEND:+--backend "$BACKEND"})
lab=lab
[ "${BACKEND:-}" = libvirt ] && lab=lab-libvirt
# Where `lab` keeps its state and caches (lab/src/lib.rs, `Paths`).
state_dir=${LAB_DIR:-.lab}
if [ -n "${XDG_CACHE_HOME:-}" ]; then
  cache_dir=$XDG_CACHE_HOME/k8s-lab
elif [ -n "${HOME:-}" ]; then
  cache_dir=$HOME/.cache/k8s-lab
else
  cache_dir=/var/cache/k8s-lab
fi
mkdir -p "$artifacts"
started=$SECONDS
step() { printf '\n==> [%4ds] %s\n' "$((SECONDS - started))" "$*"; }

# Every node's console (STATE/machines/NODE/console.log, whatever the backend), the
# Vagrant log and the Kubernetes build logs in the cache: what a failure before the
# first stage leaves, and what `lab destroy` would remove.
collect_logs() {
  local console node build
  for console in "$state_dir"/machines/*/console.log; do
    [ -f "$console" ] || continue
    node=$(basename "$(dirname "$console")")
    mkdir -p "$artifacts/consoles"
    cp -f "$console" "$artifacts/consoles/$node.log" || true
  done
  cp -f "$state_dir/vagrant/vagrant.log" "$artifacts/" 2>/dev/null || true
  for build in "$cache_dir"/kubernetes/*/build.log; do
    [ -f "$build" ] || continue
    cp -f "$build" "$artifacts/kubernetes-$(basename "$(dirname "$build")")-build.log" || true
  done
}

# Markdown for the run's page: the outcome, the step or stage `lab up` failed at,
# the test counts and every failed test, from timings.json and the JUnit report.
summarize() {
  local status=$1 junit=$artifacts/junit.xml timings=$artifacts/timings.json
  echo "### ${TOPOLOGY:-lab.toml}${BACKEND:+ ($BACKEND)}: $([ "$status" -eq 0 ] && echo passed || echo "failed (exit $status)")"
  if [ -f "$timings" ]; then
    local outcome failed total
    outcome=$(sed -n 's/^  "outcome": "\(.*\)",$/\1/p' "$timings")
    failed=$(sed -n 's/^  "failed": "\(.*\)",$/\1/p' "$timings")
    total=$(sed -n 's/^  "total_seconds": \([0-9]*\).*/\1/p' "$timings")
    echo "- \`lab up\`: ${outcome:-unknown}${failed:+ at $failed} after ${total:-?} s"
  else
    echo "- \`lab up\`: no timings.json (it stopped before claiming the state directory)"
  fi
  if [ -f "$junit" ]; then
    local totals
    totals=$(grep -o -m1 '<testsuites [^>]*>' "$junit" || true)
    echo "- conformance: $(attribute tests "$totals") tests, $(attribute failures "$totals") failed, $(attribute errors "$totals") errors"
    # A failed test is a <testcase> followed by a <failure> or <error> before the next one.
    awk '
      /<testcase / {
        name = $0; sub(/.* name="/, "", name); sub(/".*/, "", name)
        class = $0; sub(/.*classname="/, "", class); sub(/".*/, "", class)
        listed = 0
      }
      /<(failure|error)[ >]/ && !listed && name != "" { print "  - `" class "::" name "`"; listed = 1 }
    ' "$junit"
  else
    echo "- conformance: no JUnit report (the suite did not run)"
  fi
}

attribute() { sed -n "s/.* $1=\"\([0-9]*\)\".*/\1/p" <<<"$2"; }

collect() {
  local status=$?
  step "collecting artifacts in $artifacts"
  cp -f target/nextest/ci/junit.xml "$artifacts/" 2>/dev/null || true
  cp -f "$state_dir/timings.json" "$artifacts/" 2>/dev/null || true
  cargo "$lab" "${topology[@]}" status --json > "$artifacts/status.json" 2>/dev/null || true
  cargo "$lab" "${topology[@]}" status > "$artifacts/status.txt" 2>&1 || true
  collect_logs
  if [ "$status" -ne 0 ]; then
    cp -rf "$state_dir/logs" "$artifacts/log-bundles" 2>/dev/null || true
    cargo "$lab" "${topology[@]}" logs > "$artifacts/journals.txt" 2>&1 || true
  fi
  summarize "$status" > "$artifacts/summary.md" || true
  step "cargo $lab destroy"
  cargo "$lab" "${topology[@]}" destroy || true
  step "finished with status $status"
  exit "$status"
}

step "destroying leftovers of an earlier run"
cargo "$lab" "${topology[@]}" destroy || true
trap collect EXIT

step "cargo $lab doctor"
cargo "$lab" "${topology[@]}" doctor
step "cargo $lab up"
cargo "$lab" "${topology[@]}" up
step "conformance suite"
cargo nextest run -p conformance --profile ci
