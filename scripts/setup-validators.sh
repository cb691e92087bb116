#!/usr/bin/env bash
# Validators the stack render tests run on the bundles: kubernetes-validate
# (PyPI), which checks every core Kubernetes document against the strict
# schemas it bundles. Installed into a venv under ${KILN_TOOLS:-/opt/kiln-tools};
# tests/render_k8s.rs looks for it there (or on PATH).
# Safe to run again: quick when already installed.
set -euo pipefail

tools=${KILN_TOOLS:-/opt/kiln-tools}
version=1.37.0
venv="$tools/kubernetes-validate"

if "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$version"; then
  exit 0
fi

if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup-validators: need root to install python3-venv" >&2
    exit 1
  fi
  echo "setup-validators: apt-get install python3-venv"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
fi

echo "setup-validators: installing kubernetes-validate $version into $venv"
mkdir -p "$tools"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$version"
"$venv/bin/kubernetes-validate" --version
