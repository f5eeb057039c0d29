#!/usr/bin/env bash
# Redis round trips per instance per tick and claim latency (p50/p99) with 1, 10 and 100 competing
# instances; starts its own redis-server on a free port. Goal: <= 2 round trips per instance per
# tick, winning claim < 1 ms p99 on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { echo "redis-server not found: apt-get install -y redis-server" >&2; exit 1; }
cargo run --release -q -p cronlock --example claim_bench -- "$@"
