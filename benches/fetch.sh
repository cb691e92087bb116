#!/usr/bin/env bash
# Benchmark for the fetcher (src/fetch): one large download over loopback.
#
#   benches/fetch.sh [--mib M] [--runs R]
#
# Serves a file of M MiB (default 1024) of random bytes with
# `python3 -m http.server` on 127.0.0.1, then times
#   (a) curl -s -o /dev/null URL
#   (b) a kiln fetch of the same URL with its sha256 (the ignored test
#       `bench_fetch_one_file` in tests/fetch.rs, run from its release test
#       binary directly, so the figures are the fetcher's and not cargo's)
# with /usr/bin/time (wall time, peak RSS). Prints medians of R runs after
# a warm-up:
#   curl MiB/s, kiln MiB/s, kiln/curl ratio (target >= 0.8),
#   kiln peak RSS (target < 64 MiB),
# and, for context, how fast sha256 alone goes over the same bytes on this
# machine: kiln must hash every byte and write it to disk (and fsync it),
# curl here does neither, so the hash speed bounds the ratio.
# Exits 1 only if a download fails.
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

apt_updated=
need() { # need COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return
    [[ -n $apt_updated ]] || { apt-get update -qq >/dev/null; apt_updated=1; }
    apt-get install -y -qq "$2" >/dev/null
}
need curl curl
need /usr/bin/time time
need python3 python3

cd "$root"
echo "building (release)…"
cargo build --release --quiet
# The test binary's path, from cargo's own report of what it built.
test_bin=$(cargo test --release --test fetch --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("reason") == "compiler-artifact" and message["target"]["name"] == "fetch" \
            and message.get("executable"):
        print(message["executable"])
')
[[ -x $test_bin ]] || { echo "cannot find the fetch test binary" >&2; exit 1; }

work=$(mktemp -d)
server_pid=
cleanup() {
    [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

mkdir "$work/serve"
file="$work/serve/big"
echo "creating $mib MiB of random bytes…"
head -c "$((mib * 1024 * 1024))" /dev/urandom >"$file"

# Python's hashlib is OpenSSL's sha256 (coreutils' sha256sum may lack the
# SHA extensions and be several times slower). Prints "hex seconds".
sha_and_time=$(python3 - "$file" <<'EOF'
import hashlib, sys, time
start = time.perf_counter()
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    while chunk := f.read(1 << 20):
        h.update(chunk)
print(h.hexdigest(), time.perf_counter() - start)
EOF
)
sha=${sha_and_time%% *}
hash_seconds=${sha_and_time##* }

# Port 0: the kernel picks a free one; the server prints it.
python3 -u -m http.server --bind 127.0.0.1 --directory "$work/serve" 0 \
    >"$work/server.log" 2>&1 &
server_pid=$!
port=
for _ in $(seq 100); do
    port=$(sed -n 's/.* port \([0-9]*\) .*/\1/p' "$work/server.log")
    [[ -n $port ]] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; exit 1; }
    sleep 0.1
done
[[ -n $port ]] || { echo "the HTTP server did not start" >&2; exit 1; }
url="http://127.0.0.1:$port/big"

# timed LABEL COMMAND…: run it, append "seconds kib" to $work/LABEL.
timed() {
    local label=$1; shift
    /usr/bin/time -f '%e %M' -o "$work/time" "$@" >/dev/null 2>"$work/stderr" || {
        echo "FAILED: $*" >&2; cat "$work/stderr" >&2; exit 1
    }
    cat "$work/time" >>"$work/$label"
}

dest="$work/fetched"
kiln_fetch() {
    rm -f "$dest"
    timed kiln env KILN_BENCH_URL="$url" KILN_BENCH_SHA256="$sha" KILN_BENCH_DEST="$dest" \
        "$test_bin" --ignored --exact bench_fetch_one_file --quiet
    [[ $(stat -c %s "$dest") -eq $((mib * 1024 * 1024)) ]] || { echo "kiln: wrong size" >&2; exit 1; }
}

echo "warming up…"
timed warmup curl -sf -o /dev/null "$url"
kiln_fetch
: >"$work/kiln"

echo "timing $runs runs each…"
for _ in $(seq "$runs"); do
    timed curl curl -sf -o /dev/null "$url"
    kiln_fetch
done

# median of column 1, max of column 2
median() { sort -n "$1" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
max_kib() { sort -n -k2 "$1" | tail -1 | awk '{print $2}'; }
curl_s=$(median "$work/curl")
kiln_s=$(median "$work/kiln")
kiln_kib=$(max_kib "$work/kiln")

awk -v mib="$mib" -v c="$curl_s" -v k="$kiln_s" -v kib="$kiln_kib" -v h="$hash_seconds" 'BEGIN {
    if (c <= 0) c = 0.01; if (k <= 0) k = 0.01
    printf "1. curl -o /dev/null:       %8.0f MiB/s  (%.2f s)\n", mib / c, c
    printf "2. kiln fetch (sha256 checked, written to disk and fsynced):\n"
    printf "                            %8.0f MiB/s  (%.2f s)\n", mib / k, k
    printf "3. ratio kiln/curl:         %8.2f        (target >= 0.8)\n", c / k
    printf "4. kiln peak RSS:           %8.1f MiB    (target < 64)\n", kib / 1024
    printf "   context: sha256 alone over the same bytes (OpenSSL, page cache):\n"
    printf "                            %8.0f MiB/s  (%.2f s)\n", mib / h, h
}'
