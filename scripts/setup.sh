#!/usr/bin/env bash
# Install what montage-ray needs on a Debian/Ubuntu machine: ffmpeg (with ffprobe), a venv, the package.
# Idempotent: a second run installs nothing new.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
# --test: also what the test suite needs beyond Python (Chromium plays joined files to the end).
with_tests=0
[ "${1:-}" = "--test" ] && with_tests=1
need=()
command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1 || need+=(ffmpeg)
if [ "$with_tests" = 1 ]; then command -v chromium >/dev/null 2>&1 || need+=(chromium); fi
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ "${#need[@]}" -gt 0 ]; then
  if [ -n "$SUDO" ] && ! sudo -n apt-get --version >/dev/null 2>&1; then
    echo "setup: ${need[*]} must be installed and $(id -un) has no passwordless sudo: install them first" \
         "(sudo apt-get install ${need[*]}), or run setup as root" >&2
    exit 1
  fi
  echo "setup: installing ${need[*]} with apt-get" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "setup: montage-ray needs Python 3.11 or newer (found $(python3 --version))" >&2; exit 1; }
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
if [ "$with_tests" = 1 ]; then  # the static ffmpeg builds the version tests run (tests/test_versions.py)
  bash scripts/ffmpeg-builds.sh >/dev/null || echo "setup: static ffmpeg builds not fetched: the ffmpeg version tests will fail" >&2
fi
echo "setup: ready ($(.venv/bin/python -c 'import ray; print("ray", ray.__version__)'), $(ffmpeg -version | head -1 | cut -d' ' -f1-3))" >&2
