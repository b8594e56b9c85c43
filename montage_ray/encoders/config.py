"""Which encoder serves each Ray resource label: the node's probe, or an encoders YAML file.

By default an actor pinned to the ``vaapi`` label asks its own node's probe how to run VAAPI there (device,
driver). An encoders file (``--encoders-config``) overrides that per label, and is how tests, benchmarks and
users without the hardware run a CPU **stand-in** under a hardware label; a stand-in says so in its label
wherever it appears (logs, reports, the dashboard)::

    # encoders.yaml
    labels:
      vaapi:  {backend: cpu, standin: true, readrate: 4}          # CPU stand-in, at most 4x realtime
      nvenc:  {backend: nvenc, remote: true, provider: cloud, bandwidth_mbps: 200, quality_rank: 1}
      cpu:    {preset: veryfast, extra_args: ["-tune", "film", "-x264-params", "ref=4:bframes=5"]}

    from montage_ray.encoders.config import load_encoders_config
    from montage_ray.probe.spec import resolve_spec     # the probe layer joins the config with the node
    config = load_encoders_config("encoders.yaml")
    spec = resolve_spec("vaapi", config.get("vaapi"), codec="h264", quality=23, preset="medium", threads=1)
    spec.label   # 'vaapi (stand-in: libx264 on CPU) [at most 4x realtime]'

``extra_args`` reach ffmpeg on every node, so they are checked like untrusted input: only pairs of a
vetted encoder option of that backend (:data:`~montage_ray.encoders.backends.ENCODER_TUNING`, plus GOP and rate
options) and a plain value. Outputs, inputs, formats, filters, ``-y``/``-f``/``-i``/``-map``, paths, URLs
and the ``*-params`` keys that name files are refused with one line (:class:`InputError`, exit 2), as is a
field of the wrong type (``quality_rank: "high"``)::

    check_extra_args(["-vf", "movie=/etc/passwd"], "cpu")   # InputError: ... '-vf' is not an encoder option ...
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable

import yaml

from montage_ray.encoders.backends import BACKENDS, FILE_PARAMS, PRESETS, SOFTWARE, backend_of, tuning_options
from montage_ray.errors import InputError

_FIELDS = {"backend", "standin", "passthrough", "preset", "threads", "readrate", "extra_args", "remote", "bandwidth_mbps",
           "expected_fps", "quality_rank", "provider"}

# The money fields of a paid (remote) label, validated in _cost_settings.
_COST_FIELDS = {"cost_per_hour", "cost_per_gb", "budget_per_month", "currency", "min_time_saved",
                "standin_quota_after"}


@dataclass(frozen=True)
class LabelConfig:
    """How one resource label is served, as configured (every field optional)."""

    label: str
    backend: str | None = None          # a BACKENDS name; "cpu" with standin=True for a stand-in
    standin: bool = False
    preset: str | None = None           # overrides the job's preset for this label
    threads: int | None = None          # ffmpeg threads (CPU backends)
    readrate: float | None = None       # throttle input to N x realtime (simulates a slower device)
    extra_args: tuple[str, ...] = ()    # appended after the encoder's own options
    remote: bool = False                # reached over a slow link (the cloud GPU): see routing
    provider: str | None = None         # who runs it, a row of montage_ray.spending.providers.PROVIDERS
    bandwidth_mbps: float | None = None  # link speed to that node, when remote
    expected_fps: float | None = None   # a first guess of its speed before anything was measured
    quality_rank: int = 0               # higher is better; ``--profile master`` prefers the top rank
    passthrough: bool = False           # a stand-in that stream-copies (no encode): driver benchmarks only
    # a paid label's prices and budget: see montage_ray.spending.cost and montage_ray.spending.ledger
    cost_per_hour: float | None = None  # billed while the job's actors there are busy
    cost_per_gb: float | None = None    # billed per GB moved to and from it
    budget_per_month: float | None = None  # cap per calendar month (UTC) in ``currency``; routing keeps to it
    currency: str = "USD"
    min_time_saved: float | None = None  # fast/standard use it only if it shortens the job by this share
    standin_quota_after: int | None = None  # TESTS/SIMULATION ONLY: a CPU stand-in refuses like a provider
    #                                         at quota (NVENC session limit) after this many segments

    @property
    def stands_in(self) -> bool:
        """Whether the software backend serves this hardware label in its place (tests, simulations)."""
        return self.label != SOFTWARE and (self.standin or self.backend == SOFTWARE)


#: Each field's accepted type and rule, for one clear line instead of a traceback deep in a job.
_TYPES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "backend": ("a backend name", lambda v: isinstance(v, str)),
    "standin": ("true or false", lambda v: isinstance(v, bool)),
    "remote": ("true or false", lambda v: isinstance(v, bool)),
    "provider": ("a provider name", lambda v: isinstance(v, str)),
    "passthrough": ("true or false", lambda v: isinstance(v, bool)),
    "preset": ("a preset name", lambda v: isinstance(v, str)),
    "threads": ("a whole number of at least 1", lambda v: _is_int(v) and v >= 1),
    "quality_rank": ("a whole number", lambda v: _is_int(v)),
    "readrate": ("a number above 0", lambda v: _is_number(v) and v > 0),
    "bandwidth_mbps": ("a number above 0", lambda v: _is_number(v) and v > 0),
    "expected_fps": ("a number above 0", lambda v: _is_number(v) and v > 0),
    "extra_args": ("a list such as [\"-tune\", \"film\"]", lambda v: isinstance(v, list)),
}

_LABEL = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: An option name, with an optional video stream specifier (``-b:v``, ``-g:v:0``).
_OPTION = re.compile(r"^(-[A-Za-z0-9_-]+?)(:v(:0)?)?$")
#: A plain value: no path separators, spaces, quotes, URLs, filtergraph or printf syntax.
_VALUE = re.compile(r"^[A-Za-z0-9_.,:=+-]{1,200}$")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and v != float("inf")


def _check_type(where: str, name: str, value: Any) -> None:
    if value is None:
        return
    what, ok = _TYPES[name]
    if not ok(value):
        raise InputError(f"{where}: {name} must be {what}, not {value!r}")


def check_extra_args(args: Any, backend: str, codec: str | None = None, *, where: str = "extra_args"
                     ) -> tuple[str, ...]:
    """``args`` as a tuple of strings if every one is a vetted encoder option of ``backend`` with a plain
    value (for ``codec``, or any codec of the backend); InputError naming the first that is not."""
    if not isinstance(args, (list, tuple)):
        raise InputError(f"{where}: extra_args must be a list such as [\"-tune\", \"film\"], not {args!r}")
    allowed = tuning_options(backend, codec)
    out: list[str] = []
    items = list(args)
    for i in range(0, len(items), 2):
        option = items[i]
        match = _OPTION.match(option) if isinstance(option, str) else None
        name = match.group(1) if match else None
        if option in allowed:
            name = option
        if name not in allowed:
            raise InputError(f"{where}: {option!r} is not an encoder option montage-ray lets a config pass to "
                             f"{backend}" + (f" for {codec}" if codec else "")
                             + f" (allowed: {', '.join(sorted(allowed))})")
        if i + 1 >= len(items):
            raise InputError(f"{where}: {option!r} needs a value after it")
        value = items[i + 1]
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise InputError(f"{where}: the value of {option} must be text or a number, not {value!r}")
        text = str(value)
        if not _VALUE.match(text) or (text.startswith("-") and not text[1:2].isdigit()):
            raise InputError(f"{where}: the value {text!r} of {option} is not a plain value (letters, digits "
                             "and . , : = + - only; no paths, URLs or spaces)")
        if name.endswith("-params"):
            for pair in text.split(":"):
                key = pair.split("=", 1)[0].strip().lower()
                if key in FILE_PARAMS:
                    raise InputError(f"{where}: {option} key {key!r} reads or writes files; not allowed")
        out += [option, text]
    return tuple(out)


def check_config_for_codec(config: dict[str, LabelConfig], codec: str) -> None:
    """Every label's extra_args are options of the encoder that will serve ``codec`` (InputError if not)."""
    for label, cfg in config.items():
        backend = backend_of(label, cfg.backend)
        if cfg.extra_args and codec in BACKENDS[backend].encoders:
            check_extra_args(list(cfg.extra_args), backend, codec, where=f"encoders config: {label!r}")


def load_encoders_config(path: str | os.PathLike[str] | None) -> dict[str, LabelConfig]:
    """Read an encoders YAML file into {label: LabelConfig}; InputError on anything malformed."""
    if path is None:
        return {}
    shown = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise InputError(f"encoders config {shown!r} does not exist") from None
    except (OSError, yaml.YAMLError) as err:
        raise InputError(f"encoders config {shown!r} cannot be read: {str(err).splitlines()[0]}") from None
    labels = data.get("labels") if isinstance(data, dict) else None
    if not isinstance(labels, dict):
        raise InputError(f"encoders config {shown!r} needs a 'labels:' mapping of label -> settings")
    out: dict[str, LabelConfig] = {}
    for label, settings in labels.items():
        where = f"encoders config {shown!r}"
        if not isinstance(label, str) or not _LABEL.match(label):
            raise InputError(f"{where}: label {label!r} must be a name of letters, digits, '_' or '-'")
        settings = settings or {}
        if not isinstance(settings, dict):
            raise InputError(f"{where}: settings of {label!r} must be a mapping")
        unknown = set(settings) - _FIELDS - _COST_FIELDS
        if unknown:
            raise InputError(f"{where}: unknown setting(s) {sorted(map(str, unknown))} for {label!r}")
        for name, value in settings.items():
            if name in _TYPES:  # the cost fields are checked by _cost_settings
                _check_type(f"{where}: {label!r}", name, value)
        backend = settings.get("backend")
        if backend is not None and backend not in BACKENDS:
            raise InputError(f"{where}: {label!r} names unknown backend {backend!r} "
                             f"(known: {', '.join(BACKENDS)})")
        if settings.get("preset") is not None and settings["preset"] not in PRESETS:
            raise InputError(f"{where}: {label!r} has unknown preset {settings['preset']!r}")
        extra = check_extra_args(settings.get("extra_args") or [], backend_of(label, backend),
                                 where=f"{where}: {label!r}")
        out[label] = LabelConfig(
            label=label, backend=backend, standin=settings.get("standin", False),
            preset=settings.get("preset"), threads=settings.get("threads"), readrate=settings.get("readrate"),
            extra_args=extra, remote=settings.get("remote", False), provider=settings.get("provider"),
            bandwidth_mbps=settings.get("bandwidth_mbps"),
            expected_fps=settings.get("expected_fps"), quality_rank=settings.get("quality_rank", 0),
            passthrough=settings.get("passthrough", False), **_cost_settings(shown, label, settings))
        if out[label].passthrough and (label == SOFTWARE or not out[label].standin):
            raise InputError(f"{where}: {label!r}: passthrough is only for a stand-in label "
                             "(standin: true, not cpu)")
    return out


# The cost settings of a label.
def _cost_settings(shown: str, label: str, settings: dict) -> dict:
    """The cost fields of one label, type-checked (InputError: one line, exit 2)."""
    out: dict = {}
    for key in ("cost_per_hour", "cost_per_gb", "budget_per_month", "min_time_saved"):
        value = settings.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
            raise InputError(f"encoders config {shown!r}: {key} of {label!r} must be a number >= 0, not {value!r}")
        if key == "min_time_saved" and value >= 1:
            raise InputError(f"encoders config {shown!r}: min_time_saved of {label!r} is a share of the job "
                             f"time, from 0 to below 1 (0.2 = 20 %), not {value!r}")
        out[key] = float(value)
    currency = settings.get("currency", "USD")
    if not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
        raise InputError(f"encoders config {shown!r}: currency of {label!r} must be a 3-letter code such as "
                         f"USD, not {currency!r}")
    out["currency"] = currency
    if ("budget_per_month" in out or "cost_per_hour" in out or "cost_per_gb" in out) and "currency" not in settings:
        raise InputError(f"encoders config {shown!r}: {label!r} has a cost or budget; name its currency "
                         "(currency: USD)")
    after = settings.get("standin_quota_after")
    if after is not None:
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise InputError(f"encoders config {shown!r}: standin_quota_after of {label!r} must be a whole "
                             f"number >= 0, not {after!r}")
        if not settings.get("standin") and settings.get("backend") != SOFTWARE:
            raise InputError(f"encoders config {shown!r}: standin_quota_after of {label!r} is for CPU "
                             "stand-ins only (tests and simulations)")
        out["standin_quota_after"] = after
    return out
