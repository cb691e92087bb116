#!/usr/bin/env bash
# Install what the OCI resolver integration tests (tests/oci.rs) need on Debian 12:
#   docker-registry   a real distribution 2.8 registry, served on loopback by the tests
#   skopeo            pushes the generated OCI layout into it without a container daemon
#   python3 + python3-cryptography   run the fixture image generator and token server
#   openssl           makes the throwaway token-signing certificate
# Safe to run again: it only installs packages that are not installed yet. Run as root.
set -euo pipefail

packages=(docker-registry skopeo python3 python3-cryptography openssl)

missing=()
for p in "${packages[@]}"; do
  # dpkg-query, not `command -v`: python3-cryptography is a library, and a python3
  # from elsewhere on PATH (pyenv, venv) says nothing about the Debian package.
  if [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" != "installed" ]; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "setup-oci: need root to install: ${missing[*]}" >&2
  exit 1
fi

echo "setup-oci: apt-get install ${missing[*]}"
apt-get update -qq
# The tests run their own registries on loopback ports; the package's
# system-wide registry (started by systemd where systemd runs) is not used.
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
