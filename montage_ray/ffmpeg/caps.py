"""What this ffmpeg can do, learnt by asking it: version, options, bitstream filters, muxer options.

A cluster is also a cluster of ffmpeg builds (4.2 on Ubuntu 20.04 and patched Jetson builds, 5.1 on
Debian 12, 7.x and 9.x static builds). Every command montage-ray runs is spelt for the ffmpeg that runs it
(see :mod:`montage_ray.ffmpeg.commands`), from an :class:`FFmpegCaps` read once per binary path::

    from montage_ray.ffmpeg.caps import ffmpeg_caps

    caps = ffmpeg_caps("/usr/bin/ffmpeg")      # cached per real path
    caps.version, caps.passthrough             # '5.1.6', ('-fps_mode', 'passthrough')
    caps.enc_time_base                         # '-1' (ffmpeg 9 takes only 'demux')
    caps.adaptations                           # ('this ffmpeg (4.2.2) lacks -fps_mode; ...',) on 4.2

Option names come from ``-h full``, bitstream filters from ``-bsfs``, filters from ``-filters`` (the quality
metrics ``psnr``, ``ssim``, ``xpsnr`` from 7.1, ``libvmaf`` where it was built with it), muxer options from
``-h muxer=...``; where the help text lies (ffmpeg 9 still documents ``-enc_time_base -1`` but refuses it) a tiny real run of
one generated frame decides. Nothing here trusts the version string alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from montage_ray.ffmpeg import queries, tool

#: The oldest ffmpeg montage-ray supports, and what each feature it uses needs (first version that has it;
#: checked against the real 4.2.2, 5.1, 7.0.2 and 9.0.2 builds).
OLDEST_SUPPORTED = "4.2"
SINCE = {
    "fps_mode": "5.1",            # older: -vsync passthrough (removed in 9.0)
    "vsync": "1.0 (removed in 9.0)",
    "readrate": "5.0",
    "display_rotation": "7.0",   # older: -metadata:s:v rotate= on stream copy (ignored from 7.0)
    "enc_time_base demux": "7.0",  # older: -enc_time_base -1 (refused from 9.0)
    "enc_time_base": "4.0",
    "setts": "4.4",               # bitstream filter used to align decode delays of mixed encoders
    "progress": "2.0",
    "dump_extra": "2.0",
    "xpsnr": "7.1",               # filters that measure quality (--target-quality; see montage_ray.encoders.quality)
    "libvmaf": "4.0 (built with --enable-libvmaf)",
    "opus in mp4": "5.0",          # older: the MP4 muxer refuses Opus unless told -strict experimental
}

#: Options montage-ray needs in every command; an ffmpeg without one of them cannot take part.
REQUIRED_OPTIONS = ("progress", "autorotate", "enc_time_base", "map_metadata", "bsf")  # -noautorotate: -autorotate

# Names may hold a dash after the first character (encoders' private -x265-params, -svtav1-params).
_OPTION_LINE = re.compile(r"^\s{0,2}-([A-Za-z0-9_][A-Za-z0-9_-]*)(?=[\s<[])", re.MULTILINE)
_FILTER_LINE = re.compile(r"^\s*[A-Z.|]{2,3}\s+(\w+)\s+\S+->\S+", re.MULTILINE)
_VERSION = re.compile(r"ffmpeg version \D{0,2}(\d+)\.(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class FFmpegCaps:
    """The features one ffmpeg binary has, and how montage-ray spells each option for it."""

    path: str
    version: str                          # "4.2.2", "9.0.2", "N-112345-g..." for git builds
    major: int                            # 0 when the version string is not a release number
    options: frozenset[str]               # command-line options from -h full (without the dash)
    bsfs: frozenset[str]                  # bitstream filters from -bsfs
    muxer_options: frozenset[str]         # options of the mp4, segment muxers and the concat demuxer
    enc_time_base: str | None             # the value that means "the source's time base": "-1" or "demux"
    filters: frozenset[str] = frozenset()  # filters from -filters (quality metrics: psnr, ssim, xpsnr, libvmaf)
    build: str = ""                       # hash of ``-version``'s whole text: version, compiler, configure, libs

    @property
    def passthrough(self) -> tuple[str, str]:
        """Keep every frame's timestamp: ``-fps_mode passthrough`` (5.1+) or ``-vsync passthrough``."""
        return ("-fps_mode", "passthrough") if "fps_mode" in self.options else ("-vsync", "passthrough")

    @property
    def display_rotation(self) -> bool:
        """Whether the display matrix is set with the input option ``-display_rotation`` (7.0+); older
        builds turn the ``rotate`` stream tag into a display matrix on stream copy instead."""
        return "display_rotation" in self.options

    @property
    def readrate(self) -> bool:
        return "readrate" in self.options

    @property
    def progress(self) -> bool:
        return "progress" in self.options

    @property
    def mp4_opus(self) -> bool:
        """Whether this ffmpeg's MP4 muxer writes Opus audio as a regular feature: 4.x refuses it (its
        "experimental" Opus-in-MP4 needs ``-strict experimental``), so an Opus source is encoded to AAC for an
        MP4 output there, decided before any segment is encoded. Checked with 4.2.2 (refuses), 5.1, 7.0.2 and
        9.0.2 (write it); a git build (no release number) is taken to be recent."""
        return self.major == 0 or self.major >= 5

    def has_bsf(self, name: str) -> bool:
        return name in self.bsfs

    def has_filter(self, name: str) -> bool:
        return name in self.filters

    @property
    def adaptations(self) -> tuple[str, ...]:
        """What montage-ray spells differently for this ffmpeg, one sentence each (the probe shows them)."""
        notes = []
        if "fps_mode" not in self.options:
            notes.append(f"this ffmpeg ({self.version}) lacks -fps_mode; montage-ray uses -vsync passthrough "
                         "instead")
        if self.enc_time_base == "demux":
            notes.append(f"this ffmpeg ({self.version}) refuses -enc_time_base -1; montage-ray uses "
                         "-enc_time_base demux instead")
        if not self.display_rotation:
            notes.append(f"this ffmpeg ({self.version}) lacks -display_rotation; montage-ray keeps rotation "
                         "with the rotate stream tag instead")
        return tuple(notes)

    @property
    def limits(self) -> tuple[str, ...]:
        """Features this ffmpeg lacks that montage-ray cannot work around, with the oldest version that has
        each (jobs that need them fail with this sentence; the rest works)."""
        notes = []
        if not self.readrate:
            notes.append(self.missing("readrate", "throttled CPU stand-ins (readrate in the encoders file)"))
        if not self.has_bsf("setts"):
            notes.append(self.missing("setts", "joining segments of differently configured encoders "
                                               "on the driver"))
        return tuple(notes)

    @property
    def unusable(self) -> str | None:
        """Why montage-ray cannot use this ffmpeg at all (None when it can)."""
        for name in REQUIRED_OPTIONS:
            if name not in self.options:
                return self.missing(name, "every encode")
        if "vsync" not in self.options and "fps_mode" not in self.options:
            return self.missing("fps_mode", "every encode")
        if self.enc_time_base is None:
            return self.missing("enc_time_base", "every encode")
        if not self.has_bsf("dump_extra"):
            return self.missing("dump_extra", "every encode")
        return None

    _FILTERS = ("psnr", "ssim", "xpsnr", "libvmaf")

    def missing(self, feature: str, needed_for: str) -> str:
        spelt = feature if feature in ("setts", "dump_extra") or " " in feature or feature in self._FILTERS \
            else "-" + feature
        kind = ("the bitstream filter " if feature in ("setts", "dump_extra")
                else "the filter " if feature in self._FILTERS else "")
        return (f"this ffmpeg ({self.version}) lacks {kind}{spelt}, needed for {needed_for}; "
                f"ffmpeg {SINCE.get(feature, '?')} and newer have it")

    def to_json(self) -> dict[str, object]:
        return {"path": self.path, "version": self.version, "passthrough": " ".join(self.passthrough),
                "enc_time_base": self.enc_time_base, "display_rotation": self.display_rotation,
                "readrate": self.readrate, "adaptations": list(self.adaptations), "limits": list(self.limits)}


def parse_version(text: str) -> tuple[str, int]:
    """(version, major) from ``ffmpeg -version``'s first line (``n9.0.2-17-g...`` -> ``9.0.2``)."""
    first = text.strip().splitlines()[0] if text.strip() else ""
    found = _VERSION.search(first)
    if not found:
        word = first.split()[2] if len(first.split()) > 2 else "unknown"
        return word, 0
    parts = [p for p in found.groups() if p is not None]
    return ".".join(parts), int(parts[0])


def build_id(version_text: str) -> str:
    """Which build an ffmpeg is: a hash of its ``-version`` text (version, compiler, configure line and the
    libraries' versions), so that two builds of one release number are told apart."""
    return hashlib.sha256(version_text.strip().encode()).hexdigest()[:16]


def parse_options(help_text: str) -> frozenset[str]:
    """Option names listed by ``ffmpeg -h full`` (``-fps_mode[:<stream_spec>]`` on 7.0+ included)."""
    return frozenset(m.group(1) for m in _OPTION_LINE.finditer(help_text))


def parse_filters(text: str) -> frozenset[str]:
    """Filter names listed by ``ffmpeg -filters`` (three flag columns up to 6.x, two from 7.0)."""
    return frozenset(m.group(1) for m in _FILTER_LINE.finditer(text))


def _enc_time_base(ffmpeg: str, timeout: float) -> str | None:
    """The ``-enc_time_base`` value meaning "the source's": a one-frame real run of each spelling."""
    for value in ("-1", "demux"):
        # ffmpeg -f lavfi -i color=s=16x16:d=0.04 -frames:v 1 -c:v rawvideo -enc_time_base VALUE -f null -
        done = tool.run(queries.tiny_time_base_command(ffmpeg, value), timeout=timeout, check=False)
        if done.returncode == 0:
            return value
    return None


def detect(ffmpeg: str, *, timeout: float = 30.0) -> FFmpegCaps:
    """Ask ``ffmpeg`` what it can do (no cache: see :func:`ffmpeg_caps`). The nine questions are asked side by
    side: one after another they took 0.5-2 s, in front of every encoder actor's first answer."""
    def ask(*args: str, check: bool = False) -> str:
        return tool.run(queries.help_command(ffmpeg, *args), timeout=timeout, check=check).stdout

    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="montage-caps") as ask_all:
        about = ask_all.submit(ask, "-version", check=True)
        options = ask_all.submit(ask, "-h", "full")
        bsfs = ask_all.submit(ask, "-bsfs", check=True)
        filters = ask_all.submit(ask, "-filters")
        muxers = [ask_all.submit(ask, "-h", what) for what in ("muxer=mp4", "muxer=segment", "demuxer=concat")]
        time_base = ask_all.submit(_enc_time_base, ffmpeg, timeout)
        version, major = parse_version(about.result())
        muxer_options = {m.group(1) for text in muxers for m in re.finditer(r"^\s+-(\w+)\s", text.result(),
                                                                             re.MULTILINE)}
        return FFmpegCaps(path=ffmpeg, version=version, major=major, options=parse_options(options.result()),
                          bsfs=frozenset(line.strip() for line in bsfs.result().splitlines()[1:] if line.strip()),
                          muxer_options=frozenset(muxer_options), enc_time_base=time_base.result(),
                          filters=parse_filters(filters.result()), build=build_id(about.result()))


_cache: dict[str, FFmpegCaps] = {}
_lock = threading.Lock()

#: Bumped when :class:`FFmpegCaps` or what :func:`detect` asks changes, so older answers on disk are not read.
_DISK_FORMAT = 1


def caps_dir() -> str | None:
    """Where the answers of :func:`detect` are kept between processes: ``$MONTAGE_RAY_CAPS_CACHE``, else
    ``$XDG_CACHE_HOME/montage-ray/ffmpeg-caps``, else ``~/.cache/montage-ray/ffmpeg-caps``; ``off`` (or an
    empty value) keeps them in memory only. Every encoder actor is a process of its own, and asking one ffmpeg
    its nine questions is nine processes (each loading a distribution build's ~200 shared libraries): on a
    node that starts sixteen actors, 144 processes before the first segment."""
    chosen = os.environ.get("MONTAGE_RAY_CAPS_CACHE")
    if chosen is not None:
        return None if chosen.strip() in ("", "off") else chosen
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "montage-ray", "ffmpeg-caps")


def _disk_key(real: str) -> str | None:
    """The name of ``real``'s answers on disk: its path and the file's identity (device, inode, size, change
    and modification times), so a binary replaced or rebuilt in place is asked again; None when it is not a
    file this process can see (a name left for PATH to find)."""
    try:
        st = os.stat(real)
    except OSError:
        return None
    ident = f"{_DISK_FORMAT}|{real}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:32]


def _to_disk(caps: FFmpegCaps) -> dict[str, object]:
    return {"format": _DISK_FORMAT, "path": caps.path, "version": caps.version, "major": caps.major,
            "options": sorted(caps.options), "bsfs": sorted(caps.bsfs), "muxer_options": sorted(caps.muxer_options),
            "enc_time_base": caps.enc_time_base, "filters": sorted(caps.filters), "build": caps.build}


def _from_disk(data: dict, path: str) -> FFmpegCaps:
    if data.get("format") != _DISK_FORMAT:
        raise ValueError("another format")
    return FFmpegCaps(path=path, version=str(data["version"]), major=int(data["major"]),
                      options=frozenset(data["options"]), bsfs=frozenset(data["bsfs"]),
                      muxer_options=frozenset(data["muxer_options"]), enc_time_base=data["enc_time_base"],
                      filters=frozenset(data["filters"]), build=str(data["build"]))


def _load(real: str, path: str) -> FFmpegCaps | None:
    folder, key = caps_dir(), _disk_key(real)
    if folder is None or key is None:
        return None
    try:
        with open(os.path.join(folder, key + ".json"), encoding="utf-8") as fh:
            return _from_disk(json.load(fh), path)
    except (OSError, ValueError, KeyError, TypeError):   # none yet, unreadable or damaged: ask the binary
        return None


def _store(real: str, caps: FFmpegCaps) -> None:
    """Keep ``caps`` for the next process, whole or not at all (a temporary file renamed into place); a cache
    that cannot be written (a read-only home) only costs the next process the questions."""
    folder, key = caps_dir(), _disk_key(real)
    if folder is None or key is None:
        return
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(_to_disk(caps), fh)
            os.replace(tmp, os.path.join(folder, key + ".json"))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError:
        pass


def ffmpeg_caps(ffmpeg: str | None = None) -> FFmpegCaps:
    """The capabilities of ``ffmpeg`` (default: this process's, :func:`montage_ray.ffmpeg.tool.ffmpeg`),
    asked once per binary and kept for the life of the process and on disk (:func:`caps_dir`) for the next."""
    path = ffmpeg or tool.ffmpeg()
    key = os.path.realpath(shutil.which(path) or path)
    with _lock:
        if key not in _cache:
            found = _load(key, path)
            if found is None:
                found = detect(path)
                _store(key, found)
            _cache[key] = found
            _builds[key] = found.build
        return _cache[key]


_builds: dict[str, str] = {}


def ffmpeg_build(ffmpeg: str | None = None) -> str:
    """:attr:`FFmpegCaps.build` of ``ffmpeg`` from its ``-version`` alone (one run, cached; the whole
    :func:`ffmpeg_caps` when that is known already, in this process or on disk): what an actor says of itself
    before its first segment."""
    path = ffmpeg or tool.ffmpeg()
    key = os.path.realpath(shutil.which(path) or path)
    if key not in _builds:
        known = _cache.get(key) or _load(key, path)
        _builds[key] = known.build if known is not None else \
            build_id(tool.run(queries.help_command(path, "-version"), timeout=30.0).stdout)
    return _builds[key]
