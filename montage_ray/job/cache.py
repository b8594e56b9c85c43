"""Encoded segments kept across runs: a job that was killed (SIGKILL, Ctrl-C, a reboot) and is run again
with the same command encodes only the segments it had not finished.

A :class:`SegmentCache` is a folder (``.montage-ray.cache`` beside the destination, or ``--cache-dir``) of
entries, one per encoded and **verified** segment: the piece (``<key>-<token>.mp4``) and a JSON sidecar
(``<key>.json``: encoder, frames, packets, bytes, timings, how it was verified, and two SHA-256 hashes). A
piece is reused only when what would be encoded now is what was encoded then, byte for byte:

- the **cut piece** the encoder was given (the stream copy of the segment's packets, which a re-run cuts
  anyway) has the hash recorded in the sidecar: an edited source gives another piece, whatever its size,
  mtime or packet table say;
- the **encoded piece** has the hash recorded when it was stored (after its encoder verified it): a piece
  swapped for another file, or with one byte flipped, is encoded again;
- the entry's key hashes everything else that shapes the bytes: the segment's packet range, every job setting
  that reaches the encoder (:func:`settings_fingerprint`), the build of the ffmpeg that cuts and joins (the
  driver's) and montage-ray's version; the encoder that made the piece (label, encoder, configuration and the
  build of *its* ffmpeg: :func:`maker_id`) must serve the job now.

The folder is the cache's own, and the cache touches nothing else: it is used only when it is this user's
real folder (not a link) that no one else may write, and either empty, or tagged by montage-ray
(``CACHEDIR.TAG``), or holding only names the cache makes. It removes only regular files or links of its own
names in it, through a descriptor of the folder opened without following links. Pieces and sidecars are
written 0600. Each file is written atomically, the sidecar last, so a killed job leaves whole entries or none.

The plan of the job is kept beside the pieces (``plan-<key>.json``), so that a re-run cuts at the same
packets even where the segment length depends on measured speeds. After a successful publish the job's
entries and its plan are removed (unless ``--keep-cache``), and the folder too once empty if the cache made
it; entries nobody came back for are removed after :data:`MAX_AGE_SECONDS`, and the oldest go first once the
folder holds more than its cap (:data:`MAX_BYTES_ENV`, default :data:`DEFAULT_MAX_BYTES`). Outside the job's
work folder, so the sweep of a killed job's folder (:mod:`montage_ray.util.workdirs`) leaves the cache alone::

    from montage_ray.job.cache import SegmentCache, maker_id, piece_digest, settings_fingerprint, source_identity

    cache = SegmentCache("/videos/.montage-ray.cache", source_identity(info.packets, info.video.index),
                         settings_fingerprint(options, settings, ffmpeg_caps().build))
    cache.refusal()                                     # None, or why the folder is not the cache's to use
    cpu = maker_id("cpu", "cpu:libx264", None, "5e1f...")
    cut = piece_digest("/work/src-000000.nut")          # the cut piece the encoder was given
    cache.store(segment, result, "/work/enc-000000.mp4", maker=cpu, verified="decode", cut=cut)
    again = cache.take(segment, "/work2/enc-000000.mp4", makers={cpu}, verify="decode", cut=cut)  # the next run
    again.reused, again.encoder                         # (True, 'cpu:libx264'): an EncodeResult, or None
    cache.clear(segments)                               # after the destination was published

Why keep the plan as well as key by range: the automatic segment length is shorter when encoder speeds are
known (actors reused in one Ray session), so the same command can plan other cuts on a re-run. Keying each
piece by its own packet range means any plan that has the same range finds it; taking the killed run's plan
(checked to cover the stream end to end, and only for the same ``--segment-seconds``) means every range
matches.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import stat
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Sequence

from montage_ray.media.plan import Segment
from montage_ray.encoders.records import EncodeResult
from montage_ray.encoders.backends import is_hardware
from montage_ray.encoders.checks import Verify, accepts

log = logging.getLogger(__name__)

#: The cache folder's name beside the destination (not a ``.montage-ray-`` work folder: never swept).
CACHE_DIRNAME = ".montage-ray.cache"

#: Bumped when an entry's layout or meaning changes: older entries are then simply not found.
FORMAT = 2

#: Hex digits of an entry's key: the first half names the segment's packet range (and the job's base), the
#: second the cut piece it was made from (sha256 prefixes).
KEY_LENGTH = 40
RANGE_LENGTH = 20

#: Entries (and leftover temporary files) older than this are removed when a job opens the cache.
MAX_AGE_SECONDS = 7 * 24 * 3600
TMP_MAX_AGE_SECONDS = 3600

#: The most bytes the folder holds (``$MONTAGE_RAY_CACHE_MAX_BYTES`` overrides it): past it the oldest
#: entries of other jobs go first, and a piece that still does not fit is not kept.
MAX_BYTES_ENV = "MONTAGE_RAY_CACHE_MAX_BYTES"
DEFAULT_MAX_BYTES = 50 * 2**30

#: The tag that marks the folder as the cache's own (the Cache Directory Tagging Specification: backup
#: tools skip such folders); its last line says whether montage-ray made the folder (then it removes it once
#: empty) or adopted an empty one the user made (then it leaves the folder).
TAG_NAME = "CACHEDIR.TAG"
TAG_SIGNATURE = "Signature: 8a477f597d28d172789f06886806bc55"
TAG_TEXT = TAG_SIGNATURE + "\n# The segment cache of montage-ray (safe to delete).\n# montage-ray made this folder: {made}\n"

#: Options that do not change an encoded piece's bytes (or are checked otherwise: the packet range, the
#: encoder that made it, how it was verified). Every other option, present or future, is part of the key.
NOT_IN_KEY = frozenset({"segment_seconds", "address", "overwrite", "report", "timeline", "workers", "verify",
                        "encoders_config", "labels", "cache", "cache_dir", "keep_cache", "priority",
                        "allow_dv_loss"})

# The names the cache writes: sidecars, pieces, plans, and the temporary names of each while written.
_HEX = "[0-9a-f]"
_SIDECAR = re.compile(rf"({_HEX}{{{KEY_LENGTH}}})\.json")
_PIECE = re.compile(rf"({_HEX}{{{KEY_LENGTH}}})-{_HEX}{{8}}\.mp4")
_PLAN = re.compile(rf"plan-{_HEX}{{{KEY_LENGTH}}}\.json")
_TMP = re.compile(rf"\.(?P<name>{_SIDECAR.pattern}|{_PIECE.pattern}|{_PLAN.pattern}|CACHEDIR\.TAG)"
                  rf"\.tmp-(?P<pid>\d+)-{_HEX}+")

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=repr).encode()).hexdigest()


def piece_digest(path: str) -> str:
    """SHA-256 (hex) of the file at ``path``: what a cut or an encoded piece is, byte for byte."""
    fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        return _hash_file(fh)


def _hash_file(fh: Any) -> str:
    h = hashlib.sha256()
    for chunk in iter(lambda: fh.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def source_identity(packets: Any, stream: int) -> dict[str, Any]:
    """What identifies a source's plan: its video stream ``stream`` and a hash of that stream's packet table
    (``packets``, a :class:`~montage_ray.media.info.PacketIndex`: pts and key flags, in decode order). The
    source's bytes are checked piece by piece (the hash of each cut piece), so a changed size or mtime alone
    does not matter and an edit that keeps both is still seen."""
    table = hashlib.sha256()
    table.update(packets.pts.astype("<i8").tobytes())
    table.update(packets.key.astype("u1").tobytes())
    table.update(str(packets.last_duration).encode())
    return {"stream": stream, "packets": table.hexdigest()}


def settings_fingerprint(options: Any, settings: Any, ffmpeg_build: str = "") -> dict[str, Any]:
    """Every setting of a job that reaches the encoded bytes: the options (an
    :class:`~montage_ray.job.options.EncodeOptions`) but those in :data:`NOT_IN_KEY`, the actors' settings (a
    :class:`~montage_ray.encoders.records.JobSettings`: the profile's preset, the frame fit, the source's
    look) but the job id and the check, and the build of the driver's ffmpeg (``ffmpeg_build``,
    :attr:`~montage_ray.ffmpeg.caps.FFmpegCaps.build`), which cuts the pieces and joins them."""
    from montage_ray.util.version import VERSION as __version__

    opts = {f.name: repr(getattr(options, f.name)) for f in dataclasses.fields(options) if f.name not in NOT_IN_KEY}
    job = {f.name: repr(getattr(settings, f.name)) for f in dataclasses.fields(settings)
           if f.name not in ("job_id", "verify")}
    return {"options": opts, "settings": job, "montage_ray": __version__, "ffmpeg": ffmpeg_build}


def maker_id(label: str, encoder: str, config: Any, ffmpeg_build: str = "") -> str:
    """Who made a piece: the resource label, the encoder that serves it (e.g. ``cpu:libx264``), that label's
    configuration (``repr`` of its :class:`~montage_ray.encoders.config.LabelConfig`, or None) and the build
    of the ffmpeg that encoded it (pieces of one build can lose a frame when another joins them)."""
    return _digest([label, encoder, repr(config), ffmpeg_build])[:24]


def max_bytes() -> int:
    """The cache's cap in bytes: ``$MONTAGE_RAY_CACHE_MAX_BYTES``, else :data:`DEFAULT_MAX_BYTES`."""
    raw = os.environ.get(MAX_BYTES_ENV, "")
    try:
        return max(0, int(float(raw))) if raw else DEFAULT_MAX_BYTES
    except ValueError:
        return DEFAULT_MAX_BYTES


def _own_name(name: str) -> bool:
    """Whether ``name`` is one the cache writes (a sidecar, a piece, a plan, or one of those being written)."""
    return any(p.fullmatch(name) for p in (_SIDECAR, _PIECE, _PLAN, _TMP))


def folder_refusal(folder: str) -> str | None:
    """Why ``folder`` cannot be a segment cache, in a few words; None when it can: it is absent (made on the
    first store, in a parent that is a real folder), or this user's real folder that no one else may write
    and that is empty, tagged by montage-ray, or holds only names the cache makes."""
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        return None
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a folder"
    if info.st_uid != os.getuid():
        return f"belongs to another user (uid {info.st_uid})"
    if info.st_mode & 0o022:
        return f"can be written by other users (mode {stat.S_IMODE(info.st_mode):04o})"
    try:
        names = os.listdir(folder)
    except OSError as err:
        return f"cannot be read ({err.strerror})"
    if TAG_NAME in names and _tag_made(folder) is not None:
        return None
    if all(_own_name(n) for n in names):
        return None
    return "holds files that montage-ray did not write (give an empty folder or a new name)"


def _tag_made(folder: str, dir_fd: int | None = None) -> bool | None:
    """Whether the tag in ``folder`` says montage-ray made it; None when there is no tag of montage-ray's."""
    try:
        fd = os.open(TAG_NAME if dir_fd is not None else os.path.join(folder, TAG_NAME),
                     os.O_RDONLY | _NOFOLLOW | _CLOEXEC, dir_fd=dir_fd)
        with os.fdopen(fd, encoding="utf-8", errors="replace") as fh:
            text = fh.read(4096)
    except OSError:
        return None
    if not text.startswith(TAG_SIGNATURE) or "montage-ray made this folder: " not in text:
        return None
    return "montage-ray made this folder: yes" in text


class CacheRefused(OSError):
    """The folder is not the cache's to use (see :func:`folder_refusal`)."""


class SegmentCache:
    """The cached pieces of one source with one set of settings, in ``folder`` (made on the first store)."""

    def __init__(self, folder: str, source: dict[str, Any], settings: dict[str, Any], *,
                 cap: int | None = None) -> None:
        self.folder = os.path.abspath(folder)
        self._base = _digest({"format": FORMAT, "source": source, "settings": settings})
        self.cap = max_bytes() if cap is None else cap
        self.broken = False      # a store failed (disk full, permissions): the job goes on without storing
        self.full = False        # a piece did not fit under the cap (told once)
        self.stored = 0
        self._usage: int | None = None      # bytes in the folder, counted at the first store
        self._mine: list[str] = []          # keys this object stored or took (see discard)
        self._plans: list[str] = []         # plan files it wrote

    def refusal(self) -> str | None:
        """Why the folder cannot be this cache (see :func:`folder_refusal`); None when it can."""
        return folder_refusal(self.folder)

    # -- names --------------------------------------------------------------------------------------
    def range_key(self, segment: Segment) -> str:
        """The first half of the keys of ``segment``'s entries: this cache's base and every field of the
        segment but its index (the packet range, its start and duration), so any plan that has the same
        range finds them."""
        fields = {k: v for k, v in dataclasses.asdict(segment).items() if k != "index"}
        return _digest([self._base, fields])[:RANGE_LENGTH]

    def key(self, segment: Segment, cut: str) -> str:
        """The key of ``segment``'s entry made from the cut piece whose SHA-256 is ``cut``."""
        head = self.range_key(segment)
        return head + _digest([head, cut])[:KEY_LENGTH - RANGE_LENGTH]

    def _plan_name(self, plan_key: Any) -> str:
        return f"plan-{_digest([self._base, plan_key])[:KEY_LENGTH]}.json"

    # -- the folder ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _dir(self, *, create: bool = False) -> Iterator[int]:
        """A descriptor of the folder, opened without following a link and checked to be this user's and
        not writable by others; with ``create`` the folder is made (0700, tagged) or an acceptable one
        adopted. Raises FileNotFoundError when it is absent, :class:`CacheRefused` when it is not ours."""
        if create:
            self._claim()
        fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW | _CLOEXEC)
        try:
            info = os.fstat(fd)
            if info.st_uid != os.getuid() or info.st_mode & 0o022:
                raise CacheRefused(errno.EPERM, f"segment cache {self.folder!r} is not this user's private folder")
            yield fd
        finally:
            os.close(fd)

    def _claim(self) -> None:
        """Make the folder, or adopt it when :func:`folder_refusal` allows, and tag it as the cache's."""
        made = False
        if not os.path.lexists(self.folder):
            parent = os.path.dirname(self.folder)
            if not os.path.isdir(parent):
                os.makedirs(parent, mode=0o700, exist_ok=True)
            try:
                os.mkdir(self.folder, 0o700)
                made = True
            except FileExistsError:
                pass
        why = folder_refusal(self.folder)
        if why is not None:
            raise CacheRefused(errno.EPERM, f"segment cache {self.folder!r} {why}")
        if _tag_made(self.folder) is None:
            fresh = made
            made = made or bool(os.listdir(self.folder))  # only names the cache makes: an untagged cache
            fd = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW | _CLOEXEC)
            try:
                self._write(fd, TAG_NAME, TAG_TEXT.format(made="yes" if made else "no").encode())
            except OSError:
                if fresh:  # a folder made just now whose tag did not fit (a full disk) is not left behind
                    with contextlib.suppress(OSError):
                        os.rmdir(self.folder)
                raise
            finally:
                os.close(fd)

    def _names(self, fd: int) -> list[str]:
        return os.listdir(fd)

    def _remove(self, fd: int, name: str) -> bool:
        """Remove ``name`` from the folder if it is one of the cache's names and a regular file or a link of
        this user's (never what a link points to); True if removed."""
        if not _own_name(name):
            return False
        try:
            info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if info.st_uid != os.getuid() or not (stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)):
                return False
            os.unlink(name, dir_fd=fd)
            if self._usage is not None and stat.S_ISREG(info.st_mode):
                self._usage -= info.st_size
            return True
        except OSError:
            return False

    def _write(self, fd: int, name: str, data: bytes) -> None:
        """``name`` in the folder becomes ``data`` (0600): written under a temporary name, then renamed."""
        tmp = f".{name}.tmp-{os.getpid()}-{secrets.token_hex(3)}"
        out = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | _NOFOLLOW | _CLOEXEC, 0o600, dir_fd=fd)
        try:
            with os.fdopen(out, "wb") as fh:
                fh.write(data)
            os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=fd)
            raise

    def _read_json(self, fd: int, name: str) -> Any:
        try:
            raw = os.open(name, os.O_RDONLY | _NOFOLLOW | _CLOEXEC, dir_fd=fd)
            with os.fdopen(raw, encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return None

    def _finish(self, fd: int) -> None:
        """Remove the folder when nothing but the tag is left in it and the cache made it (an empty folder
        the user made is left as it was found: untagged)."""
        try:
            names = self._names(fd)
        except OSError:
            return
        if names != [TAG_NAME]:
            return
        made = _tag_made(self.folder, fd)
        with contextlib.suppress(OSError):
            os.unlink(TAG_NAME, dir_fd=fd)
        if made:
            with contextlib.suppress(OSError):
                os.rmdir(self.folder)

    # -- reading ------------------------------------------------------------------------------------
    def _entry(self, fd: int, key: str) -> dict[str, Any] | None:
        entry = self._read_json(fd, key + ".json")
        return entry if isinstance(entry, dict) and entry.get("format") == FORMAT and entry.get("key") == key \
            else None

    def candidates(self, segments: Sequence[Segment], *, makers: Iterable[str], verify: str | Verify) -> list[Segment]:
        """The segments that have an entry this job could take (a maker serving it, checked as ``verify``
        asks), before their cut pieces are compared: the ones a re-run waits for the cut of."""
        makers = set(makers)
        try:
            with self._dir() as fd:
                keys: dict[str, list[str]] = {}
                for m in map(_SIDECAR.fullmatch, self._names(fd)):
                    if m:
                        keys.setdefault(m.group(1)[:RANGE_LENGTH], []).append(m.group(1))
                return [s for s in segments
                        if any((e := self._entry(fd, k)) is not None and self._usable(e, s, makers, verify)
                               for k in keys.get(self.range_key(s), ()))]
        except OSError:
            return []

    @staticmethod
    def _usable(entry: dict[str, Any], segment: Segment, makers: set[str], verify: str | Verify) -> bool:
        made = entry.get("result") if isinstance(entry.get("result"), dict) else {}
        return (entry.get("maker") in makers and entry.get("packets") == segment.frames
                and accepts(Verify.parse(verify), str(entry.get("verified", "")),
                            hardware=is_hardware(str(made.get("backend", ""))), standin=bool(made.get("standin")))
                and isinstance(entry.get("piece"), str) and _PIECE.fullmatch(entry["piece"]) is not None)

    def take(self, segment: Segment, dest: str, *, makers: Iterable[str], verify: str | Verify,
             cut: str) -> EncodeResult | None:
        """The cached piece of ``segment`` linked (or copied) to ``dest`` and its result (``reused``), or None
        when there is none this job may use: made from another cut piece than ``cut`` (the hash of the piece
        this run cut: the source changed there) or by an encoder not serving the job (``makers``), checked
        with less than ``verify`` asks for it (:func:`montage_ray.encoders.checks.accepts`: a piece only
        counted is taken unless this job would decode it), or not the bytes that were stored (its hash: then
        it is removed and the segment encoded again)."""
        key = self.key(segment, cut)
        try:
            with self._dir() as fd:
                entry = self._entry(fd, key)
                if entry is None or entry.get("cut") != cut or not self._usable(entry, segment, set(makers), verify):
                    return None
                piece = entry["piece"]
                if not piece.startswith(key + "-"):
                    return None
                try:
                    _place(fd, piece, dest)
                    same = piece_digest(dest) == entry.get("sha256")  # what is checked is what is used
                except OSError:
                    same = False
                if not same:
                    log.warning("cached piece of segment %d is not what was stored; encoding it again",
                                segment.index)
                    with contextlib.suppress(OSError):
                        os.unlink(dest)
                    self._remove_keys(fd, {key})
                    return None
        except OSError:
            return None
        fields = {f.name for f in dataclasses.fields(EncodeResult)}
        result = {k: v for k, v in entry.get("result", {}).items() if k in fields}
        try:
            reused = EncodeResult(**{**result, "segment": segment.index, "started": 0.0, "reused": True})
        except TypeError:
            os.unlink(dest)
            return None
        self._mine.append(key)
        return reused

    def plan(self, plan_key: Any, packets: int) -> list[Segment] | None:
        """The segments an earlier run of this job cut at (for the same ``plan_key``: the segment length
        asked for), if they still cover ``packets`` packets end to end; else None."""
        try:
            with self._dir() as fd:
                rows = self._read_json(fd, self._plan_name(plan_key))
            segments = [Segment(**row) for row in rows]
        except (OSError, TypeError):
            return None
        ends = [0] + [s.end_packet for s in segments]
        if not segments or ends[-1] != packets or any(
                s.index != i or s.first_packet != ends[i] or s.end_packet <= s.first_packet
                for i, s in enumerate(segments)):
            return None
        return segments

    # -- writing ------------------------------------------------------------------------------------
    def store(self, segment: Segment, result: EncodeResult, path: str, *, maker: str, verified: str, cut: str,
              plan: tuple[Any, Sequence[Segment]] | None = None) -> bool:
        """Keep the verified piece at ``path``, made from the cut piece whose hash is ``cut`` (and, with the
        first piece, the job's ``plan``: its key and segments); it is recorded as checked the way
        ``result.check`` says (else as ``verified``). A failure to write is logged once and turns storing off
        for the job; a piece that does not fit under the cap is not kept. Returns whether kept."""
        if self.broken:
            return False
        key = self.key(segment, cut)
        try:
            size = os.path.getsize(path)
            with self._dir(create=True) as fd:
                if not self._room(fd, size):
                    return False
                if plan is not None and self.stored == 0:
                    plan_key, segments = plan
                    name = self._plan_name(plan_key)
                    self._write(fd, name, json.dumps([dataclasses.asdict(s) for s in segments]).encode())
                    self._plans.append(name)
                name = f"{key}-{secrets.token_hex(4)}.mp4"
                tmp = f".{name}.tmp-{os.getpid()}-{secrets.token_hex(3)}"
                try:
                    digest = _put(path, fd, tmp)
                    os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
                finally:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp, dir_fd=fd)
                record = {k: v for k, v in dataclasses.asdict(result).items() if k != "stderr"}
                self._write(fd, key + ".json", json.dumps({
                    "format": FORMAT, "key": key, "piece": name, "bytes": size, "sha256": digest, "cut": cut,
                    "packets": result.frames, "verified": result.check or verified, "maker": maker, "stored": time.time(),
                    "plan": self._plans[0] if self._plans else None,
                    "segment": {k: v for k, v in dataclasses.asdict(segment).items() if k != "index"},
                    "result": record}).encode())
                self._usage = (self._usage or 0) + size
                for old in self._names(fd):  # an earlier piece of the same key (or one a kill left unnamed)
                    if old != name and _PIECE.fullmatch(old) and old.startswith(key + "-"):
                        self._remove(fd, old)
                # what the same range was made from before (the source changed there): of no more use
                self._remove_keys(fd, lambda k: k.startswith(key[:RANGE_LENGTH]) and k != key)
        except OSError as err:
            self.broken = True
            log.warning("segment cache %s: cannot store segment %d (%s); going on without storing", self.folder,
                        segment.index, err.strerror or err)
            # what the failed store did write (a piece renamed before its sidecar would not fit) is not left
            # without a sidecar; removing needs no space
            with contextlib.suppress(OSError), self._dir() as fd:
                self._remove_keys(fd, {key})
                self._finish(fd)
            return False
        self.stored += 1
        self._mine.append(key)
        return True

    def _room(self, fd: int, size: int) -> bool:
        """Whether ``size`` more bytes fit under the cap, after removing the oldest entries of other jobs."""
        if self._usage is None:
            self._usage = self._bytes(fd)
        if self._usage + size > self.cap:
            self._evict(fd, self._usage + size - self.cap)
        if self._usage + size <= self.cap:
            return True
        if not self.full:
            self.full = True
            log.warning("segment cache %s is full (cap %d MB); the rest of this job is not kept", self.folder,
                        self.cap // 10**6)
        return False

    def _bytes(self, fd: int) -> int:
        total = 0
        for name in self._names(fd):
            with contextlib.suppress(OSError):
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                total += info.st_size if stat.S_ISREG(info.st_mode) else 0
        return total

    # -- removing -----------------------------------------------------------------------------------
    def _remove_keys(self, fd: int, keys: set[str] | Callable[[str], bool]) -> None:
        """Remove the sidecars and every piece of ``keys`` (a set, or a test of a key), and the temporary
        files of their writes that a kill cut short (one look at the folder)."""
        wanted = keys.__contains__ if isinstance(keys, set) else keys
        for name in self._names(fd):
            tmp = _TMP.fullmatch(name)
            written = tmp.group("name") if tmp else name
            if (_SIDECAR.fullmatch(written) or _PIECE.fullmatch(written)) and wanted(written[:KEY_LENGTH]):
                if tmp is None or not _writer_alive(int(tmp.group("pid"))):
                    self._remove(fd, name)

    def clear(self, segments: Sequence[Segment], plan_key: Any = None) -> None:
        """Remove the entries of ``segments`` and the job's plan (of ``plan_key``, the segment length asked
        for: None is the automatic length), then the folder if empty: after a successful publish. Other
        jobs' entries in a shared ``--cache-dir`` stay."""
        try:
            with self._dir() as fd:
                ranges = {self.range_key(seg) for seg in segments}  # whatever cut piece each was made from
                self._remove_keys(fd, lambda k: k[:RANGE_LENGTH] in ranges)
                self._remove_plans(fd, {self._plan_name(plan_key), *self._plans})
                self._finish(fd)
        except OSError:
            pass  # not there, or not ours

    def discard(self) -> None:
        """Remove what this object stored or took (pieces and plan), then the folder if empty: for a job that
        stopped on a full disk (its pieces would hold the space the user must free) or whose joined file
        failed verification (a re-run must not take the same pieces again)."""
        try:
            with self._dir() as fd:
                self._remove_keys(fd, set(self._mine))
                self._remove_plans(fd, set(self._plans))
                self._finish(fd)
        except OSError:
            pass

    def _remove_plans(self, fd: int, plans: set[str]) -> None:
        for name in self._names(fd):
            tmp = _TMP.fullmatch(name)
            written = tmp.group("name") if tmp else name
            if written in plans and (tmp is None or not _writer_alive(int(tmp.group("pid")))):
                self._remove(fd, name)

    def prune(self, now: float | None = None) -> list[str]:
        """Tidy the folder when a job opens it; return the names removed. Entries older than
        :data:`MAX_AGE_SECONDS` (by the sidecar's time) go, with the plans no entry refers to any more;
        pieces without a sidecar, unreadable sidecars and temporary files go once
        :data:`TMP_MAX_AGE_SECONDS` old (or their writer is gone); then the oldest entries while the folder
        holds more than the cap. Only names the cache makes, in a folder that is its own, are touched."""
        now = time.time() if now is None else now
        removed: list[str] = []
        if self.refusal() is not None:
            return removed
        try:
            with self._dir() as fd:
                entries, young = self._survey(fd, now, removed)
                plans = {e.get("plan") for _, e in entries}
                for name in self._names(fd):
                    if _PLAN.fullmatch(name) and name not in plans and name not in young:
                        if self._remove(fd, name):
                            removed.append(name)
                if self._bytes(fd) > self.cap:
                    self._usage = self._bytes(fd)
                    removed += self._evict(fd, self._usage - self.cap, entries=entries)
                self._finish(fd)
        except OSError:
            pass
        return removed

    def _survey(self, fd: int, now: float, removed: list[str]) -> tuple[list[tuple[str, dict]], set[str]]:
        """The folder's live entries (key, sidecar) after removing the stale ones (into ``removed``), and the
        names still too young to judge (a store in progress writes the plan and the piece first)."""
        names = self._names(fd)
        sidecars = {m.group(1) for m in map(_SIDECAR.fullmatch, names) if m}
        entries, young = [], set()
        for name in names:
            try:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except OSError:
                continue
            age = now - info.st_mtime
            tmp = _TMP.fullmatch(name)
            if tmp:
                if age > TMP_MAX_AGE_SECONDS or not _writer_alive(int(tmp.group("pid"))):
                    if self._remove(fd, name):
                        removed.append(name)
                continue
            sidecar, piece = _SIDECAR.fullmatch(name), _PIECE.fullmatch(name)
            if sidecar:
                entry = self._entry(fd, sidecar.group(1))
                stored = entry.get("stored") if entry else None
                if entry is not None and isinstance(stored, (int, float)) and now - stored <= MAX_AGE_SECONDS:
                    entries.append((sidecar.group(1), entry))
                elif entry is not None or age > TMP_MAX_AGE_SECONDS:
                    self._remove_keys(fd, {sidecar.group(1)})
                    removed.append(name)
            elif piece and piece.group(1) not in sidecars and age > TMP_MAX_AGE_SECONDS:
                if self._remove(fd, name):
                    removed.append(name)
            elif age <= TMP_MAX_AGE_SECONDS:
                young.add(name)
        return entries, young

    def _evict(self, fd: int, excess: int, entries: list[tuple[str, dict]] | None = None) -> list[str]:
        """Remove the oldest entries of other jobs until ``excess`` bytes are freed; the names removed. A
        plan no entry refers to any more goes with the last entry of its job."""
        if entries is None:
            entries = [(k, e) for k, e in ((m.group(1), self._entry(fd, m.group(1)))
                                           for m in map(_SIDECAR.fullmatch, self._names(fd)) if m) if e]
        mine = set(self._mine)
        removed: list[str] = []
        freed = 0
        keep = [e for k, e in entries]
        for key, entry in sorted(entries, key=lambda ke: ke[1].get("stored") or 0):
            if freed >= excess:
                break
            if key in mine:
                continue
            before = self._usage or 0
            self._remove_keys(fd, {key})
            freed += max(0, before - (self._usage or 0))
            removed.append(key + ".json")
            keep.remove(entry)
            plan = entry.get("plan")
            if plan and all(e.get("plan") != plan for e in keep) and plan not in self._plans:
                self._remove(fd, plan)
        return removed


class CutDigests:
    """The SHA-256 of each cut piece of a job, computed once: for the cache's check of a reused piece and
    for the sidecar of each piece stored (``paths``: the cut's piece paths, by segment index)."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = paths
        self._known: dict[int, str] = {}

    def __call__(self, index: int) -> str:
        if index not in self._known:
            self._known[index] = piece_digest(self.paths[index])
        return self._known[index]


class ReplayedCut:
    """A :class:`~montage_ray.media.cut.Cut` whose pieces handed out so far (``seen``: to the cache's check)
    are handed out again first, so that the encode learns of them as well as of those still to come."""

    def __init__(self, cut: Any, seen: Sequence[int]) -> None:
        self._cut = cut
        self._backlog = list(seen)
        self.paths = cut.paths

    @property
    def finished(self) -> bool:
        return not self._backlog and self._cut.finished

    def ready(self, timeout: float = 0.0) -> list[int]:
        if self._backlog:
            out, self._backlog = self._backlog, []
            return out
        return self._cut.ready(timeout)

    def close(self) -> None:
        self._cut.close()


def reuse_from_cut(cache: SegmentCache, segments: Sequence[Segment], cut: Any, paths: Sequence[str], *,
                   makers: Iterable[str], verify: str | Verify,
                   digests: Callable[[int], str]) -> tuple[dict[int, EncodeResult], Any]:
    """The segments whose cached piece this job may take, each put at ``paths[index]`` (index -> its result,
    ``reused``), and the cut to encode the rest from (a :class:`ReplayedCut` when pieces were taken from it
    here). Only segments with an entry are waited for: the cut goes on until each of them is cut, its piece
    hashed (``digests``) and compared with the one the entry was made from."""
    makers = set(makers)
    wanted = {s.index for s in cache.candidates(segments, makers=makers, verify=verify)}
    if not wanted:
        return {}, cut
    seen: list[int] = []
    while not wanted <= set(seen) and not cut.finished:
        seen += cut.ready(1.0)
    by_index = {s.index: s for s in segments}
    todo = [by_index[i] for i in sorted(wanted & set(seen))]
    with ThreadPoolExecutor(4, thread_name_prefix="cache") as side:
        found = side.map(lambda s: cache.take(s, paths[s.index], makers=makers, verify=verify,
                                              cut=digests(s.index)), todo)
        reused = {r.segment: r for r in found if r is not None}
    if reused:
        log.info("reusing %d of %d segments from %s", len(reused), len(segments), cache.folder)
    return reused, ReplayedCut(cut, seen)


def _put(src: str, fd: int, name: str) -> str:
    """``name`` in the folder ``fd`` becomes ``src``'s content (0600): a hard link on the same filesystem (no
    bytes copied), else a copy; returns its SHA-256."""
    try:
        os.link(src, name, dst_dir_fd=fd, follow_symlinks=False)
    except OSError as err:
        if err.errno == errno.EEXIST:
            raise
        out = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY | _NOFOLLOW | _CLOEXEC, 0o600, dir_fd=fd)
        h = hashlib.sha256()
        with os.fdopen(out, "wb") as dst, open(src, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
                dst.write(chunk)
        return h.hexdigest()
    raw = os.open(name, os.O_RDONLY | _NOFOLLOW | _CLOEXEC, dir_fd=fd)
    with os.fdopen(raw, "rb") as fh:
        os.fchmod(fh.fileno(), 0o600)
        return _hash_file(fh)


def _place(fd: int, name: str, dest: str) -> None:
    """``dest`` becomes the content of the regular file ``name`` of the folder ``fd`` (a link is never
    followed): a hard link where it can be, else a copy."""
    info = os.stat(name, dir_fd=fd, follow_symlinks=False)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
        raise OSError(errno.EPERM, "not a regular file of this user's")
    try:
        os.link(name, dest, src_dir_fd=fd, follow_symlinks=False)
        return
    except OSError as err:
        if err.errno == errno.EEXIST:
            raise
    raw = os.open(name, os.O_RDONLY | _NOFOLLOW | _CLOEXEC, dir_fd=fd)
    with os.fdopen(raw, "rb") as src, open(dest, "xb") as out:
        for chunk in iter(lambda: src.read(1 << 20), b""):
            out.write(chunk)


def _writer_alive(pid: int) -> bool:
    """Whether process ``pid`` (the writer of a temporary file) still runs here."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process
    return True
