#!/usr/bin/env bash
# The test command from the README: set up, then run every test.
#   unit + golden + bad-input corpus + property tests: seconds
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo nextest run --workspace --all-targets --no-fail-fast
cargo test --doc --quiet
