#!/usr/bin/env bash
# The randomized simulation of the core (crates/supervisor/src/core/simulation), for many more
# seeds than the normal suite runs: every seed draws its apps and thousands of steps (failing
# spawns, crashes at any point, ready timeouts, reload/scale/restart/stop, memory samples, lease
# events, config changes, time jumps) and checks every invariant after every step. A failing
# seed is shrunk to a minimal list of steps, printed with the line that replays it.
#
#   bench/simulate.sh                    # 10,000 seeds of 2,000 steps
#   bench/simulate.sh SEEDS=100000 STEPS=5000 FIRST=0
#
# Built optimized (a profile of its own, without release's LTO: it builds in a minute or two).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SEEDS=10000 STEPS=2000 FIRST=1000000
for arg in "$@"; do
  case $arg in
    SEEDS=*|STEPS=*|FIRST=*) declare "$arg" ;;
    *) echo "usage: $0 [SEEDS=N] [STEPS=N] [FIRST=N]" >&2; exit 2 ;;
  esac
done
cd "$ROOT"
SIM_SEEDS=$SEEDS SIM_STEPS=$STEPS SIM_FIRST=$FIRST cargo test -q -p supervisor --lib \
  --config 'profile.simulate.inherits="release"' --config 'profile.simulate.lto=false' \
  --config 'profile.simulate.codegen-units=16' --config 'profile.simulate.debug=false' \
  --profile simulate core::simulation::many_seeds -- --ignored --nocapture 2>&1 \
  | grep -v '^running\|^test result\|^$\|^test core'
