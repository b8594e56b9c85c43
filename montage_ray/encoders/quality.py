"""A quality target per segment: parse it, measure a segment against its source piece, search the knob.

``--target-quality METRIC:VALUE[:TOLERANCE]`` asks every segment to reach one measured score, whichever
encoder made it. The actor that encoded a segment measures it against the source piece it already holds
(an ffmpeg filter: ``psnr``, ``ssim``, ``xpsnr`` from ffmpeg 7.1, ``libvmaf`` where ffmpeg was built with
it; :func:`montage_ray.ffmpeg.commands.quality_command`); a segment outside the tolerance is encoded again with its
encoder family's knob moved (:class:`~montage_ray.encoders.backends.Knob`: CRF for x264/x265/SVT-AV1, CQ for NVENC,
QP for VAAPI, global_quality for QSV, the bitrate for nvmpi/v4l2m2m). The search is Av1an's target quality
made per family: start from the parity guess, step towards the target, then interpolate between the tries
that bracket it; at most ``tries`` encodes, and the best one is kept::

    from montage_ray.encoders.quality import parse_target, next_value, best
    from montage_ray.encoders.backends import BACKENDS

    target = parse_target("psnr:40")              # Target(metric='psnr', value=40.0, tolerance=0.5, tries=5)
    knob = BACKENDS["cpu"].knobs["h264"]          # x264's -crf, 0..51 in steps of 0.25, lower is better
    tried = [(23.0, 38.2)]                        # (knob value, score) of the parity encode
    next_value(knob, target, tried)               # 19.0: a step towards more quality
    tried.append((19.0, 40.9))
    next_value(knob, target, tried)               # 20.25: interpolated between the two
    best(target, tried)                           # 1: the index of the try whose score is nearest the target

``--measure METRIC`` measures and reports each segment's score without re-encoding (what the encoders
give at the parity mapping). A metric that an ffmpeg lacks is refused before any encode when the driver's
ffmpeg lacks it (:func:`require`, one line, exit 2), and fails the segment with that sentence on a node
whose ffmpeg lacks it; it is never silently skipped.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Sequence

from montage_ray.ffmpeg import commands
from montage_ray.ffmpeg import tool
from montage_ray.encoders.backends import BACKENDS, EncoderSpec, Knob
from montage_ray.ffmpeg.caps import FFmpegCaps
from montage_ray.errors import FFmpegError, InputError


@dataclass(frozen=True)
class Metric:
    """One quality metric: the ffmpeg filter that measures it and the line that filter prints."""

    name: str
    filter: str
    tolerance: float        # the default distance from the target that counts as reached
    low: float              # the values a target may take
    high: float
    pattern: str            # the summary line ffmpeg prints at level info; group 1 is the score
    unit: str = ""


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("psnr", "psnr", 0.5, 10.0, 100.0, r"PSNR y:.*?average:\s*(\S+)", " dB"),
    Metric("xpsnr", "xpsnr", 0.5, 10.0, 100.0, r"XPSNR .*?\(minimum:\s*([^)\s]+)\)", " dB"),
    Metric("ssim", "ssim", 0.005, 0.1, 1.0, r"SSIM Y:.*?All:\s*(\S+)"),
    Metric("vmaf", "libvmaf", 1.0, 1.0, 100.0, r"VMAF score:\s*(\S+)"),
)}

#: Encodes one segment may take to reach its target (the first, parity encode included).
DEFAULT_TRIES = 5

#: The knob's first move, in knob steps of a CRF-like scale, when one try tells no slope yet.
FIRST_MOVE = 4.0

#: The largest move one extrapolation may make (CRF-like units): a noisy slope must not fling the knob.
MAX_MOVE = 12.0


@dataclass(frozen=True)
class Target:
    """A quality target (``value``), or just a metric to measure and report (``value`` None)."""

    metric: str
    value: float | None = None
    tolerance: float = 0.0
    tries: int = DEFAULT_TRIES

    @property
    def filter(self) -> str:
        return METRICS[self.metric].filter

    def reached(self, score: float) -> bool:
        return self.value is None or abs(score - self.value) <= self.tolerance

    def __str__(self) -> str:
        if self.value is None:
            return f"measure {self.metric}"
        return f"{self.metric}:{self.value:g} (within {self.tolerance:g}{METRICS[self.metric].unit})"


def parse_target(text: str, *, tries: int = DEFAULT_TRIES) -> Target:
    """``METRIC:VALUE[:TOLERANCE]`` -> :class:`Target`; :class:`InputError` (one line) when malformed."""
    parts = str(text).strip().split(":")
    metric = _metric(parts[0], f"--target-quality {text!r}")
    if len(parts) not in (2, 3):
        raise InputError(f"--target-quality {text!r}: write METRIC:VALUE[:TOLERANCE], e.g. psnr:42 or ssim:0.98")
    m = METRICS[metric]
    value = _number(parts[1], f"--target-quality {text!r}: the value")
    if not m.low <= value <= m.high:
        raise InputError(f"--target-quality {text!r}: a {metric} target is from {m.low:g} to {m.high:g}")
    tolerance = m.tolerance
    if len(parts) == 3:
        tolerance = _number(parts[2], f"--target-quality {text!r}: the tolerance")
        if tolerance <= 0:
            raise InputError(f"--target-quality {text!r}: the tolerance must be more than 0")
    return Target(metric, value, tolerance, tries)


def parse_measure(text: str) -> Target:
    """``METRIC`` -> a :class:`Target` that only measures (``--measure``)."""
    return Target(_metric(str(text).strip(), f"--measure {text!r}"), None, 0.0, 1)


def _metric(name: str, where: str) -> str:
    name = name.lower()
    if name not in METRICS:
        raise InputError(f"{where}: unknown metric {name!r}: use one of {', '.join(METRICS)}")
    return name


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"{what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(f"{what} {text!r} is not a number")
    return value


def require(target: Target | None, caps: FFmpegCaps) -> None:
    """InputError (one line) when ``caps``' ffmpeg cannot measure ``target``'s metric."""
    if target is not None and not caps.has_filter(target.filter):
        option = "--measure" if target.value is None else "--target-quality"
        raise InputError(caps.missing(target.filter, f"{option} {target.metric}"))


# ------------------------------------------------------------------------------------------------------
# Measuring
# ------------------------------------------------------------------------------------------------------

def support(caps: FFmpegCaps) -> dict[str, str]:
    """Each quality metric (``--target-quality``) with "yes" or why this ffmpeg cannot measure it."""
    return {name: "yes" if caps.has_filter(m.filter) else caps.missing(m.filter, f"--target-quality {name}")
            for name, m in METRICS.items()}


def parse_score(metric: str, stderr: str) -> float | None:
    """The score in the summary line ffmpeg's metric filter printed (None when there is none).

    PSNR of identical pictures is ``inf``: it is reported as 100 dB (no encode reaches that)."""
    found = re.findall(METRICS[metric].pattern, stderr)
    if not found:
        return None
    text = found[-1]
    if text.lower() in ("inf", "+inf"):
        return 100.0
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else 100.0


def measure(target: Target, encoded: str, reference: str, *, caps: FFmpegCaps, pix_fmt: str = "yuv420p",
            reference_filter: str | None = None, threads: int = 1, timeout: float = 600.0) -> float:
    """Measure ``encoded`` against ``reference`` (the source piece) with ``target``'s metric on ``caps``' ffmpeg.

    ``reference_filter`` (the job's frame fit) is applied to the reference so both have one size. Raises
    :class:`FFmpegError` when ffmpeg fails or prints no score, InputError when it lacks the metric."""
    require(target, caps)
    cmd = commands.quality_command(encoded, reference, caps=caps, metric_filter=target.filter, pix_fmt=pix_fmt,
                                   reference_filter=reference_filter, threads=threads)
    done = tool.run(cmd, timeout=timeout)
    score = parse_score(target.metric, done.stderr)
    if score is None:
        raise FFmpegError(f"ffmpeg's {target.filter} filter printed no {target.metric} score",
                          stderr=tool.tail(done.stderr))
    return score


# ------------------------------------------------------------------------------------------------------
# The search (pure)
# ------------------------------------------------------------------------------------------------------

def _position(knob: Knob, value: float) -> float:
    """A knob value on a CRF-like axis where more means less quality (bitrates: 6 steps per halving)."""
    if knob.log_scale:
        value = -6.0 * math.log2(max(value, 1e-9))
    return value if knob.lower_is_better or knob.log_scale else -value


def _value(knob: Knob, position: float) -> float:
    if knob.log_scale:
        position = 2 ** (-position / 6.0)
    elif not knob.lower_is_better:
        position = -position
    return knob.clamp(position)


def next_value(knob: Knob, target: Target, tried: Sequence[tuple[float, float]]) -> float | None:
    """The knob value to encode next after ``tried`` ((value, score) pairs, first the parity guess), or
    None when the search is over: the target is reached, the tries are used up, or no untried value is left
    between the tries that bracket the target (or at the end of the knob's range).

    Positions are CRF-like (more = less quality). With the target bracketed, the next position is
    interpolated between the nearest try below and the nearest above (Av1an's weighted search); otherwise it
    is extrapolated from the slope of the two latest tries (at most :data:`MAX_MOVE`), or, with one try or
    no usable slope, a :data:`FIRST_MOVE` (doubling each time) towards the target.
    """
    if target.value is None or not tried or len(tried) >= target.tries:
        return None
    if any(target.reached(score) for _, score in tried):
        return None
    goal = target.value
    points = sorted((_position(knob, v), s) for v, s in tried)
    positions = {round(p, 6) for p, _ in points}
    below = [(p, s) for p, s in points if s < goal]       # too low a score: need a lower position
    above = [(p, s) for p, s in points if s > goal]
    step = abs(_position(knob, knob.clamp(knob.low + knob.step)) - _position(knob, knob.clamp(knob.low))) or 1.0
    if below and above:
        # the nearest pair that brackets the goal: the best-scoring try below it, the worst-scoring above it
        p_lo, s_lo = max(below, key=lambda x: x[1])
        p_hi, s_hi = min(above, key=lambda x: x[1])
        guess = p_hi + (p_lo - p_hi) * (s_hi - goal) / (s_hi - s_lo)
        low, high = sorted((p_lo, p_hi))
        position = _position(knob, _value(knob, guess))
        for pos in (position, position + step, position - step):  # rounded onto a try: its neighbour
            pos = _position(knob, _value(knob, pos))
            if low < pos < high and round(pos, 6) not in positions:
                return _value(knob, pos)
        return None
    # not bracketed: every try is on one side of the goal
    need_lower = bool(below)              # scores too low -> lower positions (more quality)
    edge = min(p for p, _ in points) if need_lower else max(p for p, _ in points)
    move = FIRST_MOVE * 2 ** (len(tried) - 1)
    (p0, s0), (p1, s1) = [(_position(knob, v), s) for v, s in tried[-2:]] if len(tried) > 1 else [(0, 0)] * 2
    if p0 != p1 and (s1 - s0) / (p1 - p0) < 0:   # a usable slope: quality falls as the position rises
        nearest = max(points, key=lambda x: x[1]) if need_lower else min(points, key=lambda x: x[1])
        move = min(MAX_MOVE, abs((goal - nearest[1]) * (p1 - p0) / (s1 - s0)))
        edge = nearest[0]
    move = max(move, step) * (-1 if need_lower else 1)
    candidate = _value(knob, edge + move)
    if round(_position(knob, candidate), 6) in positions:
        return None                        # the end of the knob's range: this encoder cannot reach it
    return candidate


def best(target: Target, tried: Sequence[tuple[float, float]]) -> int:
    """Index of the try to keep: the one whose score is nearest the target (with no target, the first);
    among tries within the tolerance, the one of least quality (the smallest file)."""
    if target.value is None or not tried:
        return 0
    inside = [i for i, (_, score) in enumerate(tried) if target.reached(score)]
    if inside:
        return min(inside, key=lambda i: tried[i][1])
    return min(range(len(tried)), key=lambda i: abs(tried[i][1] - target.value))


# ------------------------------------------------------------------------------------------------------
# The knob in an encoder spec
# ------------------------------------------------------------------------------------------------------

def current_value(knob: Knob, quality_args: Sequence[str]) -> float | None:
    """The knob's value in a spec's ``quality_args`` (``['-crf', '23']`` -> 23.0; ``-b:v 8000k`` -> 8000)."""
    args = list(quality_args)
    if knob.option not in args[:-1]:
        return None
    text = args[args.index(knob.option) + 1]
    try:
        return float(text[:-len(knob.unit)] if knob.unit and text.endswith(knob.unit) else text)
    except ValueError:
        return None


def with_knob(spec: EncoderSpec, knob: Knob, value: float) -> EncoderSpec:
    """``spec`` with its quality arguments set to ``value`` of ``knob`` (the rest of its arguments kept)."""
    old, new = list(spec.quality_args), knob.args(value)
    args = list(spec.codec_args)
    for i in range(len(args) - len(old) + 1):
        if old and args[i:i + len(old)] == old:
            args[i:i + len(old)] = new
            return dataclasses.replace(spec, codec_args=tuple(args), quality_args=tuple(new))
    raise ValueError(f"{spec.label}: its arguments do not hold its quality arguments {old}")


def knob_for(spec: EncoderSpec) -> Knob | None:
    """The knob a target turns for ``spec``'s encoder family (None: it has none, e.g. the pass-through)."""
    row = BACKENDS.get(spec.backend)
    knob = row.knobs.get(spec.codec) if row is not None and not spec.copies else None
    if knob is None or current_value(knob, spec.quality_args) is None:
        return None
    return knob
