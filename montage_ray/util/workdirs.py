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

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import stat
from typing import Mapping

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


def workdir_name(parent: str, prefix: str) -> str:
    """A fresh name ``parent/prefix*`` for :func:`make_workdir_at` (random, as :func:`tempfile.mkdtemp`'s)."""
    return os.path.join(parent, prefix + secrets.token_hex(6))


def make_workdir_at(path: str) -> str:
    """Make the private (0700) folder ``path`` with this process's owner file in it; removed again if that
    fails or is interrupted. A caller that must remove it whatever happens (a SIGTERM between the folder's
    making and the return) keeps the name first (:func:`workdir_name`)."""
    os.mkdir(path, 0o700)
    try:  # complete or absent: sweep() never reads half an owner
        record = json.dumps(owner_record())

        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(record)

        write_atomically(os.path.join(path, OWNER_FILE), write, overwrite=False, what="owner file")
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return path


def make_workdir(parent: str, prefix: str) -> str:
    """A new private (0700) folder ``parent/prefix*`` with this process's owner file in it."""
    while True:
        try:
            return make_workdir_at(workdir_name(parent, prefix))
        except FileExistsError:
            continue


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


def disk_full_error(folder: str, err: BaseException, places: Mapping[str, str] | None = None) -> FFmpegError | None:
    """The one-line error for a job that filled a filesystem, or None when ``err`` is not that.

    Evidence is ENOSPC/EDQUOT from Python, ffmpeg saying "No space left on device" (its last line is often
    just "Invalid argument"), or hardly any space left after the failure. The filesystem named is the one
    that filled: the one holding a path the error names, else the fullest of the job's places, ``folder``
    (the output's) and ``places`` (what each is -> its path: the temporary folder, the segment cache).
    """
    import errno

    said = (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)) or (
        "No space left on device" in (getattr(err, "stderr", "") or "") + str(err))
    roles = {"the output's folder": folder, **(places or {})}
    where, role = _full_place(err, roles)
    if where is None:
        if not said:
            return None
        where, role = mount_point(folder), "the output's folder"
    return FFmpegError(_full_line(where, free_bytes(where), role, roles.get(role, "")))


def _full_line(where: str, free: int | None, role: str, path: str) -> str:
    advice = ("a job needs about 3x the source's size free there" if role == "the output's folder"
              else "free some space there" + (" or point TMPDIR at a larger disk" if "TMPDIR" in role else ""))
    which = f"{role} {path!r}" if path and role != "the output's folder" else role
    return (f"no space left on the filesystem at {where!r} ({(free or 0) // 1024} KiB free), which holds {which}: "
            f"{advice}; nothing was written")


def _full_place(err: BaseException, roles: Mapping[str, str]) -> tuple[str | None, str]:
    """(mount point, role) of the filesystem that filled, or (None, "") when none can be told: the fullest
    (nearly full) filesystem of a path the error names or of a place of the job; else, since a failed job
    frees its temporary files, the filesystem of the path named where the error says the disk is full (its
    filename, or an absolute path on a line of its message or of ffmpeg's stderr that says so)."""
    mounts: dict[str, str] = {}
    for role, place in roles.items():
        with contextlib.suppress(OSError):
            mounts.setdefault(mount_point(_existing(place)), role)
    sure = [p for p in (getattr(err, "filename", None), getattr(err, "filename2", None)) if isinstance(p, str)]
    other: list[str] = []
    for line in f"{err}\n{getattr(err, 'stderr', '') or ''}".splitlines():
        paths = re.findall(r"(?:file:)?(/[^\s'\",:;]+)", line)
        (sure if "No space left" in line or "Errno 28" in line else other).extend(paths)
    named: dict[str, str] = {}  # mount point -> the folder named there
    for path in sure + other:
        with contextlib.suppress(OSError):
            named.setdefault(mount_point(_existing(os.path.abspath(path))), os.path.dirname(os.path.abspath(path)))

    def role(where: str) -> str:
        return mounts.get(where) or f"the folder {named[where]!r}"

    full = [(free, m) for m in {**named, **mounts} if (free := free_bytes(m)) is not None and free < NEARLY_FULL_BYTES]
    if full:
        return min(full)[1], role(min(full)[1])
    for path in sure:
        with contextlib.suppress(OSError):
            where = mount_point(_existing(os.path.abspath(path)))
            return where, role(where)
    return None, ""


def _existing(path: str) -> str:
    """``path``, or its nearest parent that exists."""
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


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
