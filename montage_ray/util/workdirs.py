"""Work folders that say who owns them, so that a killed job's leftovers are removed by the next run.

A job keeps its pieces in a hidden folder beside the destination (``.montage-ray-*``: a stream copy of the
source, the encoded segments, the joined file, about 3x the source in all) and each encode in
``/tmp/montage-seg-*``. A job killed with SIGKILL, a node that lost power, an actor Ray killed: none of
them can clean up. So every folder holds an owner file (host, boot id, pid namespace, pid and the
process's start time) and :func:`sweep` removes a folder only when it is ours (same user, a real folder,
not a link) and its owner is provably gone: same host and pid namespace, and either another boot or no
process with that pid and start time. A live job's folder is never touched; a folder on a shared disk
made by another host is left alone::

    from montage_ray.util.workdirs import make_workdir, sweep

    sweep("/videos", ".montage-ray-")               # leftovers of killed jobs
    work = make_workdir("/videos", ".montage-ray-")   # ... and remove it when done (shutil.rmtree)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile

from montage_ray.errors import FFmpegError
from montage_ray.util.files import write_atomically

#: The owner file inside every work folder.
OWNER_FILE = ".owner.json"


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read().strip()
    except OSError:
        return ""


def _boot_id() -> str:
    return _read("/proc/sys/kernel/random/boot_id")


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks after boot), or None when there is no such process."""
    text = _read(f"/proc/{pid}/stat")
    if not text:
        return None
    # field 22; the command name (field 2) may hold spaces and parentheses, so count after its last ')'
    fields = text[text.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else None


def owner_record(pid: int | None = None) -> dict[str, object]:
    """Who owns a folder made now by process ``pid`` (this one by default)."""
    pid = pid or os.getpid()
    return {"host": socket.gethostname(), "boot_id": _boot_id(), "pid_ns": _pid_namespace(), "pid": pid,
            "start": process_start(pid)}


def make_workdir(parent: str, prefix: str) -> str:
    """A new private (0700) folder ``parent/prefix*`` with this process's owner file in it."""

    path = tempfile.mkdtemp(prefix=prefix, dir=parent)
    record = json.dumps(owner_record())

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(record)

    try:  # complete or absent: sweep() never reads half an owner
        write_atomically(os.path.join(path, OWNER_FILE), write, overwrite=False, what="owner file")
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path


def owner_is_gone(record: dict[str, object]) -> bool:
    """True only when the process that made a folder is provably not running any more."""
    if record.get("host") != socket.gethostname() or record.get("pid_ns") != _pid_namespace():
        return False                    # another machine or container: we cannot see its processes
    boot = _boot_id()
    if not boot or not record.get("boot_id"):
        return False
    if record["boot_id"] != boot:
        return True                     # made before the last reboot
    pid = record.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    start = process_start(pid)
    return start is None or start != record.get("start")  # no such process, or the pid was reused


def sweep(parent: str, prefix: str) -> list[str]:
    """Remove ``parent/prefix*`` folders of ours whose owner is gone; return the paths removed."""
    removed = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(prefix):
            continue
        path = os.path.join(parent, name)
        try:
            info = os.lstat(path)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            continue
        try:
            with open(os.path.join(path, OWNER_FILE), encoding="utf-8") as fh:
                record = json.load(fh)
        except (OSError, ValueError):
            continue                    # not ours, or being made right now: leave it
        if isinstance(record, dict) and owner_is_gone(record):
            shutil.rmtree(path, ignore_errors=True)
            if not os.path.lexists(path):
                removed.append(path)
    return removed


#: Free space below which a failed write is blamed on a full filesystem even without ENOSPC in hand.
NEARLY_FULL_BYTES = 64 * 1024


def mount_point(path: str) -> str:
    """The mount point of the filesystem that holds ``path``."""
    path = os.path.realpath(path)
    while not os.path.ismount(path):
        path = os.path.dirname(path)
    return path


def free_bytes(path: str) -> int | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def disk_full_error(folder: str, err: BaseException) -> FFmpegError | None:
    """The one-line error for a job that filled ``folder``'s filesystem, or None when ``err`` is not that.

    Evidence is ENOSPC/EDQUOT from Python, ffmpeg saying "No space left on device" (its last line is often
    just "Invalid argument"), or hardly any space left after the failure.
    """
    import errno


    said = (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)) or (
        "No space left on device" in (getattr(err, "stderr", "") or "") + str(err))
    free = free_bytes(folder)
    if not said and (free is None or free >= NEARLY_FULL_BYTES):
        return None
    where = mount_point(folder)
    return FFmpegError(f"no space left on the filesystem at {where!r} ({(free or 0) // 1024} KiB free), which "
                       "holds the output's folder: a job needs about 3x the source's size free there; "
                       "nothing was written")


def make_private(path: str) -> bool:
    """Make a file of ours readable by its owner only (Ray writes ``~/.ray/auth_token`` 0644); True if done.

    Leaves alone what is not a regular file owned by this user (a link, someone else's file).
    """
    try:
        info = os.lstat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            return False
        if info.st_mode & 0o077:
            os.chmod(path, 0o600)
        return True
    except OSError:
        return False
