#!/usr/bin/env bash
# The nightly cluster rebuild: destroy whatever an earlier night left, rebuild the
# lab from scratch, run the conformance suite, and keep the evidence in
# ARTIFACTS_DIR (default target/nightly): the JUnit report, the per-stage timings of
# `lab up`, the lab's status, and on failure the log bundle and every lab unit's
# journal. The lab is destroyed at the end whatever happened. Exit status is the
# outcome. Run as root from a checkout; `TOPOLOGY` selects another topology file and
# `BACKEND` another kind of machine (nspawn, libvirt, vagrant; libvirt runs the CLI
# built with its cargo feature).
set -euo pipefail
cd "$(dirname "$0")/.."
artifacts=${ARTIFACTS_DIR:-target/nightly}
topology=(${TOPOLOGY:+--topology "$TOPOLOGY"} ${BACKEND:+--backend "$BACKEND"})
lab=lab
[ "${BACKEND:-}" = libvirt ] && lab=lab-libvirt
mkdir -p "$artifacts"
started=$SECONDS
step() { printf '\n==> [%4ds] %s\n' "$((SECONDS - started))" "$*"; }

collect() {
  local status=$?
  step "collecting artifacts in $artifacts"
  cp -f target/nextest/ci/junit.xml "$artifacts/" 2>/dev/null || true
  state_dir=${LAB_DIR:-.lab}
  cp -f "$state_dir/timings.json" "$artifacts/" 2>/dev/null || true
  cargo "$lab" "${topology[@]}" status --json > "$artifacts/status.json" 2>/dev/null || true
  if [ "$status" -ne 0 ]; then
    cp -rf "$state_dir/logs" "$artifacts/log-bundles" 2>/dev/null || true
    cargo "$lab" "${topology[@]}" logs > "$artifacts/journals.txt" 2>&1 || true
  fi
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
