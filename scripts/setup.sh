#!/usr/bin/env bash
# Install what building and testing kiln needs on a fresh Debian 12 machine.
# Safe to run again: it only installs what is missing.
set -euo pipefail

need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v git >/dev/null || need_apt+=(git)
# Nix itself, to cross-check store-path base32 and NAR hashes in tests.
command -v nix-store >/dev/null || need_apt+=(nix-bin)
# Building LXC templates: mmdebstrap bootstraps Debian; dpkg-deb reads
# package control fields. Testing them: lxc boots the template; GNU tar and
# zstd read it back independently.
command -v mmdebstrap >/dev/null || need_apt+=(mmdebstrap)
command -v dpkg-deb >/dev/null || need_apt+=(dpkg)
command -v lxc-start >/dev/null || need_apt+=(lxc)
command -v zstd >/dev/null || need_apt+=(zstd)
if ((${#need_apt[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install: ${need_apt[*]}" >&2
    exit 1
  fi
  echo "setup: apt-get install ${need_apt[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}"
fi

# A real OCI registry (Debian's docker-registry), skopeo and a token server's
# dependencies, for the lock tests that resolve tags on loopback.
"$(dirname "$0")/setup-oci.sh"

if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install Rust (https://rustup.rs) first" >&2
  exit 1
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest from crates.io"
  cargo install --locked cargo-nextest
fi
