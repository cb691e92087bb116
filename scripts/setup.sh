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
# Building VM images: the seed ISO (xorriso), the disk (sfdisk from fdisk,
# mkfs.vfat, mtools, mke2fs/debugfs, qemu-img). Testing them: QEMU boots
# the disk under OVMF.
command -v xorriso >/dev/null || need_apt+=(xorriso)
# isoinfo (genisoimage), an independent reader of the seed ISO in tests.
command -v isoinfo >/dev/null || need_apt+=(genisoimage)
command -v sfdisk >/dev/null || need_apt+=(fdisk)
command -v mkfs.vfat >/dev/null || need_apt+=(dosfstools)
command -v mcopy >/dev/null || need_apt+=(mtools)
command -v debugfs >/dev/null || need_apt+=(e2fsprogs)
# Compose v1 (docker-compose 1.29), what a Debian 12 Docker host runs:
# the tests check every compose bundle with `docker-compose config`.
command -v docker-compose >/dev/null || need_apt+=(docker-compose)
[ -e /usr/share/OVMF/OVMF_CODE_4M.fd ] || need_apt+=(ovmf)
if ! command -v qemu-system-x86_64 >/dev/null; then
  need_apt+=(qemu-system-x86)
  # A qemu-utils newer than bookworm's (from backports) declares Breaks on
  # bookworm's qemu-system-common: take both from bookworm.
  if dpkg-query -W -f '${Version}' qemu-utils 2>/dev/null | grep -q bpo; then
    need_qemu_downgrade=1
  fi
fi
command -v qemu-img >/dev/null || need_apt+=(qemu-utils)
if ((${#need_apt[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: need root to install: ${need_apt[*]}" >&2
    exit 1
  fi
  echo "setup: apt-get install ${need_apt[*]}"
  apt-get update -qq
  if [ -n "${need_qemu_downgrade:-}" ]; then
    version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
    need_apt+=("qemu-utils=$version")
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --allow-downgrades "${need_apt[@]}"
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

# kubernetes-validate (PyPI, in a venv), for the Kubernetes bundle tests.
"$(dirname "$0")/setup-validators.sh"
