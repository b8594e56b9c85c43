#!/usr/bin/env bash
# Start a Ray node that offers exactly what this machine's probe found.
#
#   scripts/ray-start-node.sh --head [--dashboard-host HOST] [--insecure-no-auth] [-- RAY_START_ARGS...]
#   scripts/ray-start-node.sh --address HEAD:6379 [--insecure-no-auth] [-- RAY_START_ARGS...]
#
# Token authentication is always on (RAY_AUTH_MODE=token): without it, anyone who reaches the node's
# dashboard agent (it listens on the node address, not on 127.0.0.1) can submit a job that runs any
# command as this user. The node refuses to start unless it finds the cluster's token, in this order:
# $RAY_AUTH_TOKEN, the file $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token (make one on the head with
# `ray get-auth-token --generate`, copy it to every node). --insecure-no-auth starts without
# authentication, for a throwaway machine only; it says so on every start.
#
# It runs `montage-ray probe --ray-resources --node-label` (a real test encode per backend, a few seconds
# at most), then `ray start` with
#   --resources '{"vaapi": 1, "qsv": 1}'         one resource per working hardware backend, as many units
#                                               as concurrent sessions (MONTAGE_<NAME>_SESSIONS overrides)
#   --labels montage.ai/encoder=vaapi-qsv        the backends, or "cpu"; plus montage.ai/remote=true when
#                                               MONTAGE_RAY_REMOTE=1 (a node reached over a slow link)
# MONTAGE_RAY_STANDINS='{"nvenc": 2}' (tests and simulations only) adds resource labels served by CPU stand-ins
# (the job's encoders config must name them `standin: true`); the node label montage.ai/standin lists them.
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
insecure=0
dashboard_host="${MONTAGE_DASHBOARD_HOST:-127.0.0.1}"
extra=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --head) mode="head"; shift ;;
    --address) [ "$#" -ge 2 ] || usage; mode="worker"; address="$2"; shift 2 ;;
    --address=*) mode="worker"; address="${1#--address=}"; shift ;;
    --dashboard-host) [ "$#" -ge 2 ] || usage; dashboard_host="$2"; shift 2 ;;
    --dashboard-host=*) dashboard_host="${1#--dashboard-host=}"; shift ;;
    --insecure-no-auth) insecure=1; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,28p' "$0" | cut -c3-; exit 0 ;;
    *) echo "$me: unknown argument: $1" >&2; usage ;;
  esac
done
[ -n "$mode" ] || usage
if [ "$mode" = "worker" ] && [ -z "$address" ]; then usage; fi

# Token authentication before anything else: a node that cannot authenticate must not start at all.
if [ "$insecure" = 1 ]; then
  echo "$me: WARNING: starting WITHOUT authentication (--insecure-no-auth): anyone who reaches this node's" \
       "ports can run any command on it as $(id -un)" >&2
  export RAY_AUTH_MODE=disabled
  unset RAY_AUTH_TOKEN RAY_AUTH_TOKEN_PATH
else
  case "${RAY_AUTH_MODE:-token}" in
    token) ;;
    *) echo "$me: RAY_AUTH_MODE=${RAY_AUTH_MODE} would start this node without authentication;" \
            "unset it, or pass --insecure-no-auth to mean it" >&2
       exit 2 ;;
  esac
  token_file="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
  if [ -z "${RAY_AUTH_TOKEN:-}" ] && ! [ -s "$token_file" ]; then
    if [ -n "${RAY_AUTH_TOKEN_PATH:-}" ]; then where="RAY_AUTH_TOKEN_PATH ($token_file)"; else where="$token_file"; fi
    if [ "$mode" = "head" ]; then
      hint="make one with \`ray get-auth-token --generate\` and copy it to every node"
    else
      hint="copy the head's ~/.ray/auth_token to this node"
    fi
    echo "$me: no Ray auth token: \$RAY_AUTH_TOKEN is unset and $where is missing or empty;" \
         "$hint (or pass --insecure-no-auth to start without authentication)" >&2
    exit 2
  fi
  if ! [ -n "${RAY_AUTH_TOKEN:-}" ] && [ -r "$token_file" ]; then
    perms="$(stat -c %a "$token_file" 2>/dev/null || echo 600)"
    case "$perms" in
      *00) ;;
      *) echo "$me: note: $token_file is readable by other users (mode $perms); chmod 600 it" >&2 ;;
    esac
  fi
  export RAY_AUTH_MODE=token
fi

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
if [ -n "${MONTAGE_RAY_STANDINS:-}" ]; then
  # the probe's resources plus the stand-in labels; a malformed value stops the start with one line
  if ! merged="$(python3 - "$resources" "$MONTAGE_RAY_STANDINS" <<'PY'
import json, re, sys
try:
    probed, standins = json.loads(sys.argv[1]), json.loads(sys.argv[2])
except ValueError:
    sys.exit(1)
if not isinstance(standins, dict) or not all(
        isinstance(k, str) and re.fullmatch(r"[a-z0-9_]{1,32}", k) and isinstance(v, int) and v >= 1
        for k, v in standins.items()):
    sys.exit(1)
print(json.dumps({**probed, **standins}, sort_keys=True))
print("-".join(sorted(standins)))
PY
)"; then
    echo "$me: MONTAGE_RAY_STANDINS=${MONTAGE_RAY_STANDINS} is not a JSON object of label -> sessions" \
         "such as {\"nvenc\": 2}; not starting Ray" >&2
    exit 2
  fi
  { IFS= read -r resources; IFS= read -r standin_names; } <<<"$merged"
  labels="${labels},montage.ai/standin=${standin_names}"
fi
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
