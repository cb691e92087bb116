#!/usr/bin/env bash
# Python tools the tests run, each installed from PyPI into its own venv
# under ${KILN_TOOLS:-/opt/kiln-tools}:
#   - kubernetes-validate: the stack render tests check every core
#     Kubernetes document against the strict schemas it bundles
#     (tests/render_k8s.rs).
#   - moto (server): an S3-protocol server the binary-cache conformance
#     tests start on loopback (tests/cache_conformance.rs).
# The tests look for them there (or on PATH).
# Safe to run again: quick when already installed.
set -euo pipefail

tools=${KILN_TOOLS:-/opt/kiln-tools}
kubernetes_validate_version=1.37.0
moto_version=5.2.5

ensure_venv_support() {
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "setup-validators: need root to install python3-venv" >&2
      exit 1
    fi
    echo "setup-validators: apt-get install python3-venv"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
  fi
}

# install VENV_NAME REQUIREMENT: a fresh venv holding REQUIREMENT.
install() {
  local venv="$tools/$1"
  ensure_venv_support
  echo "setup-validators: installing $2 into $venv"
  mkdir -p "$tools"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$2"
}

venv="$tools/kubernetes-validate"
if ! "$venv/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$kubernetes_validate_version"; then
  install kubernetes-validate "kubernetes-validate==$kubernetes_validate_version"
  "$venv/bin/kubernetes-validate" --version
fi

venv="$tools/moto"
if [ "$("$venv/bin/python" -c 'import moto; print(moto.__version__)' 2>/dev/null)" != "$moto_version" ] \
  || [ ! -x "$venv/bin/moto_server" ]; then
  install moto "moto[server]==$moto_version"
  "$venv/bin/python" -c 'import moto; print("moto", moto.__version__)'
fi
