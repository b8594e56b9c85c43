#!/usr/bin/env bash
# The whole Intel Quick Sync story of this machine in one run: who you are, the render nodes and their
# kernel drivers, then `montage-ray probe --backend qsv --verbose` (devices and vendors, VA drivers, the
# oneVPL / Media SDK runtime libraries, vainfo per node and driver, each test command with ffmpeg's own
# output, the cause and the fix). Exit status 0 when QSV works, 1 when it does not.
#
#   scripts/diagnose-qsv.sh [--timeout SECONDS] [--ffmpeg PATH] [--json]
set -euo pipefail

echo "== user: $(id)"
echo "== render nodes:"
if [ -d /dev/dri ]; then
  ls -l /dev/dri
  for sys in /sys/class/drm/renderD*; do
    [ -e "$sys" ] || continue
    vendor="$(cat "$sys/device/vendor" 2>/dev/null || echo '?')"
    driver="$(basename "$(readlink "$sys/device/driver" 2>/dev/null || echo '?')")"
    echo "   $(basename "$sys"): vendor $vendor (0x8086 = Intel), kernel driver $driver"
  done
else
  echo "   no /dev/dri: no GPU with a DRM driver here (or the container was not given --device /dev/dri)"
fi
for module in i915 xe; do
  if [ -d "/sys/module/$module" ]; then echo "== kernel module $module: loaded"; fi
done
if command -v lspci >/dev/null 2>&1; then
  echo "== display controllers:"
  lspci -nn | grep -Ei 'vga|display|3d' || echo "   none listed"
fi

if command -v montage-ray >/dev/null 2>&1; then
  exec montage-ray probe --backend qsv --verbose "$@"
fi
exec python3 -m montage_ray probe --backend qsv --verbose "$@"
