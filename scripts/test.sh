#!/usr/bin/env bash
# Set up (ffmpeg, venv, package with test extras) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
# Three workers on any machine: on two cores the suite is CPU-bound (the machine 93-97 % busy), and a fourth
# worker (its own Ray, idle-busy for the whole run) gave no shorter wall time for more CPU; more than two
# still fill the waits (Ray starting, encoders held to a rate). Each module runs whole on one worker (its
# module fixtures made once), the longest first (tests/conftest.py).
# MONTAGE_TEST_WORKERS=0 runs the suite in this process, one test after another.
# --timing runs the other stage instead: the scenarios whose outcome rests on clocks (tests marked `timing`: a
# cluster of network namespaces with shaped links and faults, jobs racing for the service's slots, kills mid-job),
# apart from the suite's load, one module per worker. CI runs both (.ci/run).
marks=(-m "not timing")
workers="${MONTAGE_TEST_WORKERS:-3}"
if [ "${1:-}" = "--timing" ]; then
  shift
  marks=(-m timing)
fi
exec .venv/bin/python -m pytest -q -n "$workers" --dist loadfile --no-loadscope-reorder "${marks[@]}" "$@"
