#!/usr/bin/env bash
# Measures the lab's main operations on this host and prints one line per step:
# a fresh `lab up` (caches as they are), a no-op re-run, the conformance suite,
# `lab down`, `lab up` after it, and `lab destroy`. README's "Measured" table is
# filled from its output. Run from the repository root as root; it destroys the
# lab of the current state directory first. Arguments go to every `lab` command, e.g.
# `ci/bench.sh --topology examples/minimal.toml --backend vagrant`; with
# `--backend libvirt` the CLI is built with its cargo feature.
set -euo pipefail
cd "$(dirname "$0")/.."
lab=lab
features=()
case " $* " in *" --backend libvirt "*) lab=lab-libvirt; features=(--features libvirt) ;; esac
cargo build --quiet --package lab "${features[@]}"
cargo nextest run --package conformance --no-run >/dev/null 2>&1

time_step() {
  local name=$1; shift
  local started=$SECONDS
  if "$@" >"/tmp/lab-bench-${name}.log" 2>&1; then status=ok; else status="FAILED (see /tmp/lab-bench-${name}.log)"; fi
  printf '%-28s %5d s  %s\n' "$name" "$((SECONDS - started))" "$status"
}

cargo "$lab" "$@" destroy >/dev/null 2>&1 || true
time_step "up (fresh lab)" cargo "$lab" "$@" up
time_step "up (no-op re-run)" cargo "$lab" "$@" up
time_step "conformance" cargo nextest run --package conformance
time_step "down" cargo "$lab" "$@" down
time_step "up (after down)" cargo "$lab" "$@" up
time_step "destroy" cargo "$lab" "$@" destroy
