#!/usr/bin/env bash
# Benchmark for the packer (src/archive): a root filesystem tree into a
# reproducible .tar.zst.
#
#   benches/pack.sh [--mib M] [--runs R] [--tree DIR]
#
# Packs DIR, or (by default) a generated tree of at least M MiB (default
# 1024): a quarter in the biggest files under /usr, the rest in small files
# (under 1 MiB) copied from /usr in name order, keeping their symlinks —
# the mix of a root filesystem — topped up with more big files if /usr has
# too few small ones. Then times, on the page-cached tree,
#   (a) the peer: tar --sort=name --mtime=@T --owner=0 --group=0
#       --numeric-owner -cf - . | zstd -3 -T0 > out
#   (b) kiln's pack (the ignored test `bench_pack_tree` in tests/archive.rs,
#       run from its release test binary directly, so the figures are the
#       packer's and not cargo's): level 3, one zstd worker per core, output
#       hashed and fsynced
# with /usr/bin/time (wall time, peak RSS). Prints medians of R runs after
# a warm-up:
#   peer seconds, kiln seconds, kiln/peer ratio (target <= 1.1),
#   kiln peak RSS (target < 128 MiB),
# and both compressed sizes. Exits 1 only if a run fails.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mib=1024 runs=3 tree=
while [[ $# -gt 0 ]]; do
    case $1 in
        --mib) mib=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --tree) tree=$(cd "$2" && pwd); shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

source "$root/benches/lib.sh"
need /usr/bin/time time
need python3 python3
need zstd zstd

cd "$root"
echo "building the test binary (release)…"
test_bin=$(release_test_binary archive)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [[ -z $tree ]]; then
    tree="$work/tree"
    echo "copying a tree of at least $mib MiB from /usr…"
    python3 - "$tree" "$((mib * 1024 * 1024))" <<'EOF'
import os, shutil, sys

dest, target = sys.argv[1], int(sys.argv[2])
small_limit = 1 << 20
files = []  # (path, size) of regular files under /usr, in name order
for top, dirs, names in os.walk("/usr"):
    dirs.sort()
    for name in sorted(names):
        path = os.path.join(top, name)
        if os.path.isfile(path) and not os.path.islink(path):
            files.append((path, os.path.getsize(path)))

def copy(path):
    out = os.path.join(dest, os.path.relpath(path, "/"))
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if os.path.islink(path):
        os.symlink(os.readlink(path), out)
        return 0
    shutil.copyfile(path, out)
    shutil.copymode(path, out)
    return os.path.getsize(out)

total = 0
by_size = sorted(files, key=lambda f: -f[1])
# A quarter in big files…
while by_size and total < target // 4:
    total += copy(by_size.pop(0)[0])
# …the rest in small ones, with the symlinks of the directories they are in.
copied_dirs = set()
for path, size in files:
    if total >= target:
        break
    if size < small_limit:
        total += copy(path)
        directory = os.path.dirname(path)
        if directory not in copied_dirs:
            copied_dirs.add(directory)
            for name in sorted(os.listdir(directory)):
                link = os.path.join(directory, name)
                out = os.path.join(dest, os.path.relpath(link, "/"))
                if os.path.islink(link) and not os.path.lexists(out):
                    copy(link)
# …and if /usr has too few small files, more big ones.
while by_size and total < target:
    path, size = by_size.pop(0)
    if size >= small_limit:
        total += copy(path)
if total < target:
    print(f"  /usr holds only {total / 2**20:.0f} MiB to copy", file=sys.stderr)
EOF
fi
tree_mib=$(du -sm --apparent-size "$tree" | cut -f1)
tree_files=$(find "$tree" -type f | wc -l)
echo "tree: $tree_mib MiB in $tree_files files"

# timed LABEL COMMAND…: run it, append "seconds kib" to $work/LABEL.
timed() {
    local label=$1; shift
    /usr/bin/time -f '%e %M' -o "$work/time" "$@" >/dev/null 2>"$work/stderr" || {
        echo "FAILED: $*" >&2; cat "$work/stderr" >&2; exit 1
    }
    cat "$work/time" >>"$work/$label"
}

peer_out="$work/peer.tar.zst"
kiln_out="$work/kiln.tar.zst"
peer_pack() {
    rm -f "$peer_out"
    timed peer sh -c 'tar --sort=name --mtime=@1 --owner=0 --group=0 --numeric-owner \
        -C "$1" -cf - . | zstd -q -3 -T0 >"$2"' sh "$tree" "$peer_out"
}
kiln_pack() {
    rm -f "$kiln_out"
    timed kiln env KILN_BENCH_ROOT="$tree" KILN_BENCH_OUT="$kiln_out" KILN_BENCH_EPOCH=1 \
        "$test_bin" --ignored --exact bench_pack_tree --quiet
}

echo "warming up…"
peer_pack
kiln_pack
: >"$work/peer"
: >"$work/kiln"
zstd -q -t "$kiln_out" || { echo "kiln: the output does not decompress" >&2; exit 1; }

echo "timing $runs runs each…"
for _ in $(seq "$runs"); do
    peer_pack
    kiln_pack
done

# median of column 1, max of column 2
median() { sort -n "$1" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
max_kib() { sort -n -k2 "$1" | tail -1 | awk '{print $2}'; }
peer_s=$(median "$work/peer")
kiln_s=$(median "$work/kiln")
peer_kib=$(max_kib "$work/peer")
kiln_kib=$(max_kib "$work/kiln")

awk -v mib="$tree_mib" -v p="$peer_s" -v k="$kiln_s" -v pkib="$peer_kib" -v kkib="$kiln_kib" \
    -v psize="$(stat -c %s "$peer_out")" -v ksize="$(stat -c %s "$kiln_out")" 'BEGIN {
    if (p <= 0) p = 0.01; if (k <= 0) k = 0.01
    printf "1. tar | zstd -3 -T0:       %8.2f s  (%4.0f MiB/s, peak RSS %.1f MiB)\n", p, mib / p, pkib / 1024
    printf "2. kiln pack (hashed, fsynced):\n"
    printf "                            %8.2f s  (%4.0f MiB/s)\n", k, mib / k
    printf "3. ratio kiln/peer:         %8.2f    (target <= 1.1)\n", k / p
    printf "4. kiln peak RSS:           %8.1f MiB  (target < 128)\n", kkib / 1024
    printf "   compressed: peer %.1f MiB, kiln %.1f MiB\n", psize / 2^20, ksize / 2^20
}'
