#!/usr/bin/env bash
# Benchmark `kiln check` on a synthetic fleet (default: 1,000 hosts, each
# importing 20 of 200 modules), pinned to one core.
#
#   benches/check_fleet.sh [--hosts N] [--modules M] [--imports K] [--seed S] [--runs R]
#
# Target (the issue): under 1 s wall time and under 200 MiB peak RSS on ONE
# core for 1,000 hosts x 20 modules. The script reports the figures; it fails
# (exit 1) only when kiln itself fails (non-zero exit), not when a target is
# missed.
#
# Wall time is taken from a nanosecond clock around each run (GNU time's %e
# has 10 ms resolution; it is printed alongside). Peak RSS is GNU time's %M.
# For reference it also times `cat` of every TOML file the same way: the I/O
# floor of reading the repo.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$script_dir/.." && pwd)

hosts=1000 modules=200 imports=20 seed=1 runs=5
while [[ $# -gt 0 ]]; do
    case $1 in
        --hosts) hosts=$2; shift 2 ;;
        --modules) modules=$2; shift 2 ;;
        --imports) imports=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        --hosts=*) hosts=${1#*=}; shift ;;
        --modules=*) modules=${1#*=}; shift ;;
        --imports=*) imports=${1#*=}; shift ;;
        --seed=*) seed=${1#*=}; shift ;;
        --runs=*) runs=${1#*=}; shift ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "check_fleet.sh: unknown argument \`$1\` (try --help)" >&2; exit 2 ;;
    esac
done
for v in hosts modules imports seed runs; do
    [[ ${!v} =~ ^[0-9]+$ ]] || { echo "check_fleet.sh: --$v needs a number, got \`${!v}\`" >&2; exit 2; }
done
(( runs >= 1 )) || { echo "check_fleet.sh: --runs must be at least 1" >&2; exit 2; }

# ── tools ───────────────────────────────────────────────────────────────────
if [[ ! -x /usr/bin/time ]]; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get > /dev/null; then
        echo "installing GNU time (/usr/bin/time is missing)" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y time > /dev/null \
            || { apt-get update > /dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y time > /dev/null; }
    else
        echo "check_fleet.sh: /usr/bin/time is missing; install GNU time (apt-get install -y time)" >&2
        exit 1
    fi
fi
command -v taskset > /dev/null || { echo "check_fleet.sh: taskset is missing (util-linux)" >&2; exit 1; }
command -v python3 > /dev/null || { echo "check_fleet.sh: python3 is missing" >&2; exit 1; }

# ── build ───────────────────────────────────────────────────────────────────
echo "building kiln (cargo build --release)..." >&2
(cd "$root" && cargo build --release --quiet)
target_dir=$(cd "$root" && cargo metadata --format-version 1 --no-deps 2> /dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2> /dev/null) \
    || target_dir=$root/target
kiln=$target_dir/release/kiln
[[ -x $kiln ]] || { echo "check_fleet.sh: no binary at $kiln after the build" >&2; exit 1; }

# ── fleet ───────────────────────────────────────────────────────────────────
work=$(mktemp -d "${TMPDIR:-/tmp}/kiln-fleet.XXXXXX")
trap 'rm -rf "$work"' EXIT
fleet=$work/repo
python3 "$script_dir/gen_fleet.py" "$fleet" --hosts "$hosts" --modules "$modules" --imports "$imports" --seed "$seed" > "$work/gen.txt"

toml_files=$(find "$fleet" -name '*.toml' | wc -l)
toml_bytes=$(find "$fleet" -name '*.toml' -exec cat {} + | wc -c)
echo "kiln:  $kiln ($("$kiln" --version))"
echo "cpu:   $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//') (pinned to core 0)"
echo "fleet: $hosts hosts, $modules modules, $imports imports/host, seed $seed"
echo "       $toml_files TOML files, $toml_bytes bytes ($(awk -v b="$toml_bytes" 'BEGIN { printf "%.1f", b / 1048576 }') MiB)"
echo "       generator: $(cat "$work/gen.txt")"

# ── measurement ─────────────────────────────────────────────────────────────
# measure LABEL CMD...: one warm-up, then $runs timed runs on core 0.
# Sets the arrays `walls` (seconds) and `rss_kib`; exits 1 if CMD fails.
measure() {
    local label=$1; shift
    walls=() rss_kib=()
    local i start end rc elapsed maxrss
    for (( i = 0; i <= runs; i++ )); do
        start=$(date +%s%N)
        rc=0
        taskset -c 0 /usr/bin/time -f '%e %M' -o "$work/time.txt" "$@" > "$work/out.txt" 2> "$work/err.txt" || rc=$?
        end=$(date +%s%N)
        if (( rc != 0 )); then
            echo "FAIL: $label exited with status $rc (run $i$( (( i == 0 )) && echo ', warm-up'))" >&2
            echo "--- stdout ---" >&2; cat "$work/out.txt" >&2
            echo "--- stderr ---" >&2; cat "$work/err.txt" >&2
            exit 1
        fi
        # GNU time writes "Command exited with non-zero status" lines first
        # on failure; the figures are on the last line.
        read -r elapsed maxrss < <(tail -n 1 "$work/time.txt")
        if (( i == 0 )); then
            printf '  %-10s warm-up: %.3f s, max RSS %.1f MiB\n' "$label" \
                "$(awk -v a="$start" -v b="$end" 'BEGIN { print (b - a) / 1e9 }')" \
                "$(awk -v k="$maxrss" 'BEGIN { print k / 1024 }')"
            continue
        fi
        walls+=("$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.6f", (b - a) / 1e9 }')")
        rss_kib+=("$maxrss")
        printf '  %-10s run %d:   %.3f s (time %%e: %s s), max RSS %.1f MiB\n' "$label" "$i" \
            "${walls[-1]}" "$elapsed" "$(awk -v k="$maxrss" 'BEGIN { print k / 1024 }')"
    done
}

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
max() { printf '%s\n' "$@" | sort -g | tail -n 1; }

echo
echo "kiln --repo FLEET check  (taskset -c 0, 1 warm-up + $runs runs)"
measure "kiln" "$kiln" --repo "$fleet" --color never check
kiln_out=$(cat "$work/out.txt")
echo "  kiln says: $kiln_out"
kiln_median=$(median "${walls[@]}")
kiln_rss=$(max "${rss_kib[@]}")

echo
echo "reference: cat of every TOML file  (same pinning and runs)"
measure "cat" sh -c 'find "$1" -name "*.toml" -exec cat {} + > /dev/null' sh "$fleet"
cat_median=$(median "${walls[@]}")
cat_rss=$(max "${rss_kib[@]}")

echo
printf 'cat *.toml (I/O floor): median %.3f s, max RSS %.1f MiB\n' "$cat_median" "$(awk -v k="$cat_rss" 'BEGIN { print k / 1024 }')"
printf 'kiln check: %d hosts x %d modules: median %.3f s, max RSS %.1f MiB (target < 1 s, < 200 MiB)\n' \
    "$hosts" "$imports" "$kiln_median" "$(awk -v k="$kiln_rss" 'BEGIN { print k / 1024 }')"
awk -v t="$kiln_median" -v k="$kiln_rss" 'BEGIN {
    m = ""
    if (t >= 1) m = m ", wall time over 1 s"
    if (k / 1024 >= 200) m = m ", RSS over 200 MiB"
    print (m == "" ? "verdict: within target" : "verdict: MISSES TARGET" m)
}'
