#!/usr/bin/env bash
# This repo's own CI on the example fleet (hosts/ images/ modules/ stacks/
# lockfile.toml), run the way docs/src/ci.md runs a user's pipeline, on one
# machine, with a directory as the shared binary cache:
#
#   1. plan:   kiln check; kiln lock --locked; kiln build --all --dry-run --json
#   2. build:  two "runners" (two stores) each build their shard of every
#              host and the edge stack's compose bundle,
#              kiln build --all stack:edge --shard I/2 --locked, and push what they
#              built to the cache (signed with a key made for this run)
#   3. share:  a third, empty store builds --all and must substitute every
#              target and build nothing
#   4. check:  a fourth, empty store, under another umask, time zone and
#              locale, runs kiln build --check on an LXC host (monitoring)
#              and a stack: each is substituted, rebuilt here and compared
#              byte for byte. (`db` is not checked: its template is not yet
#              reproducible — postgresql's postinst creates a cluster with a
#              random system identifier and ssl-cert a random snakeoil key;
#              see docs/src/lxc.md.)
#
#   scripts/fleet-ci.sh            (KILN=path/to/kiln to use another binary)
#
# Steps 2-4 fetch the pinned Debian packages from deb.debian.org. If the
# mirror cannot be reached they are skipped with a notice; any other
# failure fails the script.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\n== fleet-ci: %s\n' "$*"; }
fail() { printf 'fleet-ci: FAILED: %s\n' "$*" >&2; exit 1; }

if [ -z "${KILN:-}" ]; then
  cargo build --quiet --bin kiln
  KILN="${CARGO_TARGET_DIR:-target}/debug/kiln"
fi
# Absolute: the build steps run from another directory.
KILN=$(realpath "$KILN")
kiln() { "$KILN" --color never "$@"; }
# The JSON field $2 of the file $1, by a Python expression over `d`.
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }

work=$(mktemp -d "${TMPDIR:-/var/tmp}/kiln-fleet-ci.XXXXXX")
trap 'rm -rf "$work"' EXIT
# No caches but the one this script makes (a developer's environment may
# name others).
unset KILN_SUBSTITUTERS KILN_TRUSTED_KEYS KILN_CACHE_SECRET_KEY_FILE

say "plan: check, lock --locked, dry run"
kiln check
kiln lock --locked
kiln --store "$work/plan" build --all --dry-run --json --no-substitute >"$work/dry-run.json"
targets=$(json "$work/dry-run.json" "' '.join(t['target'] for t in d['targets'])")
[ -n "$targets" ] || fail "the dry run lists no targets"
echo "targets: $targets"
kiln --store "$work/plan" plan --all --shard 1/2 --json >"$work/plan.json"
json "$work/plan.json" "'\n'.join('shard %d: %s (cost %d)' % (s['index'], ', '.join(s['targets']), s['cost']) for s in d['shards'])"

if ! timeout 10 bash -c 'exec 3<>/dev/tcp/deb.debian.org/80' 2>/dev/null; then
  echo
  echo "NOTICE: fleet-ci: deb.debian.org is unreachable: SKIPPING the fleet build,"
  echo "NOTICE: fleet-ci: the shared cache and the reproducibility check (plan steps passed)"
  exit 0
fi

cache="file://$work/cache"
kiln cache keygen fleet-ci-1 --secret-key-file "$work/cache.sec" >"$work/cache.pub"
export KILN_CACHE_SECRET_KEY_FILE="$work/cache.sec"
public_key=$(cat "$work/cache.pub")

for shard in 1 2; do
  say "build: runner $shard builds shard $shard/2 and pushes it"
  start=$SECONDS
  (
    cd "$work"
    kiln --repo "$OLDPWD" --store "$work/runner$shard" build --all stack:edge --shard "$shard/2" \
      --locked --no-substitute -o "result$shard"
    shopt -s nullglob
    links=("result$shard"*)
    if ((${#links[@]})); then
      kiln --store "$work/runner$shard" cache push --to "$cache" "${links[@]}" --json >"push$shard.json"
      echo "pushed $(json "push$shard.json" "sum(p['transferred'] for p in d['paths'])") paths"
    fi
  )
  echo "shard $shard took $((SECONDS - start)) s"
done

say "share: an empty store substitutes every target and builds nothing"
kiln --store "$work/laptop" build --all stack:edge --no-link --json \
  --substituter "$cache" --trusted-key "$public_key" >"$work/laptop.json"
built=$(json "$work/laptop.json" "sum(1 for r in d['results'] if r['status'] != 'valid' and not (isinstance(r['status'], dict) and 'substituted' in r['status']))")
substituted=$(json "$work/laptop.json" "sum(1 for r in d['results'] if isinstance(r['status'], dict) and 'substituted' in r['status'])")
echo "substituted $substituted outputs, built $built"
[ "$built" -eq 0 ] || fail "the empty store built $built derivations instead of substituting them"
[ "$substituted" -gt 0 ] || fail "nothing was substituted"
kiln --store "$work/laptop" store verify

say "check: substitute, rebuild and compare (umask 077, TZ=Pacific/Kiritimati, LC_ALL=C.UTF-8)"
(
  umask 077
  TZ=Pacific/Kiritimati LC_ALL=C.UTF-8 kiln --store "$work/checker" build --check --no-link --json \
    --substituter "$cache" --trusted-key "$public_key" monitoring stack:edge >"$work/check.json"
)
same=$(json "$work/check.json" "sum(1 for r in d['results'] if r['status'] == 'checked_same')")
echo "rebuilt and identical: $same"
[ "$same" -ge 2 ] || fail "expected monitoring and stack:edge to be checked identical: $(cat "$work/check.json")"
say "passed"
