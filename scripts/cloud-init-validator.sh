#!/usr/bin/env bash
# Run Debian 12's cloud-init (22.4.2) from its package, without installing
# it: installing cloud-init would enable its boot services on this machine.
#
#   scripts/cloud-init-validator.sh schema --config-file user-data
#   scripts/cloud-init-validator.sh devel net-convert -p network-config -k yaml \
#       -d OUT -D debian -O eni
#   scripts/cloud-init-validator.sh            # prepare, print the command line
#
# The first run downloads the package (`apt-get download cloud-init`),
# checks that it is 22.4.2, unpacks it (`dpkg-deb -x`) into the cache, and
# apt-installs the Python modules `cloud-init schema` and `net-convert`
# import and this machine lacks: python3-yaml, python3-requests,
# python3-jsonschema, python3-configobj, python3-jsonpatch. (Without
# jsonschema, `cloud-init schema` skips validation and reports success, so
# this script insists on it.) Later runs use the cache.
#
# Cache: $KILN_CLOUD_INIT_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/kiln/cloud-init.
# Installing needs root (or sudo without a password). Exit status: that of
# cloud-init; 69 when the package cannot be downloaded; 1 on other problems.
set -euo pipefail

want_version=22.4.2
python=/usr/bin/python3
modules=(yaml requests jsonschema configobj jsonpatch)
packages=(python3-yaml python3-requests python3-jsonschema python3-configobj python3-jsonpatch)

say() { printf 'cloud-init-validator: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

cache=${KILN_CLOUD_INIT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln/cloud-init}
root=$cache/cloud-init-$want_version

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
        sudo -n "$@"
    else
        die "need root to run: $*"
    fi
}

missing_modules() {
    local i
    for i in "${!modules[@]}"; do
        "$python" -c "import ${modules[$i]}" 2>/dev/null || printf '%s\n' "${packages[$i]}"
    done
}

prepare() {
    [ -x "$python" ] || die "$python is missing: apt-get install python3"
    local missing
    missing=$(missing_modules)
    if [ -n "$missing" ]; then
        say "installing $(echo $missing)"
        # shellcheck disable=SC2086 # one package a word
        if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >&2; then
            as_root apt-get update -q >&2
            # shellcheck disable=SC2086
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing >&2
        fi
        missing=$(missing_modules)
        [ -z "$missing" ] || die "still missing after installing: $(echo $missing)"
    fi
    [ -f "$root/.complete" ] && return 0

    local download
    download=$(mktemp -d "$cache/download.XXXXXX")
    # shellcheck disable=SC2064 # expand now: the path is fixed
    trap "rm -rf '$download'" EXIT
    # _apt cannot write into a private temporary directory; download as the caller.
    if ! (cd "$download" && apt-get download -q -o APT::Sandbox::User="$(id -un)" cloud-init >&2); then
        say "apt-get download cloud-init failed; refreshing the package lists"
        as_root apt-get update -q >&2 || true
        if ! (cd "$download" && apt-get download -q -o APT::Sandbox::User="$(id -un)" cloud-init >&2); then
            say "cannot download the cloud-init package (is the Debian mirror reachable?)"
            exit 69
        fi
    fi
    local deb version
    deb=$(ls "$download"/cloud-init_*.deb)
    version=$(dpkg-deb -f "$deb" Version)
    case $version in
        "$want_version"-*) ;;
        *) die "apt offers cloud-init $version, not Debian 12's $want_version (is this Debian 12?)" ;;
    esac
    dpkg-deb -x "$deb" "$download/root"
    printf '%s\n' "$version" > "$download/root/.complete"
    rm -rf "$root"
    mv "$download/root" "$root"
    rm -rf "$download"
    trap - EXIT
}

mkdir -p "$cache"
# Tests run this in parallel: one prepares, the others wait.
exec 9>"$cache/.lock"
flock 9
prepare
flock -u 9
exec 9>&-

export PYTHONPATH=$root/usr/lib/python3/dist-packages
if [ $# -eq 0 ]; then
    printf 'PYTHONPATH=%q %q -m cloudinit.cmd.main\n' "$PYTHONPATH" "$python"
    exit 0
fi
exec "$python" -m cloudinit.cmd.main "$@"
