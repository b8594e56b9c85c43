"""Where to cut: group GOPs into segments of about ``segment_seconds``, cutting only at clean keyframes.

Planning is pure: it reads a :class:`~montage_ray.media.PacketIndex` and returns :class:`Segment` rows.
This module also owns the whole segment-length policy (:func:`segment_length`): about six segments per
encoder (2-10 s), shorter when the encoders' speeds are known, a tapered tail on several encoders, and one
segment on one encoder for a clip shorter than two segments (:func:`is_small_job`).
A segment is a half-open range of packets in decode order; because every cut is *clean* (see
:meth:`~montage_ray.media.PacketIndex.clean_cuts`), the frames of consecutive segments follow each other
exactly, none duplicated, none lost::

    from montage_ray.plan import plan_segments

    segments = plan_segments(info.packets, info.video.time_base, segment_seconds=10)
    [(s.index, s.frames, round(s.duration, 2)) for s in segments]

    length = segment_length(duration=60.0, chosen=None, speeds=[240.0, 25.0, 25.0])
    length.seconds, length.taper        # (3.33..., 0.2): six per encoder, a tapered tail
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from montage_ray.media import PacketIndex


#: Segment length the small-job rule assumes when the user chose none (seconds).
DEFAULT_SEGMENT_SECONDS = 10.0

#: Share of a multi-encoder job, at its end, cut into half-length segments (see plan_segments).
TAPER = 0.2


def small_job_seconds(chosen: float | None) -> float:
    """A job shorter than this is one segment on one local encoder: two segments' worth."""
    return 2 * (chosen or DEFAULT_SEGMENT_SECONDS)


def is_small_job(duration: float, chosen: float | None) -> bool:
    """True for a clip shorter than two segments (one segment, one actor)."""
    return duration < small_job_seconds(chosen)


def auto_segment_seconds(duration: float, sessions: int, speeds: list[float] | None = None) -> float:
    """About six segments per encoder session, between 2 and 10 seconds each.

    When every encoder's speed is known (actors reused from an earlier job), segments are also short
    enough that the last one, on the fastest encoder, takes at most 10 % of the ideal job time: then the
    tail cannot stretch the job much however mixed the speeds are.
    """
    seconds = duration / max(1, 6 * sessions)
    if speeds and all(s > 0 for s in speeds):
        seconds = min(seconds, 0.10 * duration * max(speeds) / sum(speeds))
    return max(2.0, min(10.0, seconds))


@dataclass(frozen=True)
class SegmentLength:
    """How to cut one job: about ``seconds`` per segment, the last ``taper`` share at half length."""

    seconds: float
    taper: float = 0.0


def segment_length(duration: float, *, chosen: float | None, speeds: list[float]) -> SegmentLength:
    """The segment length for a job of ``duration`` seconds on encoders of ``speeds`` (one entry each, 0 when
    unknown). A small job is one segment; a length the user ``chosen`` is kept as it is (no taper)."""
    if is_small_job(duration, chosen):
        return SegmentLength(2 * duration + 1)
    if chosen:
        return SegmentLength(chosen)
    return SegmentLength(auto_segment_seconds(duration, len(speeds), speeds), TAPER if len(speeds) > 1 else 0.0)


@dataclass(frozen=True)
class Segment:
    """Packets ``[first_packet, end_packet)`` of the video stream, shown from ``start`` for ``duration`` s."""

    index: int
    first_packet: int
    end_packet: int
    start: float            # presentation time of its first frame, seconds (source clock)
    duration: float         # until the next segment's first frame (or the end of the stream), seconds
    start_ticks: int        # the same start in video time-base ticks (exact)
    duration_ticks: int     # the same duration in ticks (exact)

    @property
    def frames(self) -> int:
        return self.end_packet - self.first_packet


def _frame_ticks(pts: np.ndarray) -> int:
    """The typical frame duration in ticks (median gap between sorted presentation times)."""
    if pts.shape[0] < 2:
        return 1
    gaps = np.diff(np.sort(pts))
    gaps = gaps[gaps > 0]
    return int(np.median(gaps)) if gaps.size else 1


def plan_segments(packets: PacketIndex, time_base: Fraction, segment_seconds: float = 10.0,
                  *, taper: float = 0.0) -> list[Segment]:
    """Cut the stream into segments of about ``segment_seconds`` at clean keyframes.

    A stream shorter than two segments stays one segment (no pointless overhead). Each cut is placed at
    the clean keyframe nearest to where the running segment reaches ``segment_seconds``; the last segment
    takes whatever is left once less than one and a half segments remain, and no piece shorter than half
    a segment is cut off at the end. With ``taper`` (0..1), the last ``taper`` share of the stream is cut
    into half-length segments: encoders of mixed speeds then finish the job's tail together.
    """
    if segment_seconds <= 0:
        raise ValueError("segment_seconds must be positive")
    n = len(packets)
    pts = packets.pts
    if n == 0:
        return []
    first = int(pts.min())
    # The stream ends when its last-shown frame does: that frame's own duration where the source gives one
    # (a VFR stream's typical gap can be far longer or shorter), else the typical gap.
    last_end = int(pts.max()) + (packets.last_duration or _frame_ticks(pts))
    total_ticks = last_end - first
    target = max(1, int(round(segment_seconds / time_base)))
    cuts = packets.clean_cuts()
    starts = [0]
    if total_ticks >= 2 * target and cuts.size > 1:
        cut_pts = pts[cuts]
        pos = 0  # index into cuts of the current segment's start
        tail = int(total_ticks * min(max(taper, 0.0), 1.0))
        while True:
            # half length once a full segment from here would reach into the tail
            step = target if not tail or last_end - int(cut_pts[pos]) - target >= tail else max(1, target // 2)
            if last_end - int(cut_pts[pos]) <= step + step // 2:
                break  # the rest is the last segment
            want = int(cut_pts[pos]) + step
            j = int(np.searchsorted(cut_pts, want))  # first cut at or after the target
            candidates = [c for c in (j - 1, j) if pos < c < cuts.size]
            if not candidates:
                break
            best = min(candidates, key=lambda c: abs(int(cut_pts[c]) - want))
            if last_end - int(cut_pts[best]) < step // 2:
                break  # the rest is too short to stand alone
            starts.append(int(cuts[best]))
            pos = best
    bounds = starts + [n]
    start_ticks = [first] + [int(pts[s]) for s in starts[1:]] + [last_end]
    return [
        Segment(index=i, first_packet=bounds[i], end_packet=bounds[i + 1],
                start=float(start_ticks[i] * time_base),
                duration=float((start_ticks[i + 1] - start_ticks[i]) * time_base),
                start_ticks=start_ticks[i], duration_ticks=start_ticks[i + 1] - start_ticks[i])
        for i in range(len(starts))
    ]


@dataclass(frozen=True)
class FrameFit:
    """The frame size the encoders get, and the filter that makes it (None: the source's own size)."""

    width: int
    height: int
    filter: str | None = None
    note: str | None = None


def fit_frame(width: int, height: int) -> FrameFit:
    """Decide, before any encoder starts, the frame size every encoder can take.

    Every output is 4:2:0 (yuv420p, nv12 on hardware: see :func:`montage_ray.segment_encode.video_output_args`),
    which cannot hold an odd width or height. Such a frame is **padded** by one pixel, the last column or
    row repeated (``fillborders`` smear): every source pixel is kept, where cropping would drop a row of
    picture; the job's report says so. Even sizes pass untouched::

        fit_frame(641, 361).filter   # 'pad=642:362:0:0,fillborders=right=1:bottom=1:mode=smear'
    """
    w, h = width + width % 2, height + height % 2
    if (w, h) == (width, height):
        return FrameFit(width, height)
    return FrameFit(w, h, f"pad={w}:{h}:0:0,fillborders=right={w - width}:bottom={h - height}:mode=smear",
                    f"frame size {width}x{height} padded to {w}x{h} (4:2:0 video needs even sizes); "
                    "the added column/row repeats the picture's edge")
