#!/usr/bin/env bash
# Fuzzing of the config loader and the control protocol's decoder (no panic, no hang).
#  - With cargo-fuzz and a nightly toolchain (`cargo install cargo-fuzz`): the coverage-guided
#    targets in fuzz/, SECONDS each (60), seeded with the saved corpus
#    (crates/supervisor/tests/corpus); a crash is kept in fuzz/artifacts/TARGET/.
#  - Otherwise, on stable: the seeded generator of crates/supervisor/tests/fuzz.rs for ITERS
#    inputs per target (200,000), built optimized.
#
#   bench/fuzz.sh [SECONDS=60] [ITERS=200000] [STABLE=1 (skip cargo-fuzz)]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SECONDS_EACH=60 ITERS=200000 STABLE=0
for arg in "$@"; do
  case $arg in
    SECONDS=*) SECONDS_EACH=${arg#SECONDS=} ;;
    ITERS=*) ITERS=${arg#ITERS=} ;;
    STABLE=*) STABLE=${arg#STABLE=} ;;
    *) echo "usage: $0 [SECONDS=N] [ITERS=N] [STABLE=1]" >&2; exit 2 ;;
  esac
done
cd "$ROOT"
if [ "$STABLE" != 1 ] && cargo +nightly fuzz --version >/dev/null 2>&1; then
  for target in config control; do
    corpus="fuzz/corpus/$target"
    mkdir -p "$corpus"
    cp crates/supervisor/tests/corpus/$target/* "$corpus/"
    echo "fuzz: $target for ${SECONDS_EACH}s (cargo-fuzz, libFuzzer)"
    (cd fuzz && cargo +nightly fuzz run "$target" "corpus/$target" -- \
      -max_total_time="$SECONDS_EACH" -timeout=2 -rss_limit_mb=2048) 2>&1 \
      | grep -E '^#[0-9]+ +(DONE|pulse)|Done [0-9]+ runs|ERROR|panicked' | tail -3
  done
else
  echo "fuzz: cargo-fuzz or nightly not here: the stable generator, $ITERS inputs per target"
  FUZZ_ITERS=$ITERS cargo test -q -p supervisor --test fuzz \
    --config 'profile.simulate.inherits="release"' --config 'profile.simulate.lto=false' \
    --config 'profile.simulate.codegen-units=16' --config 'profile.simulate.debug=false' \
    --profile simulate fuzz_for_long -- --ignored --nocapture 2>&1 \
    | grep -v '^running\|^test result\|^$\|^test fuzz'
fi
