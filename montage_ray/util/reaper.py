"""A watchdog for a private Ray: once the process that started it is gone, however it went (SIGKILL
included), the processes of that Ray node still running are ended at once instead of minutes later.

Ray's ``gcs_server`` and ``raylet`` die with the driver that started them (Ray gives them a parent-death
signal), but the raylet's agents (``DashboardAgent``, ``RuntimeEnvAgent``) notice only later and then spend
a minute or two trying to tell the GCS, which is gone. The watchdog is a small separate process (run from
this file by path, so it imports nothing but the standard library; in a session of its own, so that a kill of
the driver's process group spares it). It holds the read end of a pipe whose write end only the driver
holds, so the pipe's end is the driver's end. Then it ends (SIGTERM, then SIGKILL after
:data:`GRACE_SECONDS`) every process of this user whose environment names the node (``RAY_NODE_ID=<id>``,
which Ray gives each process of a node), and exits. A driver that shuts its Ray down itself says so first
(:meth:`Reaper.close`), and the watchdog exits without looking::

    from montage_ray.util.reaper import Reaper

    reaper = Reaper.start(node_id)      # after ray.init() of a private Ray
    ...
    ray.shutdown(); reaper.close()      # or the driver dies: the watchdog ends the node's processes
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

#: Seconds the node's processes get to end on SIGTERM before SIGKILL.
GRACE_SECONDS = 2.0

#: What the driver writes before closing the pipe when it shut its Ray down itself.
DONE = b"done\n"


class Reaper:
    """The watchdog process of one private Ray node (see the module's description)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self._proc = proc

    @classmethod
    def start(cls, node_id: str) -> "Reaper":
        """Start the watchdog of node ``node_id`` (hex, as ``ray.get_runtime_context().get_node_id()``)."""
        if not node_id or not all(c in "0123456789abcdef" for c in node_id.lower()):
            raise ValueError(f"not a Ray node id: {node_id!r}")
        proc = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), node_id], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                close_fds=True)
        return cls(proc)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def close(self) -> None:
        """The driver shut its Ray down itself: the watchdog exits without ending anything."""
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.write(DONE)
            self._proc.stdin.close()
        except (OSError, ValueError):
            pass
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


def node_processes(node_id: str) -> list[int]:
    """Pids of this user's processes (this one excepted) whose environment holds ``RAY_NODE_ID=node_id``."""
    wanted = b"RAY_NODE_ID=" + node_id.encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            if os.stat(f"/proc/{name}").st_uid != os.getuid():
                continue
            with open(f"/proc/{name}/environ", "rb") as fh:
                environ = fh.read().split(b"\0")
        except OSError:
            continue  # gone, or not readable
        if wanted in environ:
            found.append(int(name))
    return found


def end_node(node_id: str, grace: float = GRACE_SECONDS) -> list[int]:
    """End every process of node ``node_id`` (SIGTERM, then SIGKILL for those left after ``grace`` s); the
    pids signalled."""
    pids = node_processes(node_id)
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    left = pids
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in node_processes(node_id) if p in pids]
    for pid in left + [p for p in node_processes(node_id) if p not in pids]:  # (and any that started since)
        _signal(pid, signal.SIGKILL)
    return pids


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def _watch(node_id: str) -> int:
    """The watchdog's body: wait for the pipe's end; unless the driver said it was done, end the node."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C at the terminal is the driver's business
    said = b""
    while True:
        chunk = os.read(0, 64)
        if not chunk:
            break
        said += chunk
    if said != DONE:
        end_node(node_id)
    return 0


if __name__ == "__main__":
    sys.exit(_watch(sys.argv[1]))
