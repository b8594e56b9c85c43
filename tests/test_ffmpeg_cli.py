"""ffmpeg_cli: children die with the process that started them; nothing unsafe runs between fork and exec."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

from montage_ray.ffmpeg import tool


def _pids_with(marker: str, *, execed: bool = False) -> list[int]:
    """Processes whose command line holds ``marker``; with ``execed`` only those past setpriv's exec (whose
    first argument is no longer setpriv: the parent-death signal is set by then)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    cmdline = fh.read()
            except OSError:
                continue
            program = os.path.basename(cmdline.split(b"\0", 1)[0])
            if marker.encode() in cmdline and not (execed and program == b"setpriv"):
                found.append(int(entry))
    return found


def test_ffmpeg_started_from_a_thread_of_a_threaded_process_dies_with_it():
    marker = f"sine=frequency={1000 + uuid.uuid4().int % 1000}:sample_rate=8123"
    code = f"""
import threading, time
from montage_ray.ffmpeg import tool
busy = [threading.Thread(target=lambda: [sum(range(1000)) for _ in iter(int, 1)], daemon=True) for _ in range(4)]
for t in busy: t.start()
def go():
    tool.run([tool.ffmpeg(), "-v", "error", "-re", "-f", "lavfi", "-i", {marker!r}, "-f", "null", "-"],
                   timeout=600, check=False)
threading.Thread(target=go).start()
print("started", flush=True)
time.sleep(600)
"""
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 60
        # ffmpeg itself, not setpriv before its exec: a parent killed before setpriv has set the signal leaves an
        # orphan no parent-death signal reaches (a window a loaded machine widens; a private Ray's reaper ends
        # those, by the node id in their environment)
        while not _pids_with(marker, execed=True) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _pids_with(marker, execed=True), "ffmpeg never started"
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 60
    while _pids_with(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _pids_with(marker) == [], "ffmpeg outlived the process that started it"


def test_no_python_runs_between_fork_and_exec():
    """No preexec_fn: in a threaded process it also runs gRPC's at-fork handlers, and a child forked while
    another thread held their locks hung (the suite once stopped there). The parent-death signal is set by
    setpriv, after exec."""
    assert tool._SETPRIV is not None  # Linux with util-linux (Debian's essential set)
    with tool.watch() as started:
        done = tool.run([tool.ffmpeg(), "-hide_banner", "-version"], timeout=30)
    assert done.returncode == 0 and "ffmpeg version" in done.stdout
    assert started == [(tool.ffmpeg(), "-hide_banner", "-version")]
