#!/usr/bin/env bash
# The main job: set up, make a 30 s clip (picture and sound) with ffmpeg's lavfi sources, and encode it
# with montage-ray on an embedded local Ray. Prints where the result is.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p demo-output
src=demo-output/demo-source.mp4
dst=demo-output/demo-h264.mp4
ffmpeg -hide_banner -v error -y \
  -f lavfi -i "testsrc2=size=1280x720:rate=30:duration=30" \
  -f lavfi -i "sine=frequency=440:beep_factor=4:sample_rate=48000:duration=30" \
  -c:v libx264 -preset veryfast -g 60 -c:a aac -b:a 128k "$src"
.venv/bin/montage-ray encode "$src" "$dst" --codec h264 --quality 23 --preset veryfast \
  --segment-seconds 10 --overwrite --report demo-output/report.json
echo "demo: source  $(realpath "$src")"
echo "demo: result  $(realpath "$dst")"
echo "demo: report  $(realpath demo-output/report.json)"
