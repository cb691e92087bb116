#!/usr/bin/env bash
# Benchmarks for the store and scheduler (issue: derivations and the store).
#
#   benches/build.sh [--hosts N] [--verify-mib M] [--runs R]
#
# Prints:
#   1. no-op `kiln build --all` on the example fleet      (target < 100 ms)
#   2. no-op `kiln build --all` on the synthetic fleet    (target < 2 s, 1000 hosts)
#   3. `kiln store verify` throughput over one large output, as a ratio to
#      `openssl dgst -sha256` over the same bytes in the same run (target >= 0.8)
# Medians of R runs after a warm-up. Exits 1 only if kiln fails.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
hosts=1000 verify_mib=1024 runs=5
while [[ $# -gt 0 ]]; do
    case $1 in
        --hosts) hosts=$2; shift 2 ;;
        --verify-mib) verify_mib=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
command -v openssl >/dev/null || { apt-get install -y -qq openssl >/dev/null; }

cd "$root"
cargo build --release --quiet
kiln="$root/target/release/kiln"
work=$(mktemp -d)
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT

# median of R timings (seconds) of a command
time_runs() {
    local -a times=()
    "$@" >/dev/null 2>&1 || { echo "FAILED: $*" >&2; "$@"; exit 1; }
    for _ in $(seq "$runs"); do
        local start end
        start=$(date +%s%N)
        "$@" >/dev/null 2>&1 || { echo "FAILED: $*" >&2; exit 1; }
        end=$(date +%s%N)
        times+=("$(( (end - start) / 1000 ))")
    done
    printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "%.3f", a[int((NR+1)/2)]/1e6}'
}

echo "1. no-op build of the example fleet"
"$kiln" --repo "$root" --store "$work/store-example" build --all --no-link -q >/dev/null
t=$(time_runs "$kiln" --repo "$root" --store "$work/store-example" build --all --no-link -q)
echo "   kiln build --all (nothing to do): median ${t} s (target < 0.100 s)"

echo "2. no-op build of a synthetic fleet of $hosts hosts x 20 modules"
python3 "$root/benches/gen_fleet.py" "$work/fleet" --hosts "$hosts" >/dev/null
"$kiln" --repo "$work/fleet" --store "$work/store-fleet" build --all --no-link -q -j "$(nproc)" >/dev/null
t=$(time_runs "$kiln" --repo "$work/fleet" --store "$work/store-fleet" build --all --no-link -q)
echo "   kiln build --all (nothing to do): median ${t} s (target < 2 s)"

echo "3. store verify throughput over a ${verify_mib} MiB output"
big="$work/big"
mkdir -p "$big/hosts" "$big/images" "$big/modules/files"
cp "$root/images/debian-12.toml" "$big/images/"
echo 'version = 1' > "$big/lockfile.toml"
head -c "$((verify_mib * 1024 * 1024))" /dev/urandom > "$big/modules/files/blob"
cat > "$big/modules/blob.toml" <<'TOML'
[module]
description = "A large file, to measure hashing throughput."
[config.files."/srv/blob"]
source = "files/blob"
TOML
cat > "$big/hosts/big.toml" <<'TOML'
[host]
kind = "lxc"
image = "debian-12"
node = "pve1"
vmid = 100
imports = ["blob"]
TOML
"$kiln" --repo "$big" --store "$work/store-big" build big --no-link -q >/dev/null
kiln_t=$(time_runs "$kiln" --store "$work/store-big" store verify -q)
openssl_t=$(time_runs openssl dgst -sha256 "$big/modules/files/blob")
bytes=$(( 2 * verify_mib * 1024 * 1024 ))   # the source path and the overlay's copy
awk -v b="$bytes" -v k="$kiln_t" -v o="$openssl_t" -v m="$verify_mib" 'BEGIN {
    kr = b / k / 1048576; orate = m / o;
    printf "   kiln store verify: %.0f MiB in %.3f s = %.0f MiB/s\n", b / 1048576, k, kr;
    printf "   openssl dgst -sha256: %d MiB in %.3f s = %.0f MiB/s\n", m, o, orate;
    printf "   ratio kiln/openssl: %.2f (target >= 0.8)\n", kr / orate;
}'
