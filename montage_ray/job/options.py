"""What a job is asked to do: one frozen :class:`EncodeOptions`, checked once before any work starts.

The CLI, the Python API and Ray job scripts all build an ``EncodeOptions``; :meth:`EncodeOptions.validate`
checks every option and every path together (source, destination, ``--report``, ``--timeline``, the
encoders config) and returns a :class:`ValidJob` that the job then runs straight through. Nothing is
checked twice, and nothing is written before everything passed::

    from montage_ray.job.options import EncodeOptions

    options = EncodeOptions(codec="hevc", quality=26, report="out.json")
    job = options.validate("in.mp4", "out.mp4")      # InputError in one line when anything is wrong
    job.source, job.target, job.container            # absolute paths, ('mp4', 'mp4')
"""

from __future__ import annotations

import dataclasses
import os
import stat
from dataclasses import dataclass, field
from typing import Any

from montage_ray.encoders.backends import CODECS, PRESETS, codec_name
from montage_ray.ffmpeg.caps import ffmpeg_caps
from montage_ray.job.cache import CACHE_DIRNAME, folder_refusal
from montage_ray.encoders.config import LabelConfig, check_config_for_codec, load_encoders_config
from montage_ray.errors import InputError
from montage_ray.media.join import container_for
from montage_ray.encoders.quality import Target, parse_measure, parse_target, require
from montage_ray.encoders.checks import Verify
from montage_ray.spending.providers import check_providers
from montage_ray.spending.routing import PROFILES

VERIFY_MODES = tuple(v.value for v in Verify)

PathLike = str | os.PathLike


@dataclass(frozen=True)
class EncodeOptions:
    """Every option of an encode job (the CLI's flags, the API's keyword arguments)."""

    codec: str = "h264"
    quality: int = 23                       # CRF-like, 0 best .. 51 worst
    preset: str = "medium"
    segment_seconds: float | None = None    # None: the plan's automatic length
    address: str | None = None              # None: $RAY_ADDRESS, else a private local Ray
    overwrite: bool = False                 # replace DST, --report and --timeline files that exist
    report: PathLike | None = None          # JSON report to write
    timeline: PathLike | None = None        # PNG timeline to draw
    workers: int | None = None              # at most this many encoder actors
    verify: Verify = Verify.AUTO            # how segments are checked (montage_ray.encoders.checks): auto, decode, packets
    profile: str = "standard"               # fast, standard, master
    encoders_config: PathLike | None = None  # encoders YAML (see montage_ray.encoders.config)
    labels: tuple[str, ...] | None = None   # use only these resource labels
    allow_dv_loss: bool = False             # encode a Dolby Vision source, dropping its RPU (else refused)
    target_quality: str | None = None       # "METRIC:VALUE[:TOL]": each segment measured, re-encoded to reach it
    measure: str | None = None              # "METRIC": each segment measured and its score reported, no re-encode
    # resume: see montage_ray.job.cache
    cache: bool = True                      # reuse and keep verified segments across runs (--no-cache: False)
    cache_dir: PathLike | None = None       # None: .montage-ray.cache beside DST
    keep_cache: bool = False                # keep this job's cached segments after a successful publish
    priority: int = 0                       # on the encoder service: higher goes first (previews)

    def __post_init__(self) -> None:
        object.__setattr__(self, "codec", codec_name(self.codec))  # h265 is hevc
        if self.labels is not None and not isinstance(self.labels, tuple):
            object.__setattr__(self, "labels", tuple(self.labels))
        if isinstance(self.verify, str) and self.verify in VERIFY_MODES:  # a mode's name: the mode itself
            object.__setattr__(self, "verify", Verify(self.verify))

    def replace(self, **changes: Any) -> "EncodeOptions":
        """A copy with ``changes`` (InputError naming an option that does not exist)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise InputError(f"unknown option(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def check_values(self) -> None:
        """The checks that need no file: InputError for the first option out of range."""
        if self.codec not in CODECS:
            raise InputError(f"unknown codec {self.codec!r}: use one of {', '.join(CODECS)}")
        if not isinstance(self.quality, int) or isinstance(self.quality, bool) or not 0 <= self.quality <= 51:
            raise InputError(f"quality must be a whole number from 0 (best) to 51, not {self.quality!r}")
        if self.preset not in PRESETS:
            raise InputError(f"unknown preset {self.preset!r}: use one of {', '.join(PRESETS)}")
        if self.segment_seconds is not None and not (isinstance(self.segment_seconds, (int, float))
                                                     and self.segment_seconds > 0):
            raise InputError(f"segment length must be more than 0 seconds, not {self.segment_seconds!r}")
        if not isinstance(self.verify, Verify):
            raise InputError(f"verify must be one of {', '.join(VERIFY_MODES)}, not {self.verify!r}")
        if self.profile not in PROFILES:
            raise InputError(f"unknown profile {self.profile!r}: use one of {', '.join(PROFILES)}")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise InputError(f"workers must be at least 1, not {self.workers!r}")
        if self.labels is not None and (not self.labels or not all(isinstance(x, str) and x for x in self.labels)):
            raise InputError(f"labels must be resource label names, not {self.labels!r}")
        if not isinstance(self.priority, int) or isinstance(self.priority, bool) or not -100 <= self.priority <= 100:
            raise InputError(f"priority must be a whole number from -100 to 100, not {self.priority!r}")
        if self.timeline is not None and not os.fspath(self.timeline).lower().endswith(".png"):
            raise InputError(f"timeline {os.fspath(self.timeline)!r} must be a .png file")
        if self.target_quality is not None and self.measure is not None:
            raise InputError("--target-quality measures every segment already: give it or --measure, not both")
        if not self.cache and (self.cache_dir is not None or self.keep_cache):
            raise InputError(f"--no-cache contradicts --{'cache-dir' if self.cache_dir is not None else 'keep-cache'}")
        self.target()

    def target(self) -> Target | None:
        """The quality target (``target_quality``) or metric to measure (``measure``), parsed; None for neither."""
        if self.target_quality is not None:
            return parse_target(self.target_quality)
        if self.measure is not None:
            return parse_measure(self.measure)
        return None

    def validate(self, src: PathLike, dst: PathLike) -> "ValidJob":
        """Check everything once: the options, the encoders config, the source, the destination and the
        extra files; return the job's resolved paths. Raises InputError (one line) for the first problem."""
        self.check_values()
        if self.target() is not None:  # a metric this ffmpeg lacks: one line, before any encode
            require(self.target(), ffmpeg_caps())
        config = load_encoders_config(self.encoders_config)
        check_config_for_codec(config, self.codec)  # extra_args vetted for the encoder that serves this codec
        check_providers(config)
        source = check_source(src)
        target = check_destination(dst, overwrite=self.overwrite, source=source)
        extras: dict[str, str | None] = {}
        for what, path in (("report", self.report), ("timeline", self.timeline)):
            extras[what] = None if path is None else check_extra(what, path, overwrite=self.overwrite,
                                                                 taken={"input": source, "output": target,
                                                                        **{k: v for k, v in extras.items() if v}})
        cache = None
        if self.cache:
            cache = (check_cache_dir(self.cache_dir, taken={"input": source, "output": target})
                     if self.cache_dir is not None else os.path.join(os.path.dirname(target), CACHE_DIRNAME))
        return ValidJob(options=self, source=source, target=target, container=container_for(target),
                        report=extras["report"], timeline=extras["timeline"], config=config, cache=cache)


@dataclass(frozen=True)
class ValidJob:
    """The options of one job once validated, with its paths made absolute and its config loaded."""

    options: EncodeOptions
    source: str
    target: str
    container: tuple[str, str]              # (muxer, family) of the destination
    report: str | None = None
    timeline: str | None = None
    config: dict[str, LabelConfig] = field(default_factory=dict)
    cache: str | None = None                # the segment cache's folder; None with --no-cache


def check_source(path: PathLike) -> str:
    """Return the absolute path of ``path`` if it names a readable, non-empty regular file.

    Protocol-looking names (``http://``, ``concat:a|b``) are only ever file names here: if no such file
    exists the error says that network and protocol inputs are not read.
    """
    text = os.fspath(path)
    absolute = os.path.abspath(text)
    try:
        st = os.stat(absolute)
    except FileNotFoundError:
        if "://" in text or (":" in text.split("/")[0] and not os.path.exists(absolute)):
            raise InputError(f"input {text!r} is not a local file (network and protocol inputs are not "
                             "read)") from None
        raise InputError(f"input {text!r} does not exist") from None
    except OSError as err:
        raise InputError(f"input {text!r} cannot be read: {err.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"input {text!r} is a folder, not a video file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"input {text!r} is not a regular file")
    if st.st_size == 0:
        raise InputError(f"input {text!r} is empty (0 bytes)")
    if not os.access(absolute, os.R_OK):
        raise InputError(f"input {text!r} cannot be read: permission denied")
    return absolute


def _writable_place(what: str, text: str, absolute: str) -> None:
    folder = os.path.dirname(absolute)
    if not os.path.isdir(folder):
        raise InputError(f"{what} folder {os.path.dirname(text) or '.'!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise InputError(f"{what} folder {os.path.dirname(text) or '.'!r} is not writable")
    if os.path.isdir(absolute):
        raise InputError(f"{what} {text!r} is a folder")


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def check_destination(dst: PathLike, *, overwrite: bool, source: str | None = None) -> str:
    """Absolute path of a writable destination, or InputError saying why it cannot be used."""
    text = os.fspath(dst)
    absolute = os.path.abspath(text)
    container_for(absolute)
    _writable_place("output", text, absolute)
    if source and os.path.exists(absolute) and os.path.samefile(source, absolute):
        raise InputError("output and input are the same file")
    if os.path.lexists(absolute) and not overwrite:
        raise InputError(f"output {text!r} already exists (pass --overwrite to replace it)")
    return absolute


def check_extra(what: str, path: PathLike, *, overwrite: bool, taken: dict[str, str]) -> str:
    """Absolute path of a ``--report``/``--timeline`` file: writable, none of the job's other files (never
    the input, even with --overwrite), and not an existing file unless ``overwrite``."""
    text = os.fspath(path)
    absolute = os.path.abspath(text)
    _writable_place(what, text, absolute)
    for role, other in taken.items():
        if _same_file(absolute, other):
            raise InputError(f"{what} {text!r} is the same file as the {role}")
    if os.path.lexists(absolute) and not overwrite:
        raise InputError(f"{what} {text!r} already exists (pass --overwrite to replace it)")
    return absolute


def check_cache_dir(path: PathLike, *, taken: dict[str, str]) -> str:
    """Absolute path of a ``--cache-dir``: a folder we can write in, or one we can make (its nearest
    existing parent is a writable folder); never one of the job's files, and never a folder that is not the
    cache's own (see :func:`~montage_ray.job.cache.folder_refusal`: a link, another user's, one others may
    write, one holding other files)."""
    text = os.fspath(path)
    absolute = os.path.abspath(os.path.expanduser(text))
    for role, other in taken.items():
        if _same_file(absolute, other):
            raise InputError(f"cache folder {text!r} is the same file as the {role}")
    existing = absolute
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise InputError(f"cache folder {text!r} is not a folder" if existing == absolute
                         else f"cache folder {text!r} cannot be made: {existing!r} is not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"cache folder {text!r} is not writable" if existing == absolute
                         else f"cache folder {text!r} cannot be made in {existing!r}: not writable")
    why = folder_refusal(absolute)  # the cache removes files: only ever in a folder that is its own
    if why is not None:
        raise InputError(f"cache folder {text!r} {why}")
    return absolute
