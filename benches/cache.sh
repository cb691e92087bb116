#!/usr/bin/env bash
# Benchmark the binary cache: push and pull of a 1 GiB image through an S3
# server, as a ratio to the AWS CLI (`aws s3 cp`) against the same server in
# the same run.
#
#   benches/cache.sh [--size MiB] [--runs N]
#
# The server is moto (PyPI; scripts/setup-validators.sh installs it) on a
# loopback port; the AWS CLI v1 is installed from PyPI into
# ${KILN_TOOLS:-/opt/kiln-tools}/awscli on first use. The image is a
# deterministic file shaped like a disk image: 3/8 pseudo-random
# (incompressible: packages, binaries), 3/8 text (logs, configs), 1/4 zeros
# (free space). kiln stores it the way it stores any image: `kiln build
# image:bench#packages` on a `[image.base.url]` pinned by `kiln lock`.
#
#   push: `kiln cache push` (NAR, zstd level 3, sha256 of both, multipart
#         upload, signed record) vs `aws s3 cp FILE s3://…` (raw upload)
#   pull: `kiln cache pull` into an empty store (download, hash, unpack,
#         verify, register) vs `aws s3 cp s3://… FILE` (raw download)
#
# Each figure is the best of N runs (default 2), each into a fresh prefix
# or store. Wall time, including process start.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "$0")/.."
repo_root=$PWD

size_mib=1024 runs=2
while [[ $# -gt 0 ]]; do
    case $1 in
        --size) size_mib=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "cache.sh: unknown argument \`$1\` (try --help)" >&2; exit 2 ;;
    esac
done

tools=${KILN_TOOLS:-/opt/kiln-tools}
awscli_version=1.46.3
if [ "$("$tools/awscli/bin/aws" --version 2>&1 | sed -n 's|^aws-cli/\([^ ]*\).*|\1|p')" != "$awscli_version" ]; then
    echo "cache.sh: installing awscli $awscli_version into $tools/awscli"
    python3 -m venv "$tools/awscli"
    "$tools/awscli/bin/pip" install --quiet --disable-pip-version-check "awscli==$awscli_version"
fi
aws=$tools/awscli/bin/aws
moto=$tools/moto/bin/moto_server
[ -x "$moto" ] || ./scripts/setup-validators.sh

if [ -z "${KILN:-}" ]; then
    cargo build --quiet --release --bin kiln
    KILN=$(realpath "${CARGO_TARGET_DIR:-target}/release/kiln")
fi

work=$(mktemp -d "${TMPDIR:-/var/tmp}/kiln-bench-cache.XXXXXX")
moto_pid=
cleanup() {
    [ -n "$moto_pid" ] && kill "$moto_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$moto" -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
moto_pid=$!
export AWS_ENDPOINT_URL="http://127.0.0.1:$port" AWS_ACCESS_KEY_ID=bench \
    AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
for _ in $(seq 100); do
    curl -fsS -o /dev/null "$AWS_ENDPOINT_URL/" 2>/dev/null && break
    sleep 0.2
done

# The image: deterministic, in 8 MiB blocks of three kinds.
image=$work/image.raw
block=$((8 * 1024 * 1024))
blocks=$((size_mib / 8))
python3 - "$image" "$blocks" "$block" <<'EOF'
import hashlib, sys
path, blocks, block = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
text = b"".join(b"Nov 22 12:%02d:%02d kiln-host systemd[1]: Started unit-%d.service - Unit %d.\n" % (i % 60, i % 60, i, i * 7) for i in range(block // 64))
with open(path, "wb") as f:
    for i in range(blocks):
        kind = i % 8
        if kind in (0, 3, 6):          # 3/8 incompressible
            seed = hashlib.sha256(b"kiln-bench-%d" % i).digest()
            out = bytearray()
            counter = 0
            while len(out) < block:
                out += hashlib.blake2b(seed + counter.to_bytes(8, "little"), digest_size=64).digest()
                counter += 1
            f.write(bytes(out[:block]))
        elif kind in (1, 4, 7):        # 3/8 text
            f.write(text[:block].ljust(block, b"\n"))
        else:                          # 1/4 zeros
            f.write(bytes(block))
EOF
bytes=$(stat -c %s "$image")

# Into a store, as an image's pinned file.
mkdir -p "$work/repo/images"
printf '[image]\nformats = ["lxc"]\nversion = "1.0"\n\n[image.base.url]\nurl = "file://%s"\n' "$image" \
    >"$work/repo/images/bench.toml"
(cd "$work/repo" && "$KILN" lock >/dev/null 2>&1)
path=$(cd "$work/repo" && "$KILN" --store "$work/store" build 'image:bench#packages' --no-link 2>/dev/null)
name=$(basename "$path")
"$KILN" cache keygen bench-1 --secret-key-file "$work/key.sec" >"$work/key.pub" 2>/dev/null
export KILN_CACHE_SECRET_KEY_FILE=$work/key.sec
"$aws" s3 mb s3://kiln >/dev/null
"$aws" s3 mb s3://peer >/dev/null

now() { date +%s.%N; }
best() { printf '%s\n' "$@" | sort -g | head -1; }
push=() pull=() up=() down=()
for run in $(seq "$runs"); do
    t=$(now); "$KILN" --store "$work/store" cache push --to "s3://kiln/run$run" "$path" >/dev/null 2>&1
    push+=("$(echo "$(now) - $t" | bc)")
    t=$(now); "$aws" s3 cp --quiet "$image" "s3://peer/run$run/image.raw"
    up+=("$(echo "$(now) - $t" | bc)")
    t=$(now); "$KILN" --store "$work/pulled$run" cache pull --from "s3://kiln/run$run" \
        --trusted-key "$(cat "$work/key.pub")" "$name" >/dev/null 2>&1
    pull+=("$(echo "$(now) - $t" | bc)")
    t=$(now); "$aws" s3 cp --quiet "s3://peer/run$run/image.raw" "$work/down.raw"
    down+=("$(echo "$(now) - $t" | bc)")
    cmp -s "$image" "$work/down.raw" || { echo "cache.sh: aws s3 cp down: bytes differ" >&2; exit 1; }
    rm -f "$work/down.raw"
    "$KILN" --store "$work/pulled$run" store verify >/dev/null 2>&1
    pulled="$work/pulled$run/$name"; [ -d "$pulled" ] && pulled="$pulled/image.raw"
    cmp -s "$image" "$pulled" || { echo "cache.sh: kiln pull: bytes differ" >&2; exit 1; }
    chmod -R u+w "$work/pulled$run" && rm -rf "$work/pulled$run"
done
archive=$("$aws" s3 ls --recursive s3://kiln/run1/nar/ | awk '{print $3}')

mib() { echo "scale=1; $1 / 1048576" | bc; }
rate() { echo "scale=1; $bytes / 1048576 / $1" | bc; }
bp=$(best "${push[@]}") bu=$(best "${up[@]}") bl=$(best "${pull[@]}") bd=$(best "${down[@]}")
echo "machine: $(nproc) cores, $(uname -r); $("$KILN" --version); $("$aws" --version 2>&1 | cut -d' ' -f1,4); moto $("$tools/moto/bin/python" -c 'import moto; print(moto.__version__)')"
echo "image: $(mib "$bytes") MiB (3/8 random, 3/8 text, 1/4 zeros); kiln archive $(mib "$archive") MiB (zstd -3, ratio $(echo "scale=2; $bytes / $archive" | bc)); best of $runs"
printf 'push: kiln cache push %.2f s (%s MiB/s of image); aws s3 cp up %.2f s (%s MiB/s); time ratio kiln/aws = %.2f (below 1: kiln is faster)\n' \
    "$bp" "$(rate "$bp")" "$bu" "$(rate "$bu")" "$(echo "$bp / $bu" | bc -l)"
printf 'pull: kiln cache pull %.2f s (%s MiB/s of image); aws s3 cp down %.2f s (%s MiB/s); time ratio kiln/aws = %.2f (below 1: kiln is faster)\n' \
    "$bl" "$(rate "$bl")" "$bd" "$(rate "$bd")" "$(echo "$bl / $bd" | bc -l)"
