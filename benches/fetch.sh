#!/usr/bin/env bash
# Benchmark for the fetcher (src/fetch): one large download over loopback.
#
#   benches/fetch.sh [--mib M] [--runs R] [--server busybox|python]
#
# Serves a file of M MiB (default 1024) of random bytes on 127.0.0.1 and
# times, in every run, each of these fetching the same URL from the same
# server (with /usr/bin/time: wall time, peak RSS):
#   kiln  a kiln fetch with the file's sha256 (the ignored test
#         `bench_fetch_one_file` in tests/fetch.rs, run from its release test
#         binary directly, so the figures are the fetcher's and not cargo's;
#         that binary uses the kiln binary's allocator): body to
#         `<dest>.part`, sha256 checked, fsynced, renamed to dest
#   (a)   curl -s -o FILE
#   (b)   curl -s -o /dev/null
#   (c)   curl -s -o FILE, then `openssl dgst -sha256` over FILE, compared
#         with the expected hash
# Prints medians of R runs (after a warm-up): MiB/s of each, kiln's ratio to
# each peer (kiln MiB/s / peer MiB/s), kiln's peak RSS (target < 64 MiB), how
# fast sha256 alone goes over the same bytes, and how much CPU time other
# processes took while the commands ran (with a warning when the machine
# was busy with something else, which makes the figures meaningless).
#
# The headline ratio, for the target kiln/(a) >= 0.8, is against (a): kiln's
# job is to put the bytes in a file on disk, and (a) is the same download
# with the same disk writes but without the hash and the fsync that kiln
# must also do. (b) writes nothing and hashes nothing, so it measures the
# network path alone; (c) is the by-hand way to get a verified file (still
# without an fsync). Both are context.
#
# Each command starts from the same state: the previous outputs are deleted
# and `sync` is run (untimed) first, so no run pays for writing back another
# run's dirty pages. The order of the four rotates from run to run.
#
# The server: by default busybox httpd, which sends the file with
# sendfile(2) and uses little CPU. `python3 -m http.server` copies every
# byte through Python (about half a CPU-second per GiB), and on a machine
# with few cores that CPU is taken from whichever client uses more than one
# core (kiln receives, writes and hashes on separate threads), so the
# benchmark would partly measure the server. `--server python` runs it
# anyway, for comparison. Every command uses the same server and URL.
# Exits 1 only if a download fails.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mib=1024 runs=3 server=busybox
while [[ $# -gt 0 ]]; do
    case $1 in
        --mib) mib=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --server) server=$2; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
case $server in
    busybox | python) ;;
    *) echo "unknown server: $server (busybox or python)" >&2; exit 2 ;;
esac

source "$root/benches/lib.sh"
need curl curl
need /usr/bin/time time
need python3 python3
need openssl openssl
[[ $server == busybox ]] && need busybox busybox

cd "$root"
echo "building (release)…"
cargo build --release --quiet
test_bin=$(release_test_binary fetch)

work=$(mktemp -d)
server_pid=
cleanup() {
    # `wait` on the killed server returns non-zero: under `set -e` that
    # would end the trap before the 1 GiB work directory is removed.
    if [[ -n $server_pid ]]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

mkdir "$work/serve"
file="$work/serve/big"
size=$((mib * 1024 * 1024))
echo "creating $mib MiB of random bytes…"
head -c "$size" /dev/urandom >"$file"

# OpenSSL's sha256 uses the SHA extensions where the CPU has them
# (coreutils' sha256sum may not, and be several times slower).
start=$(date +%s%N)
sha=$(openssl dgst -sha256 -r "$file")
sha=${sha%% *}
hash_seconds=$(awk -v ns=$(($(date +%s%N) - start)) 'BEGIN { print ns / 1e9 }')

if [[ $server == python ]]; then
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
    server_name="python3 -m http.server"
else
    # busybox httpd cannot report a port it picked: take one the kernel
    # says is free (another process could take it first; then retry).
    for _ in 1 2 3 4 5; do
        port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        busybox httpd -f -p "127.0.0.1:$port" -h "$work/serve" >"$work/server.log" 2>&1 &
        server_pid=$!
        sleep 0.2
        kill -0 "$server_pid" 2>/dev/null && break
        server_pid=
    done
    [[ -n $server_pid ]] || { cat "$work/server.log" >&2; echo "busybox httpd did not start" >&2; exit 1; }
    server_name="busybox httpd"
fi
url="http://127.0.0.1:$port/big"
for _ in $(seq 50); do
    curl -sf -r 0-0 -o /dev/null "$url" && break
    sleep 0.1
done

# CPU time (in clock ticks) all CPUs spent busy since boot.
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
ticks_per_second=$(getconf CLK_TCK)

# timed LABEL COMMAND…: run it, append "seconds kib other" to $work/LABEL,
# where other is the CPU time the machine spent on anything but COMMAND
# meanwhile: the server, the kernel's network and writeback work, and
# whatever else runs (on a busy machine the figures are not comparable).
timed() {
    local label=$1; shift
    local before
    before=$(busy_ticks)
    /usr/bin/time -f '%e %M %U %S' -o "$work/time" "$@" >/dev/null 2>"$work/stderr" || {
        echo "FAILED: $*" >&2; cat "$work/stderr" >&2; exit 1
    }
    awk -v busy=$(($(busy_ticks) - before)) -v hz="$ticks_per_second" \
        '{ printf "%s %s %.2f\n", $1, $2, busy / hz - $3 - $4 }' "$work/time" >>"$work/$label"
}

# Every peer writes to its own path; all are deleted before each command.
dest="$work/fetched" curl_out="$work/curl-out"
fresh() {
    rm -f "$dest" "$curl_out"
    sync
}
check_size() { # check_size LABEL PATH
    [[ $(stat -c %s "$2") -eq $size ]] || { echo "$1: wrong size" >&2; exit 1; }
}

run() { # run PEER LABEL
    fresh
    case $1 in
        kiln)
            timed "$2" env KILN_BENCH_URL="$url" KILN_BENCH_SHA256="$sha" KILN_BENCH_DEST="$dest" \
                "$test_bin" --ignored --exact bench_fetch_one_file --quiet
            check_size kiln "$dest"
            ;;
        file)
            timed "$2" curl -sf -o "$curl_out" "$url"
            check_size "curl -o FILE" "$curl_out"
            ;;
        null)
            timed "$2" curl -sf -o /dev/null "$url"
            ;;
        sha)
            timed "$2" sh -c '
                curl -sf -o "$1" "$2" &&
                    digest=$(openssl dgst -sha256 -r "$1") &&
                    [ "${digest%% *}" = "$3" ]' sh "$curl_out" "$url" "$sha"
            check_size "curl + sha256" "$curl_out"
            ;;
    esac
}

peers=(kiln file null sha)
echo "warming up…"
for peer in "${peers[@]}"; do
    run "$peer" warmup
done

echo "timing $runs runs, $server_name…"
for ((i = 0; i < runs; i++)); do
    for ((j = 0; j < ${#peers[@]}; j++)); do
        peer=${peers[(i + j) % ${#peers[@]}]}
        run "$peer" "$peer"
    done
done
fresh

# median of column N (default 1), max of column 2
median() { sort -n -k"${2:-1}" "$1" | awk -v c="${2:-1}" '{a[NR]=$c} END {print a[int((NR+1)/2)]}'; }
max_kib() { sort -n -k2 "$1" | tail -1 | awk '{print $2}'; }
# kiln's ratio to curl -o FILE in each run, in run order
per_run=$(paste -d' ' "$work/file" "$work/kiln" | awk '{
    k = $4 > 0 ? $4 : 0.01; printf "%s%.2f", (NR > 1 ? " " : ""), $1 / k }')

awk -v mib="$mib" -v runs="$runs" -v server="$server_name" -v h="$hash_seconds" \
    -v k="$(median "$work/kiln")" -v a="$(median "$work/file")" \
    -v b="$(median "$work/null")" -v c="$(median "$work/sha")" \
    -v kib="$(max_kib "$work/kiln")" -v per_run="$per_run" \
    -v other="$(for peer in kiln file null sha; do median "$work/$peer" 3; done | sort -n | tail -1)" 'BEGIN {
    if (k <= 0) k = 0.01
    printf "%d MiB over loopback from %s; medians of %d runs\n", mib, server, runs
    printf "                                     MiB/s  seconds  kiln ratio\n"
    printf "kiln fetch (sha256 checked, written, fsynced)\n"
    printf "                                  %8.0f %8.2f\n", mib / k, k
    row("(a) curl -o FILE", a)
    row("(b) curl -o /dev/null", b)
    row("(c) curl -o FILE, then sha256", c)
    printf "headline: kiln / (a) = %.2f (target >= 0.8); per run: %s\n", a / k, per_run
    printf "kiln peak RSS: %.1f MiB (target < 64)\n", kib / 1024
    printf "context: sha256 alone over the same bytes (OpenSSL, page cache): %.0f MiB/s\n", mib / h
    printf "CPU time used by others during a timed command (server, kernel, the rest), median, worst peer: %.2f s\n", other
    if (other > 0.1 + 0.5 * mib / 1024)
        printf "warning: other processes were busy; the figures are not reliable\n"
}
function row(name, s) {
    if (s <= 0) s = 0.01
    printf "%-33s %8.0f %8.2f %8.2f\n", name, mib / s, s, s / k
}'
