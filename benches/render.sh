#!/usr/bin/env bash
# Benchmark stack rendering: 100 stacks x 10 services (every workload kind,
# exposure with forward-auth, metrics, volumes, secrets, canary and
# blue-green), rendered for both targets (Docker Compose and Kubernetes).
#
#   benches/render.sh [--stacks N] [--services M]
#
# Target (issue 8): under 1 s for 100 x 10, both targets. The figure is the
# best of 5 in-process renders (the ignored test `bench_render_stacks` in
# tests/stack_build.rs, release build), with evaluating and pinning the
# stacks (parse, module system, checks, defaults, lockfile) timed apart.
# No peer renders both targets from one model (kompose converts
# compose to k8s and is not packaged for Debian 12), so no ratio is printed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "$0")/.."

stacks=100 services=10
while [[ $# -gt 0 ]]; do
    case $1 in
        --stacks) stacks=$2; shift 2 ;;
        --services) services=$2; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "render.sh: unknown argument \`$1\` (try --help)" >&2; exit 2 ;;
    esac
done

test_bin=$(release_test_binary stack_build)
echo "machine: $(nproc) cores, $(uname -r)"
KILN_BENCH_STACKS=$stacks KILN_BENCH_SERVICES=$services \
    "$test_bin" --ignored --exact bench_render_stacks --nocapture --quiet 2>&1 |
    grep -E '^(render|evaluate|total)[ :]'
