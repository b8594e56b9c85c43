"""Where to cut: group GOPs into segments of about ``segment_seconds``, at clean keyframes where they allow it.

Planning is pure: it reads a :class:`~montage_ray.media.info.PacketIndex` and returns :class:`Segment` rows.
This module also owns the whole segment-length policy (:func:`segment_length`): about six segments per
encoder (2-10 s), shorter when the encoders' speeds are known, a tapered tail on several encoders, and one
segment on one encoder for a clip shorter than two segments (:func:`is_small_job`).
A segment is the frames shown in a half-open range of time, made from a range of packets in decode order.
At a *clean* cut (see :meth:`~montage_ray.media.info.PacketIndex.clean_cuts`) the packets are exactly the frames;
where clean keyframes are too far apart (one keyframe, long or open GOPs) a segment starts at any frame and
carries the packets from the keyframe it needs, which its encoder decodes and drops (``skip_frames``,
``keep``); the plan weighs that extra decode (``DECODE_COST``, ``MAX_EXTRA_WORK``). Either way the frames of
consecutive segments follow each other exactly, none duplicated, none lost::

    from montage_ray.media.plan import plan_segments

    segments = plan_segments(info.packets, info.video.time_base, segment_seconds=10)
    [(s.index, s.frames, round(s.duration, 2), s.skip_frames) for s in segments]
    # one keyframe in 20 s: [(0, 300, 10.0, 0), (1, 300, 10.0, 300)]: segment 1 decodes 0-299 to drop them

    length = segment_length(duration=60.0, chosen=None, speeds=[240.0, 25.0, 25.0])
    length.seconds, length.taper        # (3.33..., 0.2): six per encoder, a tapered tail
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from montage_ray.media.info import PacketIndex


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
    """The frames shown from ``start`` for ``duration`` s, made from packets ``[first_packet, end_packet)``.

    The packets are what the encoder gets, in decode order. At a clean cut they are exactly the segment's
    frames. A segment that starts between keyframes (see :func:`plan_segments`) gets the packets from the
    keyframe its frames need: its encoder decodes ``skip_frames`` frames shown before ``start`` and
    ``tail_frames`` shown from the next segment's start on (references of its last frames), and encodes
    only the frames shown within ``keep`` (seconds from the shown time of ``first_packet``'s frame).
    """

    index: int
    first_packet: int
    end_packet: int
    start: float            # presentation time of its first frame, seconds (source clock)
    duration: float         # until the next segment's first frame (or the end of the stream), seconds
    start_ticks: int        # the same start in video time-base ticks (exact)
    duration_ticks: int     # the same duration in ticks (exact)
    skip_frames: int = 0    # frames of its packets shown before ``start``: decoded, then dropped
    tail_frames: int = 0    # frames of its packets shown after its end: decoded (references), then dropped
    #: (from, to) seconds after its first packet's frame: the frames shown in between are encoded (None: all).
    #: Both edges lie half-way between two frames, so no rounding of a time base moves a frame across one.
    keep: tuple[float, float] | None = None

    @property
    def frames(self) -> int:
        """Frames this segment encodes (and its output holds)."""
        return self.end_packet - self.first_packet - self.skip_frames - self.tail_frames

    @property
    def packets(self) -> int:
        """Packets its encoder is given (``frames`` plus the frames decoded only to be dropped)."""
        return self.end_packet - self.first_packet

    @property
    def dropped(self) -> int:
        """Frames decoded and dropped: the extra decode of a cut between keyframes (0 at a clean cut)."""
        return self.skip_frames + self.tail_frames


def _frame_ticks(pts: np.ndarray) -> int:
    """The typical frame duration in ticks (median gap between sorted presentation times)."""
    if pts.shape[0] < 2:
        return 1
    gaps = np.diff(np.sort(pts))
    gaps = gaps[gaps > 0]
    return int(np.median(gaps)) if gaps.size else 1


#: What decoding a frame costs against encoding it, for weighing cuts between keyframes. Measured with
#: ``scripts/bench_anyframe.py`` (one thread each): libx264 veryfast 0.20 at 320x240 and 0.16 at 1280x720,
#: ultrafast 0.45; hardware encoders are faster than a CPU decode, so take the upper end.
DECODE_COST = 0.25

#: The most extra work a segment may spend decoding frames it drops, as a share of its own encode: with
#: DECODE_COST 0.25, a segment holds at least as many frames as it decodes only to drop.
MAX_EXTRA_WORK = 0.25


def decode_starts(packets: PacketIndex) -> np.ndarray:
    """Packet indices (ascending, always including 0) where decoding can start: the keyframes."""
    keys = np.flatnonzero(packets.key)
    return keys if keys.size and keys[0] == 0 else np.concatenate([[0], keys]).astype(np.int64)


def _nearest(times: np.ndarray, want: int, low: int) -> int | None:
    """The value of sorted ``times`` nearest ``want`` among those >= ``low`` (None if none)."""
    j = int(np.searchsorted(times, want))
    found = [int(times[c]) for c in (j - 1, j) if 0 <= c < times.size and times[c] >= low]
    return min(found, key=lambda t: abs(t - want)) if found else None


def plan_segments(packets: PacketIndex, time_base: Fraction, segment_seconds: float = 10.0,
                  *, taper: float = 0.0, any_frame: bool = True) -> list[Segment]:
    """Cut the stream into segments of about ``segment_seconds``, at clean keyframes where they allow it.

    A stream shorter than two segments stays one segment (no pointless overhead). Each cut is placed near
    where the running segment reaches ``segment_seconds``, the first that fits of:

    1. the nearest *clean* keyframe, if it lies within half a segment: no extra work (every source whose
       GOPs are shorter than a segment is cut only here, as before);
    2. the nearest keyframe, within half a segment (open GOP: the segment before it also decodes the
       keyframe, which its leading pictures refer to, and the one after it drops those pictures);
    3. the frame nearest the target (long GOPs, one keyframe): the segment gets the packets from the
       keyframe before it, decodes them and drops the frames shown before its start.

    The plan weighs the extra decode (2. and 3., not with ``any_frame=False``): a segment must hold at least
    ``DECODE_COST / MAX_EXTRA_WORK`` times as many frames as it decodes only to drop, so in a one-keyframe
    stream segments grow as they go (each at least as long as everything before it, the last one its second
    half) and the extra work stays under a quarter of the encode. The last segment takes whatever is left once less than one and a
    half segments remain, and no piece shorter than half a segment is cut off at the end. With ``taper``
    (0..1), the last ``taper`` share of the stream is cut into half-length segments: encoders of mixed
    speeds then finish the job's tail together.
    """
    if segment_seconds <= 0:
        raise ValueError("segment_seconds must be positive")
    n = len(packets)
    pts = packets.pts
    if n == 0:
        return []
    first = int(pts.min())
    last_end = _stream_end(packets)
    total_ticks = last_end - first
    target = max(1, int(round(segment_seconds / time_base)))
    cuts = packets.clean_cuts()
    table = _Table(packets)
    shown = table.shown
    clean_times = np.sort(pts[cuts])
    key_times = np.sort(pts[table.keys])
    starts = [first]   # presentation time (ticks) where each segment starts
    if total_ticks >= 2 * target and (cuts.size > 1 or any_frame):
        tail = int(total_ticks * min(max(taper, 0.0), 1.0))
        while True:
            cur = starts[-1]
            # half length once a full segment from here would reach into the tail
            step = target if not tail or last_end - cur - target >= tail else max(1, target // 2)
            # a segment that starts between keyframes must hold enough frames to pay for those it drops
            at = int(np.searchsorted(shown, cur))
            need = int(np.ceil(table.dropped_before(cur) * DECODE_COST / MAX_EXTRA_WORK))
            earliest = int(shown[at + need]) if at + need < n else last_end
            length = max(step, earliest - cur)
            if last_end - cur <= length + length // 2:
                break  # the rest is the last segment
            want = cur + length
            low = max(cur + 1, earliest)
            best = _nearest(clean_times, want, low)
            if any_frame and (best is None or abs(best - want) > length // 2):
                best = _nearest(key_times, want, low)
                if best is None or abs(best - want) > length // 2:
                    best = _nearest(shown, want, low)
            if best is None or last_end - best < step // 2:
                break  # the rest is too short to stand alone
            after = n - int(np.searchsorted(shown, best))
            if after * MAX_EXTRA_WORK < table.dropped_before(best) * DECODE_COST:
                break  # the rest could not pay for what it would decode to drop: it stays in this segment
            starts.append(best)
    if len(starts) > 1:
        starts[-1] = table.balance_last(starts[-1])
    return table.segments(starts, last_end, time_base)


def segments_at(packets: PacketIndex, time_base: Fraction, frames: list[int]) -> list[Segment]:
    """The segments holding ``frames[i]`` shown frames each, in order: a plan rebuilt from a finished job's
    per-segment frame counts (``scripts/bench.py`` encodes the very pieces a job used this way, tapered or
    not). For a plan's own counts it gives that plan back."""
    if sum(frames) != len(packets) or any(f <= 0 for f in frames):
        raise ValueError(f"{sum(frames)} frames in {len(frames)} segments, the stream has {len(packets)}")
    table = _Table(packets)
    starts = [int(table.shown[a]) for a in np.cumsum([0, *frames[:-1]])]
    return table.segments(starts, _stream_end(packets), time_base)


def _stream_end(packets: PacketIndex) -> int:
    """Where the stream ends (ticks): when its last-shown frame does, by that frame's own duration where the
    source gives one (a VFR stream's typical gap can be far longer or shorter), else the typical gap."""
    return int(packets.pts.max()) + (packets.last_duration or _frame_ticks(packets.pts))


class _Table:
    """The packet table seen both ways: decode order (``pts``) and presentation order (``order``)."""

    def __init__(self, packets: PacketIndex) -> None:
        self.pts = packets.pts
        self.order = np.argsort(packets.pts, kind="stable")   # presentation position -> packet index
        self.shown = self.pts[self.order]
        self.keys = decode_starts(packets)
        self.first_after = np.minimum.accumulate(self.order[::-1])[::-1]  # first packet shown from position i on
        self.last_before = np.maximum.accumulate(self.order)              # last packet shown up to position i

    def frames(self, start: int, end: int | None) -> np.ndarray:
        """Packet indices of the frames shown in ``[start, end)`` (``end`` None: to the end)."""
        a = int(np.searchsorted(self.shown, start))
        b = self.shown.size if end is None else int(np.searchsorted(self.shown, end))
        return self.order[a:b]

    def decode_from(self, start: int, first_needed: int) -> int:
        """The packet decoding must start at for frames shown from ``start`` whose first in decode order is
        ``first_needed``: the keyframe before it, or the one before that when ``start`` is shown before that
        keyframe (its open-GOP leading pictures refer to the GOP before, which must come along)."""
        k = int(np.searchsorted(self.keys, first_needed, side="right")) - 1
        while k > 0 and start < int(self.pts[self.keys[k]]):
            k -= 1
        return int(self.keys[k])

    def dropped_before(self, start: int) -> int:
        """Frames a segment starting at ``start`` decodes and drops before it (0 at a clean cut)."""
        at = int(np.searchsorted(self.shown, start))
        if at == 0 or at >= self.shown.size:
            return 0
        begin = self.decode_from(start, int(self.first_after[at]))
        return int(np.count_nonzero(self.pts[begin:int(self.last_before[at - 1]) + 1] < start))

    def balance_last(self, start: int) -> int:
        """Where the last segment should start, given that the plan would start it at ``start``: later, where
        a long GOP makes it decode much more than it needs to pay for its drops, as long as it can still pay
        (a one-keyframe stream's last segment then holds its second half, not up to two thirds)."""
        at = int(np.searchsorted(self.shown, start))
        dropped = self.dropped_before(start)
        if not dropped:
            return start
        begin = self.decode_from(start, int(self.first_after[at]))
        if np.any(self.keys > begin):
            return start  # another keyframe follows: what it drops is no longer linear in where it starts
        origin = int(np.searchsorted(self.shown, int(self.pts[begin])))
        ratio = DECODE_COST / MAX_EXTRA_WORK
        n = self.shown.size
        best = int((n + ratio * origin) // (1 + ratio))   # (n - at) >= (at - origin) * ratio, at its largest
        for at in range(best, int(np.searchsorted(self.shown, start)), -1):
            if (n - at) * MAX_EXTRA_WORK >= self.dropped_before(int(self.shown[at])) * DECODE_COST:
                return int(self.shown[at])
        return start

    def segments(self, starts: list[int], end: int, time_base: Fraction) -> list[Segment]:
        """The segments starting at ``starts`` (ticks, in order), the last one running to ``end``."""
        bounds = [*starts, end]
        return [self.segment(i, bounds[i], bounds[i + 1], time_base, last=i == len(starts) - 1)
                for i in range(len(starts))]

    def segment(self, index: int, start: int, end: int, time_base: Fraction, *, last: bool) -> Segment:
        """The segment of the frames shown in ``[start, end)`` (ticks; the last one: everything from start)."""
        mine = self.frames(start, None if last else end)
        first_packet = self.decode_from(start, int(mine.min()))
        end_packet = int(mine.max()) + 1
        piece = self.pts[first_packet:end_packet]
        before = piece[piece < start]
        after = piece[piece >= end] if not last else piece[:0]
        keep = None
        if before.size or after.size:
            origin = int(self.pts[first_packet])
            lo = (int(before.max()) + start) / 2 - origin if before.size else start - origin - 0.5
            hi = (int(self.pts[mine].max()) + int(after.min())) / 2 - origin if after.size else end - origin + 0.5
            keep = (float(lo * time_base), float(hi * time_base))
        return Segment(index=index, first_packet=first_packet, end_packet=end_packet,
                       start=float(start * time_base), duration=float((end - start) * time_base),
                       start_ticks=start, duration_ticks=end - start, skip_frames=int(before.size),
                       tail_frames=int(after.size), keep=keep)


@dataclass(frozen=True)
class FrameFit:
    """The frame size the encoders get, and the filter that makes it (None: the source's own size)."""

    width: int
    height: int
    filter: str | None = None
    note: str | None = None


def fit_frame(width: int, height: int) -> FrameFit:
    """Decide, before any encoder starts, the frame size every encoder can take.

    Every output is 4:2:0 (yuv420p, nv12 on hardware: see :func:`montage_ray.encoders.segment.video_output_args`),
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
