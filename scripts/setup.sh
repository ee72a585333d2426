#!/usr/bin/env bash
# One-shot set-up on a fresh machine: system libraries, a virtualenv in .venv,
# CPU torch, and this package with its rendering, sparse-conv and dev extras.
# Idempotent: a second run only checks what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for lib in libOSMesa.so.8 libusb-1.0.so.0 libgomp.so.1; do
  ldconfig -p | grep -q "$lib" || need_apt+=("$lib")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "[setup] installing system libraries (${need_apt[*]})"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq libosmesa6 libusb-1.0-0 libgomp1 >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
stamp=.venv/.concerto-installed
want=$(sha1sum pyproject.toml scripts/setup.sh | sha1sum | cut -c1-40)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "[setup] environment up to date"
  exit 0
fi
$VPY -m pip install -q --upgrade pip
# A CPU build of torch: on this machine kind it lies on disk; elsewhere pip takes
# it from the CPU index if one is configured, else the default wheel.
$VPY -m pip install -q "torch==2.13.0" || $VPY -m pip install -q "torch>=2.3"
$VPY -m pip install -q -e ".[render,spconv,dev]"
# pyrender pins PyOpenGL 3.1.0, which cannot create an OSMesa context.
$VPY -m pip install -q "PyOpenGL==3.1.10"
echo "$want" > "$stamp"
echo "[setup] done"
