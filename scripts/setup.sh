#!/usr/bin/env bash
# Idempotent set-up: system libraries (Debian), a virtual environment in .venv,
# CPU torch 2.13.0 and this package in editable mode with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
for pkg in libegl1 libgl1 libosmesa6 libgl1-mesa-dri libusb-1.0-0 libgomp1; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "setup: installing system libraries: ${need_pkgs[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python

if ! "$VPY" -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null; then
  # The CPU wheel: an unpinned torch would pull several GB of CUDA packages.
  "$VPY" -m pip install -q --disable-pip-version-check "torch==2.13.0"
fi
stamp=.venv/.mbrl-installed
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
  "$VPY" -m pip install -q --disable-pip-version-check -e ".[test]"
  touch "$stamp"
fi
