#!/usr/bin/env bash
# Set up (ffmpeg, venv, package with test extras) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
# Four workers on any machine: most of the suite's wall time is waiting (Ray starting, node timeouts, encoders
# held to a rate), not computing. Each module runs whole on one worker (its module fixtures made once), the longest
# first (tests/conftest.py).
# MONTAGE_TEST_WORKERS=0 runs the suite in this process, one test after another.
exec .venv/bin/python -m pytest -q -n "${MONTAGE_TEST_WORKERS:-4}" --dist loadfile --no-loadscope-reorder "$@"
