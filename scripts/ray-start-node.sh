#!/usr/bin/env bash
# Start a Ray node that offers exactly what this machine's probe found.
#
#   scripts/ray-start-node.sh --head [--dashboard-host HOST] [-- RAY_START_ARGS...]
#   scripts/ray-start-node.sh --address HEAD:6379 [-- RAY_START_ARGS...]
#
# It runs `montage-ray probe --ray-resources --node-label` (a real test encode per backend, a few seconds
# at most), then `ray start` with
#   --resources '{"vaapi": 1, "qsv": 1}'         one resource per working hardware backend, as many units
#                                               as concurrent sessions (MONTAGE_<NAME>_SESSIONS overrides)
#   --labels montage.ai/encoder=vaapi-qsv        the backends, or "cpu"; plus montage.ai/remote=true when
#                                               MONTAGE_RAY_REMOTE=1 (a node reached over a slow link)
# The head's dashboard binds to 127.0.0.1 unless --dashboard-host (or MONTAGE_DASHBOARD_HOST) says
# otherwise: it has no authentication of its own. Arguments after `--` go to `ray start` unchanged.
#
# `ray start` returns once the node is up; as a container's or service's main process (parent PID 1, e.g.
# under tini or systemd) the script passes --block so the node lives as long as the process. Set
# MONTAGE_RAY_BLOCK=1 or 0 to decide yourself. MONTAGE_FFMPEG picks the ffmpeg to probe.
set -euo pipefail

me="$(basename "$0")"

usage() {
  echo "usage: $me --head [--dashboard-host HOST] [-- RAY_START_ARGS...]" >&2
  echo "       $me --address HEAD:PORT [-- RAY_START_ARGS...]" >&2
  exit 2
}

mode=""
address=""
dashboard_host="${MONTAGE_DASHBOARD_HOST:-127.0.0.1}"
extra=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --head) mode="head"; shift ;;
    --address) [ "$#" -ge 2 ] || usage; mode="worker"; address="$2"; shift 2 ;;
    --address=*) mode="worker"; address="${1#--address=}"; shift ;;
    --dashboard-host) [ "$#" -ge 2 ] || usage; dashboard_host="$2"; shift 2 ;;
    --dashboard-host=*) dashboard_host="${1#--dashboard-host=}"; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,20p' "$0" | cut -c3-; exit 0 ;;
    *) echo "$me: unknown argument: $1" >&2; usage ;;
  esac
done
[ -n "$mode" ] || usage
if [ "$mode" = "worker" ] && [ -z "$address" ]; then usage; fi

# The probe: montage-ray from PATH (the venv or the image), else the package beside this script.
if command -v montage-ray >/dev/null 2>&1; then
  probe=(montage-ray probe)
else
  probe=(python3 -m montage_ray probe)
fi
if ! probed="$("${probe[@]}" --ray-resources --node-label)"; then
  echo "$me: the probe failed (see above); not starting Ray" >&2
  exit 1
fi
{ IFS= read -r resources; IFS= read -r backends; } <<<"$probed"
labels="montage.ai/encoder=${backends}"
case "${MONTAGE_RAY_REMOTE:-0}" in
  1|true|yes) labels="${labels},montage.ai/remote=true"
              # the link's speed lets routing decide whether shipping segments there pays off
              case "${MONTAGE_RAY_BANDWIDTH_MBPS:-}" in
                ''|*[!0-9.]*) ;;
                *) labels="${labels},montage.ai/bandwidth-mbps=${MONTAGE_RAY_BANDWIDTH_MBPS}" ;;
              esac ;;
esac
echo "$me: this node offers resources ${resources} with label ${labels}" >&2

cmd=(ray start)
if [ "$mode" = "head" ]; then
  cmd+=(--head --dashboard-host "$dashboard_host")
else
  cmd+=(--address "$address")
fi
cmd+=(--resources "$resources" --labels "$labels")

block="${MONTAGE_RAY_BLOCK:-}"
if [ -z "$block" ]; then
  if [ "$PPID" -eq 1 ]; then block=1; else block=0; fi
fi
if [ "$block" = "1" ]; then cmd+=(--block); fi

exec "${cmd[@]}" "${extra[@]}"
