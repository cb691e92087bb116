#!/usr/bin/env bash
# The test command from the README: set up, then run every test.
#   unit + golden + bad-input corpus + property tests: seconds
#   end to end (rootfs builds, boots, the fleet build): minutes
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cargo nextest run --workspace --all-targets --no-fail-fast
cargo test --doc --quiet
# kiln's own CI on the example fleet, as docs/src/ci.md describes it:
# check, lock --locked, a sharded build through a shared cache, and
# --check reproducibility (needs deb.debian.org; skips with a notice
# without it).
./scripts/fleet-ci.sh
