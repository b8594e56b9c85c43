"""Writing files the safe way: a temporary name in the same folder, then a rename that never clobbers.

Every file montage-ray writes for a user (the encoded video, the ``--report`` JSON, the ``--timeline`` PNG)
goes through :func:`publish`: without ``overwrite`` a file that exists, or appeared meanwhile, is never
replaced; nothing half-written is ever seen under the final name::

    from montage_ray.util.files import write_atomically

    write_atomically("report.json", lambda tmp: open(tmp, "w").write("{}"), overwrite=False, what="report")
"""

from __future__ import annotations

import os
import secrets
from typing import Callable

from montage_ray.errors import InputError


def publish(tmp: str, dst: str, *, overwrite: bool, what: str = "output") -> None:
    """Move ``tmp`` to ``dst``; without ``overwrite`` never replace a file that is there (atomic: a hard link
    where the filesystem has them)."""
    if overwrite:
        os.replace(tmp, dst)
        return
    appeared = InputError(f"{what} {dst!r} appeared while encoding; not replaced (pass --overwrite)")
    try:
        os.link(tmp, dst)  # atomic, and fails if dst exists
    except FileExistsError:
        raise appeared from None
    except OSError:  # no hard links on this filesystem
        if os.path.lexists(dst):
            raise appeared from None
        os.replace(tmp, dst)
        return
    os.unlink(tmp)


def write_atomically(path: str, write: Callable[[str], object], *, overwrite: bool, what: str) -> None:
    """Call ``write(tmp)`` for a fresh temporary file beside ``path``, then :func:`publish` it as ``path``."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.tmp-{os.getpid()}-{secrets.token_hex(3)}{os.path.splitext(name)[1]}")
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        write(tmp)
        publish(tmp, os.path.abspath(path), overwrite=overwrite, what=what)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
