"""Encoded segments kept across runs: a job that was killed (SIGKILL, Ctrl-C, a reboot) and is run again
with the same command encodes only the segments it had not finished.

A :class:`SegmentCache` is a folder (``.montage-ray.cache`` beside the destination, or ``--cache-dir``) of
entries, one per encoded and **verified** segment: the piece (``<key>-<token>.mp4``) and a JSON sidecar
(``<key>.json``: encoder, frames, packets, bytes, timings, how it was verified). The key hashes everything
that determines the piece's bytes: the source's identity (size, mtime and a hash of the packet table the
job already read), the segment's packet range, every job setting that reaches the encoder (codec, quality,
preset, profile, frame fit, ... :func:`settings_fingerprint`) and montage-ray's version. The encoder that
made a piece (label, encoder and its configuration) is checked on the way out: a piece is reused only when
an encoder of the same kind serves the job now. A changed source or setting gives other keys, so a stale
piece is never reused.

Each file is written atomically (:mod:`montage_ray.util.files`), the sidecar last, so a killed job leaves whole
entries or none; a piece is re-checked before it is trusted (its size and packet count against the sidecar).
The plan of the job is kept beside the pieces (``plan-<key>.json``), so that a re-run cuts at the same
packets even where the segment length depends on measured speeds. After a successful publish the job's
entries are removed (unless ``--keep-cache``), the folder too once empty; entries nobody came back for are
removed after :data:`MAX_AGE_SECONDS`. Outside the job's work folder, so the sweep of a killed job's
folder (:mod:`montage_ray.util.workdirs`) leaves the cache alone::

    from montage_ray.job.cache import SegmentCache, maker_id, settings_fingerprint, source_identity

    cache = SegmentCache("/videos/.montage-ray.cache", source_identity(info.path, info.packets, info.video.index),
                         settings_fingerprint(options, settings))
    cpu = maker_id("cpu", "cpu:libx264", None)
    cache.store(segment, result, "/work/enc-000000.mp4", maker=cpu, verified="decode")  # once the actor checked it
    again = cache.take(segment, "/work2/enc-000000.mp4", makers={cpu}, verify="decode")  # the next run
    again.reused, again.encoder                         # (True, 'cpu:libx264'): an EncodeResult, or None
    cache.clear(segments)                               # after the destination was published

Why keep the plan as well as key by range: the automatic segment length is shorter when encoder speeds are
known (actors reused in one Ray session), so the same command can plan other cuts on a re-run. Keying each
piece by its own packet range means any plan that has the same range finds it; taking the killed run's plan
(checked to cover the stream end to end, and only for the same ``--segment-seconds``) means every range
matches. The ffmpeg version is recorded but not part of the key: segments of different versions join (the
mixed-version cluster test).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from typing import Any, Iterable, Sequence

from montage_ray.util import files
from montage_ray.errors import FFmpegError
from montage_ray.media.plan import Segment
from montage_ray.encoders.segment import count_packets
from montage_ray.encoders.records import EncodeResult
from montage_ray.encoders.backends import is_hardware
from montage_ray.encoders.checks import Verify, accepts

log = logging.getLogger(__name__)

#: The cache folder's name beside the destination (not a ``.montage-ray-`` work folder: never swept).
CACHE_DIRNAME = ".montage-ray.cache"

#: Bumped when an entry's layout or meaning changes: older entries are then simply not found.
FORMAT = 1

#: Hex digits of an entry's key (a sha256 prefix).
KEY_LENGTH = 40

#: Entries (and leftover temporary files) older than this are removed when a job opens the cache.
MAX_AGE_SECONDS = 7 * 24 * 3600
TMP_MAX_AGE_SECONDS = 3600

#: Options that do not change an encoded piece's bytes (or are checked otherwise: the packet range, the
#: encoder that made it, how it was verified). Every other option, present or future, is part of the key.
NOT_IN_KEY = frozenset({"segment_seconds", "address", "overwrite", "report", "timeline", "workers", "verify",
                        "encoders_config", "labels", "cache", "cache_dir", "keep_cache", "priority",
                        "allow_dv_loss"})


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=repr).encode()).hexdigest()


def source_identity(path: str, packets: Any, stream: int) -> dict[str, Any]:
    """What identifies a source: its size and mtime now, and a hash of its video packet table (``packets``,
    a :class:`~montage_ray.media.info.PacketIndex`: pts and key flags, in decode order) of stream ``stream``."""
    st = os.stat(path)
    table = hashlib.sha256()
    table.update(packets.pts.astype("<i8").tobytes())
    table.update(packets.key.astype("u1").tobytes())
    table.update(str(packets.last_duration).encode())
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "stream": stream, "packets": table.hexdigest()}


def settings_fingerprint(options: Any, settings: Any) -> dict[str, Any]:
    """Every setting of a job that reaches the encoded bytes: the options (an
    :class:`~montage_ray.job.options.EncodeOptions`) but those in :data:`NOT_IN_KEY`, and the actors' settings (a
    :class:`~montage_ray.encoders.records.JobSettings`: the profile's preset, the frame fit, the source's
    look) but the job id and the check."""
    from montage_ray.util.version import VERSION as __version__

    opts = {f.name: repr(getattr(options, f.name)) for f in dataclasses.fields(options) if f.name not in NOT_IN_KEY}
    job = {f.name: repr(getattr(settings, f.name)) for f in dataclasses.fields(settings)
           if f.name not in ("job_id", "verify")}
    return {"options": opts, "settings": job, "montage_ray": __version__}


def maker_id(label: str, encoder: str, config: Any) -> str:
    """Who made a piece: the resource label, the encoder that serves it (e.g. ``cpu:libx264``) and that
    label's configuration (``repr`` of its :class:`~montage_ray.encoders.config.LabelConfig`, or None)."""
    return _digest([label, encoder, repr(config)])[:24]


class SegmentCache:
    """The cached pieces of one source with one set of settings, in ``folder`` (made on the first store)."""

    def __init__(self, folder: str, source: dict[str, Any], settings: dict[str, Any]) -> None:
        self.folder = os.path.abspath(folder)
        self._base = _digest({"format": FORMAT, "source": source, "settings": settings})
        self.broken = False      # a store failed (disk full, permissions): the job goes on without storing
        self.stored = 0
        self._mine: list[str] = []          # keys this object stored or took (see discard)
        self._plans: list[str] = []         # plan files it wrote

    # -- names --------------------------------------------------------------------------------------
    def key(self, segment: Segment) -> str:
        """The key of ``segment``'s piece: this cache's base and every field of the segment but its index
        (the packet range, its start and duration), so any plan that has the same range finds it."""
        fields = {k: v for k, v in dataclasses.asdict(segment).items() if k != "index"}
        return _digest([self._base, fields])[:KEY_LENGTH]

    def _sidecar(self, key: str) -> str:
        return os.path.join(self.folder, key + ".json")

    def _plan_file(self, plan_key: Any) -> str:
        return os.path.join(self.folder, f"plan-{_digest([self._base, plan_key])[:40]}.json")

    # -- reading ------------------------------------------------------------------------------------
    def _entry(self, key: str) -> dict[str, Any] | None:
        try:
            with open(self._sidecar(key), encoding="utf-8") as fh:
                entry = json.load(fh)
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) and entry.get("format") == FORMAT and entry.get("key") == key \
            else None

    def take(self, segment: Segment, dest: str, *, makers: Iterable[str], verify: str | Verify) -> EncodeResult | None:
        """The cached piece of ``segment`` linked (or copied) to ``dest`` and its result (``reused``), or None
        when there is none this job may use: made by an encoder not serving the job (``makers``), checked
        with less than ``verify`` asks for it (:func:`montage_ray.encoders.checks.accepts`: a piece only counted
        is taken unless this job would decode it), or not what its sidecar says
        (size, packet count: then it is removed)."""
        key = self.key(segment)
        entry = self._entry(key)
        if entry is None or entry.get("maker") not in set(makers):
            return None
        made = entry.get("result") if isinstance(entry.get("result"), dict) else {}
        if not accepts(Verify.parse(verify), str(entry.get("verified", "")),
                       hardware=is_hardware(str(made.get("backend", ""))), standin=bool(made.get("standin"))):
            return None
        piece = os.path.join(self.folder, os.path.basename(str(entry.get("piece", ""))))
        try:
            if os.path.getsize(piece) != entry.get("bytes"):
                raise OSError("size differs")
            _link_or_copy(piece, dest)
        except OSError:
            self._forget(key)
            return None
        # checked on the copy the job will join: what was counted is what is used
        try:
            packets = count_packets(dest)
        except FFmpegError:
            packets = -1
        if entry.get("packets") != segment.frames or packets != segment.frames:
            log.warning("cached piece of segment %d is damaged; encoding it again", segment.index)
            os.unlink(dest)
            self._forget(key)
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
            with open(self._plan_file(plan_key), encoding="utf-8") as fh:
                rows = json.load(fh)
            segments = [Segment(**row) for row in rows]
        except (OSError, ValueError, TypeError):
            return None
        ends = [0] + [s.end_packet for s in segments]
        if not segments or ends[-1] != packets or any(
                s.index != i or s.first_packet != ends[i] or s.end_packet <= s.first_packet
                for i, s in enumerate(segments)):
            return None
        return segments

    # -- writing ------------------------------------------------------------------------------------
    def store(self, segment: Segment, result: EncodeResult, path: str, *, maker: str, verified: str,
              plan: tuple[Any, Sequence[Segment]] | None = None) -> bool:
        """Keep the verified piece at ``path`` (and, with the first piece, the job's ``plan``: its key and
        segments); it is recorded as checked the way ``result.check`` says (else as ``verified``). A failure to write is logged once and turns storing off for the job; returns whether kept."""
        if self.broken:
            return False
        key = self.key(segment)
        try:
            if not os.path.isdir(self.folder):
                os.makedirs(self.folder, mode=0o700, exist_ok=True)
            if plan is not None and self.stored == 0:
                plan_key, segments = plan
                self._write_json(self._plan_file(plan_key), [dataclasses.asdict(s) for s in segments])
                self._plans.append(self._plan_file(plan_key))
            name = f"{key}-{secrets.token_hex(4)}.mp4"
            tmp = os.path.join(self.folder, f".{name}.tmp-{os.getpid()}")
            try:
                _link_or_copy(path, tmp)
                files.publish(tmp, os.path.join(self.folder, name), overwrite=True, what="cached segment")
            finally:
                if os.path.lexists(tmp):
                    os.unlink(tmp)
            record = {k: v for k, v in dataclasses.asdict(result).items() if k != "stderr"}
            self._write_json(self._sidecar(key), {
                "format": FORMAT, "key": key, "piece": name, "bytes": os.path.getsize(path),
                "packets": result.frames, "verified": result.check or verified, "maker": maker, "stored": time.time(),
                "segment": {k: v for k, v in dataclasses.asdict(segment).items() if k != "index"}, "result": record})
            for old in self._pieces(key):  # an earlier piece of the same key (or one a kill left unnamed)
                if os.path.basename(old) != name:
                    _remove(old)
        except OSError as err:
            self.broken = True
            log.warning("segment cache %s: cannot store segment %d (%s); going on without storing", self.folder,
                        segment.index, err.strerror or err)
            return False
        self.stored += 1
        self._mine.append(key)
        return True

    def _write_json(self, path: str, value: Any) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(value, fh)

        files.write_atomically(path, write, overwrite=True, what="cache entry")

    # -- removing -----------------------------------------------------------------------------------
    def _pieces(self, key: str) -> list[str]:
        """Every piece file of ``key``: the one its sidecar names, and any a killed store left without one."""
        try:
            return [os.path.join(self.folder, n) for n in os.listdir(self.folder)
                    if n.startswith(key + "-") and n.endswith(".mp4")]
        except OSError:
            return []

    def _forget(self, key: str) -> None:
        self._remove_keys({key})

    def _remove_keys(self, keys: set[str]) -> None:
        """Remove the sidecars and every piece of ``keys`` (one look at the folder)."""
        try:
            names = os.listdir(self.folder)
        except OSError:
            return
        for name in names:  # <key>.json, <key>-<token>.mp4, and .<either>.tmp-<pid>... of a write cut short
            written = name[1:] if name.startswith(".") and ".tmp-" in name else name
            if written[:KEY_LENGTH] in keys and written[KEY_LENGTH:KEY_LENGTH + 1] in ("-", "."):
                if written is name or not _writer_alive(name):
                    _remove(os.path.join(self.folder, name))

    def clear(self, segments: Sequence[Segment], plan_key: Any = None) -> None:
        """Remove the entries of ``segments`` (and the plan of ``plan_key``: None is the automatic lengths'
        key), then the folder if empty: after a successful publish. Other jobs' entries in a shared
        ``--cache-dir`` stay."""
        self._remove_keys({self.key(seg) for seg in segments})
        # the plan goes too (the next job plans afresh, with the speeds this one measured)
        plan = self._plan_file(plan_key)
        _remove(plan)
        for name in os.listdir(self.folder) if os.path.isdir(self.folder) else ():
            if name.startswith("." + os.path.basename(plan) + ".tmp-") and not _writer_alive(name):
                _remove(os.path.join(self.folder, name))
        try:
            os.rmdir(self.folder)
        except OSError:
            pass  # not empty (another job's entries), or not there

    def discard(self) -> None:
        """Remove what this object stored or took (pieces and plan), then the folder if empty: for a job that
        stopped on a full disk (its pieces would hold the space the user must free) or whose joined file
        failed verification (a re-run must not take the same pieces again)."""
        self._remove_keys(set(self._mine))
        for path in self._plans:
            _remove(path)
        try:
            os.rmdir(self.folder)
        except OSError:
            pass

    def prune(self, now: float | None = None) -> list[str]:
        """Remove entries older than :data:`MAX_AGE_SECONDS` (by the sidecar's time) and temporary files of
        writes that were cut short; return what was removed. Pieces no sidecar names are kept only while
        young (a store in progress writes the piece first)."""
        now = time.time() if now is None else now
        removed = []
        try:
            names = os.listdir(self.folder)
        except OSError:
            return removed
        for name in names:
            path = os.path.join(self.folder, name)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            age = now - info.st_mtime
            stale = age > (TMP_MAX_AGE_SECONDS if ".tmp-" in name else MAX_AGE_SECONDS)
            if stale and not os.path.isdir(path) and info.st_uid == os.getuid():
                _remove(path)
                removed.append(path)
        return removed


def _link_or_copy(src: str, dst: str) -> None:
    """``dst`` becomes ``src``'s content: a hard link on the same filesystem (no bytes copied), else a copy."""
    try:
        os.link(src, dst)
    except FileExistsError:
        raise
    except OSError:  # another filesystem, or one without hard links
        shutil.copyfile(src, dst)


def _writer_alive(tmp_name: str) -> bool:
    """Whether the process that writes temporary file ``tmp_name`` (``.<name>.tmp-<pid>[-...]``) still runs here."""
    try:
        pid = int(tmp_name.rsplit(".tmp-", 1)[1].split("-")[0].split(".")[0])
        os.kill(pid, 0)
    except (IndexError, ValueError):
        return False
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process
    return True


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
