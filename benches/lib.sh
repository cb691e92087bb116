# Shared by the benchmark scripts: `source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"`.

apt_updated=
# need COMMAND PACKAGE: install PACKAGE unless COMMAND is there.
need() {
    command -v "$1" >/dev/null 2>&1 && return
    [[ -n $apt_updated ]] || { apt-get update -qq >/dev/null; apt_updated=1; }
    apt-get install -y -qq "$2" >/dev/null
}

# release_test_binary NAME: build tests/NAME.rs in release and print the
# test binary's path, from cargo's own report of what it built.
release_test_binary() {
    local path
    path=$(cargo test --release --test "$1" --no-run --message-format=json 2>/dev/null |
        python3 -c '
import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("reason") == "compiler-artifact" and message["target"]["name"] == sys.argv[1] \
            and message.get("executable"):
        print(message["executable"])
' "$1")
    [[ -x $path ]] || { echo "cannot find the $1 test binary" >&2; return 1; }
    echo "$path"
}
