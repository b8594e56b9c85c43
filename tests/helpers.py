"""Helpers the tests share that are neither media nor Ray checks: running a script under a hard bound, a
small disk (a tmpfs) to fill, the processes a process started."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_bounded(args: list[str], timeout: float, *, env: dict | None = None,
                what: str = "") -> subprocess.CompletedProcess:
    """Run ``args`` (from the repository root) in its own process group; past ``timeout`` the whole group
    (the script and every Ray process it started) is killed and the test fails with ``what`` (default: the
    script and its first argument) and the tail of what it printed."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"{what or ' '.join(args[1:3])} ran past {timeout:.0f} s and was killed: {err[-3000:]}")
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def mount_tmpfs(folder, size: str):
    """``folder`` made and a fresh tmpfs of ``size`` mounted on it (the caller unmounts); skips without root."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not permitted'}): needs root")
    return folder


def child_pids(pid: int) -> list[int]:
    """The processes that ``pid`` started and that still run: the kernel's list of each of its threads'
    children (cheap enough to poll, unlike a scan of every process in /proc); [] once ``pid`` is gone."""
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found = []
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/children") as fh:
                found.extend(int(child) for child in fh.read().split())
        except OSError:
            continue
    return found
