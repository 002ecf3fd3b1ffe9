#!/usr/bin/env bash
# Compare Herald with the baselines on one scenario: builds the release binaries, installs
# the baselines (npm, once), then runs bench/compare.py. See docs/benchmarking.md.
#
#   bench/compare.sh fanout            # 3 alternating runs of each server
#   bench/compare.sh throughput --runs 5 --servers herald,floor
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p herald-server -p herald-bench
for dir in bench/baselines/node-ws bench/baselines/soketi; do
  if [ ! -d "$dir/node_modules" ]; then
    # npm 11 may refuse `ci` on a lock made by another npm (optional platform packages).
    (cd "$dir" && (npm ci --no-audit --no-fund || npm install --no-audit --no-fund))
  fi
done
exec python3 bench/compare.py "$@"
