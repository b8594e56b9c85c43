"""The one place that starts processes: finding and running ffmpeg and ffprobe.

Everything else in montage-ray builds argument *lists* and hands them to :func:`run`; no module builds a
shell string or calls :mod:`subprocess` itself. Each run has a hard timeout, the whole process group is
killed when it expires (or when the Python process that started it dies), and the tail of stderr is kept
so that errors can be explained::

    from montage_ray.ffmpeg import tool

    done = tool.run([tool.ffmpeg(), "-hide_banner", "-version"], timeout=10)
    print(done.stdout.splitlines()[0])

    cutter = tool.start([tool.ffmpeg(), ...], timeout=600)   # runs in the background
    while cutter.poll() is None:                                         # timeout enforced on every poll
        ...
    cutter.wait()                                                        # Completed, or FFmpegError

    with tool.watch() as started:                                  # what this process launches
        ...
    len(started)

File names from users never reach ffmpeg as they are: :func:`file_url` turns them into absolute
``file:`` URLs, so that ``-x.mp4`` is not an option and ``concat:a|b`` or ``http://...`` is not a protocol.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from montage_ray.errors import FFmpegError, FFmpegNotFound

#: How much of a failed process's stderr is kept (the end is where ffmpeg says what went wrong).
STDERR_TAIL_CHARS = 4000

#: ffmpeg's "[mov,mp4 @ 0x55...] " prefix, which says nothing to a user.
_CONTEXT_PREFIX = re.compile(r"^\[[^\]]* @ 0x[0-9a-f]+\]\s*")


@dataclass(frozen=True)
class Completed:
    """A finished process: exit status, output and how long it ran."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float


@lru_cache(maxsize=None)
def ffmpeg() -> str:
    """Path of the ffmpeg executable: ``$MONTAGE_FFMPEG``, then PATH, then imageio-ffmpeg's build."""
    found = os.environ.get("MONTAGE_FFMPEG") or shutil.which("ffmpeg")
    if not found:
        try:
            import imageio_ffmpeg  # optional: a pip-installable static build

            found = imageio_ffmpeg.get_ffmpeg_exe()
        except Exception:  # noqa: BLE001 - any failure means "not available"
            found = None
    if not found:
        raise FFmpegNotFound("ffmpeg was not found: install it (Debian: apt-get install ffmpeg) "
                             "or set MONTAGE_FFMPEG to its path")
    return found


@lru_cache(maxsize=None)
def ffprobe() -> str:
    """Path of the ffprobe executable: ``$MONTAGE_FFPROBE``, then PATH, then beside ffmpeg."""
    found = os.environ.get("MONTAGE_FFPROBE") or shutil.which("ffprobe")
    if not found:
        beside = Path(ffmpeg()).with_name("ffprobe")
        found = str(beside) if beside.exists() else None
    if not found:
        raise FFmpegNotFound("ffprobe was not found: install ffmpeg's full package "
                             "(Debian: apt-get install ffmpeg) or set MONTAGE_FFPROBE to its path")
    return found


def file_url(path: str | os.PathLike[str]) -> str:
    """An ffmpeg URL that can only mean the local file ``path`` (never an option or a protocol)."""
    return "file:" + os.path.abspath(os.fspath(path))


def _find_setpriv() -> str | None:
    """util-linux's ``setpriv`` where it can set the parent-death signal (Linux), looked up once at import."""
    found = shutil.which("setpriv") if os.name == "posix" and os.uname().sysname == "Linux" else None
    if not found:
        return None
    try:
        helptext = subprocess.run([found, "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return found if "--pdeathsig" in helptext else None


#: ffmpeg runs as ``setpriv --pdeathsig KILL -- ffmpeg ...`` so that it dies with the process that started it
#: (no orphaned ffmpeg when a Ray actor is killed). No Python code runs between fork and exec: a
#: ``preexec_fn`` in a threaded process (every Ray worker) also runs the at-fork handlers of gRPC and others,
#: and a child forked while another thread held their locks hung forever (seen in the test suite).
_SETPRIV = _find_setpriv()


def _executable(name: str) -> None:
    """FFmpegNotFound, as Popen would raise it, when ``name`` cannot be run (checked before the wrapper)."""
    path = name if os.sep in name else shutil.which(name) or name
    if not os.path.exists(path):
        raise FFmpegNotFound(f"cannot run {name!r}: No such file or directory")
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        raise FFmpegNotFound(f"cannot run {name!r}: permission denied")


class AppendedLines:
    """The whole lines a running process appends to a file (ffmpeg's ``-progress`` file, the segment
    muxer's list), each line handed out once: a half-written last line waits for the next read."""

    def __init__(self, path: str) -> None:
        self.path, self.offset = path, 0

    def read(self) -> list[bytes]:
        """The lines completed since the last call (none while the file does not exist yet)."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                chunk = fh.read()
        except FileNotFoundError:
            return []
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        return chunk[:end].splitlines()


def tail(text: str, limit: int = STDERR_TAIL_CHARS) -> str:
    """The last ``limit`` characters of ``text`` (a process's stderr), marked "..." where cut."""
    return text if len(text) <= limit else "..." + text[-limit:]


#: Lists that :func:`watch` hands out: every process this Python process starts is appended to each.
_watchers: list[list[tuple[str, ...]]] = []


@contextmanager
def watch() -> Iterator[list[tuple[str, ...]]]:
    """Collect the argument lists of every process started (by :func:`run` or :func:`start`) in this Python
    process while the block runs: how tests prove that the driver does not start a process per segment."""
    seen: list[tuple[str, ...]] = []
    _watchers.append(seen)
    try:
        yield seen
    finally:
        _watchers.remove(seen)


def _spawn(args: list[str], *, stdin: Any, stdout: Any, env: Mapping[str, str] | None,
           cwd: str | None) -> subprocess.Popen[bytes]:
    """Start ``args`` in its own process group, killed when this process dies; the one ``Popen`` call."""
    child_env = None
    if env:
        child_env = dict(os.environ)
        child_env.update(env)
    for seen in list(_watchers):
        seen.append(tuple(args))
    try:
        if _SETPRIV is not None:
            _executable(args[0])
        wrapped = [_SETPRIV, "--pdeathsig", "KILL", "--", *args] if _SETPRIV is not None else args
        return subprocess.Popen(
            wrapped, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, env=child_env, cwd=cwd,
            start_new_session=True)  # setsid() in C, safe after fork: its own process group to kill
    except FileNotFoundError as err:
        raise FFmpegNotFound(f"cannot run {args[0]!r}: {err.strerror}") from err
    except PermissionError as err:
        raise FFmpegNotFound(f"cannot run {args[0]!r}: permission denied") from err


class Cancelled(FFmpegError):
    """The process was stopped because its caller asked (``should_stop`` returned true)."""


def run(args: Sequence[str], *, timeout: float, check: bool = True, input_bytes: bytes | None = None,
        env: Mapping[str, str] | None = None, cwd: str | None = None,
        should_stop: Callable[[], bool] | None = None) -> Completed:
    """Run ``args`` (a list, never a shell string) with a hard ``timeout`` in seconds.

    On timeout the whole process group is killed and :class:`FFmpegError` (``timed_out=True``) raised.
    With ``check`` a non-zero exit or a signal also raises :class:`FFmpegError`, carrying the stderr tail.
    ``env`` *adds to* this process's environment for the child only (never mutates ``os.environ``).
    ``should_stop`` is polled twice a second; when it returns true the process is killed and
    :class:`Cancelled` raised (a cancelled Ray task, a duplicate that lost the race).
    """
    args = [os.fspath(a) for a in args]
    started = time.monotonic()
    proc = _spawn(args, stdin=subprocess.PIPE if input_bytes is not None else subprocess.DEVNULL,
                  stdout=subprocess.PIPE, env=env, cwd=cwd)
    deadline = started + timeout
    try:
        while True:
            step = deadline - time.monotonic()
            if should_stop is not None:
                step = min(step, 0.5)
            try:
                out, err = proc.communicate(input=input_bytes, timeout=max(step, 0.01))
                break
            except subprocess.TimeoutExpired:
                if time.monotonic() >= deadline:
                    _kill_group(proc)
                    out, err = proc.communicate()
                    raise FFmpegError(f"{Path(args[0]).name} did not finish within {timeout:g} s and was killed",
                                      returncode=None, stderr=tail(err.decode(errors="replace")),
                                      timed_out=True) from None
                if should_stop is not None and should_stop():
                    _kill_group(proc)
                    out, err = proc.communicate()
                    raise Cancelled(f"{Path(args[0]).name} was stopped on request",
                                    stderr=tail(err.decode(errors="replace"))) from None
    except BaseException:
        _kill_group(proc)
        proc.wait()
        raise
    done = Completed(tuple(args), proc.returncode, out.decode(errors="replace"),
                     err.decode(errors="replace"), time.monotonic() - started)
    if check and done.returncode != 0:
        raise FFmpegError(describe_failure(done), returncode=done.returncode, stderr=tail(done.stderr))
    return done


class Running:
    """A process started by :func:`start`: it runs in the background until :meth:`wait` or :meth:`kill`.

    The same rules as :func:`run`: its own process group (killed whole), killed when this process dies, a
    hard timeout (checked by :meth:`poll` and :meth:`wait`), and the tail of its stderr kept (read by a
    thread, so a chatty process never blocks on a full pipe). Its stdout is discarded unless the caller
    asked for it (``capture_stdout``: read by a second thread, whole, into :attr:`Completed.stdout`).
    """

    def __init__(self, args: list[str], proc: subprocess.Popen[bytes], timeout: float) -> None:
        self.args = tuple(args)
        self._proc = proc
        self._started = time.monotonic()
        self._deadline = self._started + timeout
        self._timeout = timeout
        self._stderr = bytearray()
        self._stdout = bytearray()
        self._reader = threading.Thread(target=self._read_stderr, name="stderr-" + Path(args[0]).name, daemon=True)
        self._reader.start()
        self._out_reader = None
        if proc.stdout is not None:
            self._out_reader = threading.Thread(target=self._read_stdout, name="stdout-" + Path(args[0]).name,
                                                daemon=True)
            self._out_reader.start()

    def _read_stdout(self) -> None:
        assert self._proc.stdout is not None
        for chunk in iter(lambda: self._proc.stdout.read1(65536), b""):  # type: ignore[union-attr]
            self._stdout += chunk

    def _read_stderr(self) -> None:
        assert self._proc.stderr is not None
        for chunk in iter(lambda: self._proc.stderr.read1(65536), b""):  # type: ignore[union-attr]
            self._stderr += chunk
            if len(self._stderr) > 4 * STDERR_TAIL_CHARS:
                del self._stderr[:-STDERR_TAIL_CHARS]

    @property
    def stderr(self) -> str:
        return tail(self._stderr.decode(errors="replace"))

    def poll(self) -> int | None:
        """The exit status, or None while it runs; past its timeout it is killed and FFmpegError raised."""
        code = self._proc.poll()
        if code is None and time.monotonic() >= self._deadline:
            self.kill()
            raise FFmpegError(f"{Path(self.args[0]).name} did not finish within {self._timeout:g} s and was killed",
                              returncode=None, stderr=self.stderr, timed_out=True)
        return code

    def returncode(self) -> int | None:
        """The exit status, or None while it runs (without the timeout check of :meth:`poll`)."""
        return self._proc.poll()

    def extend(self, timeout: float) -> None:
        """Give it ``timeout`` seconds from now, whatever it had before."""
        self._deadline, self._timeout = time.monotonic() + timeout, timeout

    def wait(self, *, check: bool = True) -> Completed:
        """Wait for the end (within the timeout); with ``check`` a failure raises FFmpegError."""
        try:
            self._proc.wait(timeout=max(0.0, self._deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.poll()  # raises: past the deadline
        self._reader.join(timeout=5)
        if self._out_reader is not None:
            self._out_reader.join(timeout=5)
        done = Completed(self.args, self._proc.returncode, self._stdout.decode(errors="replace"), self.stderr,
                         time.monotonic() - self._started)
        if check and done.returncode != 0:
            raise FFmpegError(describe_failure(done), returncode=done.returncode, stderr=done.stderr)
        return done

    def kill(self) -> None:
        """Kill the whole process group (nothing if it already ended) and reap it."""
        if self._proc.poll() is None:
            _kill_group(self._proc)
        self._proc.wait()
        self._reader.join(timeout=5)


def start(args: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None,
          cwd: str | None = None, capture_stdout: bool = False) -> Running:
    """Start ``args`` (a list) in the background and return its :class:`Running` handle (see :func:`run`
    for the timeout, process-group and stderr rules); the caller must :meth:`~Running.wait` or
    :meth:`~Running.kill` it."""
    args = [os.fspath(a) for a in args]
    stdout = subprocess.PIPE if capture_stdout else subprocess.DEVNULL
    return Running(args, _spawn(args, stdin=subprocess.DEVNULL, stdout=stdout, env=env, cwd=cwd), timeout)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def describe_failure(done: Completed) -> str:
    """One line saying how a process failed: its exit status or signal, and its last stderr line."""
    name = Path(done.args[0]).name
    if done.returncode < 0:
        try:
            how = f"was killed by {signal.Signals(-done.returncode).name}"
        except ValueError:
            how = f"was killed by signal {-done.returncode}"
    else:
        how = f"exited with status {done.returncode}"
    last = last_error_line(done.stderr)
    return f"{name} {how}" + (f": {last}" if last else "")


def strip_context(line: str) -> str:
    """``line`` without ffmpeg's ``[mov,mp4 @ 0x55...]`` prefix and surrounding blanks."""
    return _CONTEXT_PREFIX.sub("", line.strip())


def last_error_line(stderr: str) -> str:
    """The most telling line of an ffmpeg stderr: the last non-empty one that is not a summary."""
    for line in reversed(stderr.strip().splitlines()):
        line = strip_context(line)
        if line and not line.startswith(("Conversion failed", "frame=", "size=", "video:",
                                         "Error initializing output stream")):
            return line
    return ""


def probe_json(args: Sequence[str], *, timeout: float) -> dict[str, Any]:
    """Run ffprobe with ``args`` (``-of json`` is added) and return the parsed JSON."""
    done = run([ffprobe(), "-v", "error", "-of", "json", *args], timeout=timeout)
    try:
        return json.loads(done.stdout or "{}")
    except json.JSONDecodeError as err:  # pragma: no cover - ffprobe always prints JSON with -of json
        raise FFmpegError(f"ffprobe printed output that is not JSON: {err}", stderr=done.stderr) from err


def first_stream(stdout: str) -> dict[str, Any]:
    """The first stream of what ``ffprobe -of json -show_entries stream=...`` printed ({} when none).
    Raises ValueError when it is not JSON."""
    return (json.loads(stdout or "{}").get("streams") or [{}])[0]
