"""The chaos run (scripts/chaos.py), small: two jobs on the simulated cluster, one whose driver is killed
with SIGKILL and re-run, one whose encoder actor is killed mid-job. Each must end exact (or with one clear
line), and nothing may be left behind: no work folder, no scratch folder, no ffmpeg. The full run (N >= 20)
is ``scripts/chaos.py --jobs 20``."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "chaos.py")

pytestmark = [pytest.mark.slow, pytest.mark.timing]


def test_a_killed_driver_and_a_killed_actor_leave_exact_output_and_nothing_behind():
    # seed 1 draws the driver kill for job 0 and an actor kill for job 1 (checked below, so that a change of
    # the script's draws cannot turn this into a test of something else)
    done = subprocess.run([sys.executable, SCRIPT, "--jobs", "2", "--seed", "1", "--seconds", "6"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    out = done.stdout
    assert done.returncode == 0 and "2/2 passed" in out, out[-3000:] + done.stderr[-3000:]
    jobs = re.findall(r"^job +(\d+) (kill-\w+) .*?(exact|one line: .*)$", out, re.M)
    assert [(n, what) for n, what, _ in jobs] == [("0", "kill-driver"), ("1", "kill-actor")], out
    assert "FAIL" not in out and "left behind" not in out
