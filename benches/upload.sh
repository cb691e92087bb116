#!/usr/bin/env bash
# Benchmark for uploads to Proxmox (src/proxmox/client): a large CT
# template sent to the Proxmox VE simulator over loopback.
#
#   benches/upload.sh [--mib M] [--runs R]
#
# Starts `kiln-pve-sim` (release build, plain HTTP on 127.0.0.1), creates a
# file of M MiB (default 1024) of random bytes and, in every run, uploads it
# as a `vztmpl` `.tar.zst` with both:
#   kiln  the ignored test `bench_upload_one_file` in tests/pve_client.rs,
#         run from its release test binary (kiln's allocator): the client
#         `kiln deploy` uses, streamed multipart with a known length and the
#         sha256, then the upload task awaited and the storage listing checked
#   curl  `curl -F` with the same fields in the same order and the file
#         last, then one request for the task's status; the Authorization
#         header comes from a file (`-H @FILE`), never argv
# Both go to the same simulator and endpoint, which streams the body to its
# /var/tmp equivalent and moves it into the storage in the upload task.
# Prints medians of R runs (after a warm-up): MiB/s of each, the ratio
# kiln/curl (target >= 0.8), and kiln's peak RSS at M MiB and at M/4 MiB
# (flat memory: it must not grow with the file). Order alternates per run.
# Exits 1 only if an upload fails.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mib=1024 runs=3
while [[ $# -gt 0 ]]; do
    case $1 in
        --mib) mib=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

source "$root/benches/lib.sh"
need curl curl
need /usr/bin/time time
need python3 python3
need openssl openssl

cd "$root"
echo "building (release)…"
cargo build --release --quiet --bin kiln-pve-sim
test_bin=$(release_test_binary pve_client)
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')

work=$(mktemp -d)
sim_pid=
cleanup() {
    if [[ -n $sim_pid ]]; then
        kill "$sim_pid" 2>/dev/null || true
        wait "$sim_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# The simulator keeps its storage under TMPDIR: put it in the work dir.
TMPDIR=$work "$target_dir/release/kiln-pve-sim" --listen 127.0.0.1:0 >"$work/sim.out" 2>&1 &
sim_pid=$!
for _ in $(seq 100); do
    grep -q '^authorization:' "$work/sim.out" 2>/dev/null && break
    kill -0 "$sim_pid" 2>/dev/null || { cat "$work/sim.out" >&2; exit 1; }
    sleep 0.1
done
api=$(sed -n 's#^url: \(.*\)/api2/json$#\1#p' "$work/sim.out")
authorization=$(sed -n 's/^authorization: //p' "$work/sim.out")
token=${authorization#PVEAPIToken=}
secret=${token##*=}
token=${token%=*}
printf 'Authorization: %s\n' "$authorization" >"$work/auth-header"

make_file() { # make_file MIB PATH → sha256
    head -c $(($1 * 1024 * 1024)) /dev/urandom >"$2"
    local digest
    digest=$(openssl dgst -sha256 -r "$2")
    echo "${digest%% *}"
}

# timed LABEL COMMAND…: append "seconds kib" to $work/LABEL.
timed() {
    local label=$1; shift
    /usr/bin/time -f '%e %M' -o "$work/time" "$@" >"$work/stdout" 2>"$work/stderr" || {
        echo "FAILED: $label" >&2; cat "$work/stderr" "$work/stdout" >&2; exit 1
    }
    cat "$work/time" >>"$work/$label"
}

kiln_upload() { # kiln_upload LABEL FILE SHA NAME
    timed "$1" env KILN_BENCH_API="$api" KILN_BENCH_TOKEN="$token" KILN_PROXMOX_SECRET="$secret" \
        KILN_BENCH_FILE="$2" KILN_BENCH_SHA256="$3" KILN_BENCH_NAME="$4" \
        "$test_bin" --ignored --exact bench_upload_one_file --quiet
}

curl_upload() { # curl_upload LABEL FILE SHA NAME
    timed "$1" sh -c '
        upid=$(curl -sf -H @"$1" -F content=vztmpl -F checksum-algorithm=sha256 -F checksum="$3" \
            -F "filename=@$4;filename=$5;type=application/octet-stream" \
            "$2/api2/json/nodes/pve1/storage/local/upload" |
            python3 -c "import json,sys; print(json.load(sys.stdin)[\"data\"])") &&
        encoded=$(python3 -c "import sys,urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=\"\"))" "$upid") &&
        curl -sf -H @"$1" "$2/api2/json/nodes/pve1/tasks/$encoded/status" | grep -q "\"exitstatus\":\"OK\""
    ' sh "$work/auth-header" "$api" "$3" "$2" "$4"
}

echo "creating $mib MiB of random bytes…"
file="$work/big.tar.zst"
sha=$(make_file "$mib" "$file")
small_mib=$((mib / 4))
small="$work/small.tar.zst"
small_sha=$(make_file "$small_mib" "$small")

# Warm-up (page cache, simulator), not counted.
kiln_upload warmup "$file" "$sha" warm-kiln.tar.zst
curl_upload warmup "$file" "$sha" warm-curl.tar.zst
rm -f "$work/warmup"

for run in $(seq "$runs"); do
    if ((run % 2)); then order="kiln curl"; else order="curl kiln"; fi
    for peer in $order; do
        sync
        case $peer in
            kiln) kiln_upload kiln "$file" "$sha" "run$run-kiln.tar.zst" ;;
            curl) curl_upload curl "$file" "$sha" "run$run-curl.tar.zst" ;;
        esac
    done
done
kiln_upload kiln-small "$small" "$small_sha" small-kiln.tar.zst

median() { # median FILE COLUMN
    sort -n -k"$2" "$1" | awk -v c="$2" '{ v[NR] = $c } END { print v[int((NR + 1) / 2)] }'
}
kiln_s=$(median "$work/kiln" 1)
curl_s=$(median "$work/curl" 1)
kiln_rss=$(median "$work/kiln" 2)
small_rss=$(median "$work/kiln-small" 2)
awk -v mib="$mib" -v k="$kiln_s" -v c="$curl_s" -v rss="$kiln_rss" -v srss="$small_rss" \
    -v smib="$small_mib" -v runs="$runs" 'BEGIN {
    printf "upload of %d MiB to kiln-pve-sim over loopback, median of %d runs\n", mib, runs
    printf "  kiln  %7.1f MiB/s  (%.2f s)\n", mib / k, k
    printf "  curl  %7.1f MiB/s  (%.2f s)\n", mib / c, c
    printf "  ratio kiln/curl: %.2f (target >= 0.8)\n", c / k
    printf "  kiln peak RSS: %.1f MiB at %d MiB, %.1f MiB at %d MiB\n", rss / 1024, mib, srss / 1024, smib
}'
echo "per run (seconds): kiln $(awk '{ printf "%s ", $1 }' "$work/kiln")| curl $(awk '{ printf "%s ", $1 }' "$work/curl")"
