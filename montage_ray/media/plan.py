"""Where to cut: group GOPs into segments, at clean keyframes where they allow it, priced by what they cost.

Planning is pure: it reads a :class:`~montage_ray.media.info.PacketIndex` and returns :class:`Segment` rows.
This module also owns the whole segment-length policy (:func:`choose_plan`): a segment costs its encoder
more than its frames (process starts, the encoder's start-up and lookahead, the extra keyframe, the check:
:class:`EncoderCost`), so the plan weighs that overhead against how evenly the encoders finish
(:func:`predict`) and takes few long segments where the overhead dominates (one per encoder on a small
machine), more and a tapered tail where many or uneven encoders share the work; a clip shorter than two
segments is one segment on one encoder (:func:`is_small_job`).
A segment is the frames shown in a half-open range of time, made from a range of packets in decode order.
At a *clean* cut (see :meth:`~montage_ray.media.info.PacketIndex.clean_cuts`) the packets are exactly the frames;
where clean keyframes are too far apart (one keyframe, long or open GOPs) a segment starts at any frame and
carries the packets from the keyframe it needs, which its encoder decodes and drops (``skip_frames``,
``keep``); the plan weighs that extra decode (``DECODE_COST``, ``MAX_EXTRA_WORK``). Either way the frames of
consecutive segments follow each other exactly, none duplicated, none lost::

    from montage_ray.media.plan import EncoderCost, choose_plan, plan_segments

    segments = plan_segments(info.packets, info.video.time_base, segment_seconds=10)
    [(s.index, s.frames, round(s.duration, 2), s.skip_frames) for s in segments]
    # one keyframe in 20 s: [(0, 300, 10.0, 0), (1, 300, 10.0, 300)]: segment 1 decodes 0-299 to drop them

    plan = choose_plan(info.packets, info.video.time_base, [EncoderCost(fps=100, overhead_frames=5)] * 2)
    plan.describe()   # 'plan: 2 segments of 15.0-15.0 s (1 per encoder, cut at the frames the lengths land on, ...)'
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Callable, Sequence

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


@dataclass(frozen=True)
class EncoderCost:
    """One encoder session as the planner prices it: a segment of ``frames`` that decodes ``dropped`` more
    only to drop them takes ``overhead_seconds + (frames + overhead_frames) / fps + dropped / decode_fps``
    on it (see :meth:`seconds`)."""

    fps: float                      # frames a second of one session at this job's size (measured, or a guess)
    overhead_frames: float = 0.0    # a segment's start-up, lookahead and extra keyframe, in frames of its encode
    overhead_seconds: float = 0.05  # and what does not grow with the cost of a frame (process starts)
    decode_fps: float = 0.0         # frames a second it decodes the source at (0: DECODE_COST of an encode)
    evens: bool = True              # it can take a piece cut off-keyframe to even the pieces (it drops frames)
    kind: str = ""                  # what kind of encoder (its label): encoders of one kind run alike
    known: bool = True              # its speed was measured (or configured), not guessed

    def seconds(self, frames: float, dropped: float = 0.0) -> float:
        """Seconds one segment of ``frames`` (and ``dropped`` frames decoded only to be dropped) takes."""
        fps = max(self.fps, 1e-9)
        decode = dropped / self.decode_fps if self.decode_fps > 0 else dropped * DECODE_COST / fps
        return self.overhead_seconds + (frames + self.overhead_frames) / fps + decode


#: How much slower than expected one encoder may turn out (the driver's own work on its core, a harder
#: scene, a busy neighbour): a plan is scored half on the expected end, half on the end with one encoder
#: this much slower, so that it keeps the end close when the speeds are not what they seemed.
SPEED_SPREAD = 0.10

#: How far a guessed speed may be off: encoders of different kinds whose speeds nobody measured yet (the
#: first job on a mixed cluster) may be several times apart, so the plan keeps enough pieces for the pull
#: to even them out.
GUESS_SPREAD = 1.0

#: The longest segment the planner makes on its own (seconds), and the most source bytes one may hold
#: (a segment travels whole through the object store, and a killed job loses at most one per encoder).
MAX_SEGMENT_SECONDS = 60.0
MAX_SEGMENT_BYTES = 256e6

#: The shortest segment the planner makes on its own (seconds).
MIN_SEGMENT_SECONDS = 1.0

#: How fast the cut hands out pieces (source bytes a second, stream copy): no piece is ready sooner.
CUT_BYTES_PER_SECOND = 400e6

#: Segments per encoder the planner tries (each also with a tapered tail, and with cuts at any frame).
ROUNDS = (1, 2, 3, 4, 6, 8, 12, 16)

#: A plan of fewer segments is kept unless one of more is predicted at least this much faster: fewer
#: keyframes, joins and driver work that the prediction does not price.
PREFER_FEWER = 0.01


@dataclass(frozen=True)
class Plan:
    """The segments of one job and why: the length asked for, the tapered tail's share, how far a cut may
    move to a keyframe (``snap``), and the predicted encode time: as expected and with one encoder
    :data:`SPEED_SPREAD` slower (``worst``)."""

    segments: list[Segment]
    seconds: float
    taper: float = 0.0
    snap: float = 0.5
    predicted: float = 0.0
    worst: float = 0.0
    reason: str = ""
    spread: float = SPEED_SPREAD

    def describe(self) -> str:
        """One line for the job's log."""
        if not self.segments:
            return f"plan: no segments ({self.reason})"
        lengths = [s.duration for s in self.segments]
        cuts = sum(1 for s in self.segments if s.skip_frames)
        return (f"plan: {len(self.segments)} segment{'s' if len(lengths) != 1 else ''} of "
                f"{min(lengths):.1f}-{max(lengths):.1f} s ({self.reason}"
                + (f", {cuts} cut between keyframes" if cuts else "")
                + (f"; encode predicted {self.predicted:.1f} s, {self.worst:.1f} s with one encoder "
                   f"{100 * self.spread:.0f}% slower" if self.predicted else "") + ")")


def predict(segments: Sequence[Segment], costs: Sequence[EncoderCost], *, ready: Sequence[float] | None = None,
            slow: int | None = None, spread: float = SPEED_SPREAD) -> float:
    """Seconds until the last of ``segments`` is encoded on encoders of ``costs`` (one entry per session),
    fed as the pool feeds them: the largest first, each to the encoder that is expected to finish it
    soonest, none before it is cut (``ready[i]``: seconds after the start). With ``slow``, encoder ``slow``
    runs ``spread`` slower than its cost says, which the feeding does not know beforehand (on a tie it gets
    the larger segment: the prediction is for the unlucky case)."""
    return _predict([(s.frames, s.dropped) for s in segments], costs, ready, slow, spread)


def _predict(works: Sequence[tuple[int, int]], costs: Sequence[EncoderCost], ready: Sequence[float] | None,
             slow: int | None, spread: float = SPEED_SPREAD) -> float:
    """:func:`predict` for segments of ``works``: (frames, dropped) each."""
    if not works:
        return 0.0
    costs = list(costs) or [EncoderCost(fps=1.0)]
    # encoders alike share one heap of the times they are free: (cost expected, cost run, slowed, heap)
    groups: dict[tuple[EncoderCost, bool], list[float]] = {}
    for i, c in enumerate(costs):
        groups.setdefault((c, i == slow), []).append(0.0)
    kinds = [(c, replace(c, fps=c.fps / (1 + spread), decode_fps=c.decode_fps / (1 + spread))
              if slowed else c, slowed, free) for (c, slowed), free in groups.items()]
    end = 0.0
    for i in sorted(range(len(works)), key=lambda i: -works[i][0]):
        work = works[i]
        at = ready[i] if ready is not None else 0.0
        if len(kinds) == 1:
            _, runs, _, free = kinds[0]
        else:
            _, runs, _, free = min(kinds, key=lambda k: (max(k[3][0], at) + k[0].seconds(*work), not k[2], -k[0].fps))
        finish = max(free[0], at) + runs.seconds(*work)
        heapq.heapreplace(free, finish)
        end = max(end, finish)
    return end


def choose_plan(packets: PacketIndex, time_base: Fraction, costs: Sequence[EncoderCost], *,
                chosen: float | None = None, source_bytes: int = 0) -> Plan:
    """The segments of a job on encoders of ``costs`` (one entry per session), priced with their overhead.

    A length the user ``chosen`` is kept (no taper); a clip shorter than two segments is one segment
    (:func:`is_small_job`). Otherwise every plan of :data:`ROUNDS` segments per encoder (from
    :data:`MIN_SEGMENT_SECONDS` to :data:`MAX_SEGMENT_SECONDS` long), each with and without a tapered tail
    and with cuts at keyframes or at any frame, is fed through :func:`predict`, as expected and with one
    encoder of each kind :data:`SPEED_SPREAD` slower (:data:`GUESS_SPREAD` while encoders of different kinds
    run at guessed speeds), and the one with the least mean of the two wins
    (fewer segments on a near tie: :data:`PREFER_FEWER`). Where a segment's overhead is large against its
    frames the plan has few long segments, one per encoder on a small machine; where many or uneven
    encoders share the work, more and a tapered tail.
    """
    if len(packets) == 0:
        return Plan([], 0.0, reason="no frames")
    table = _Table(packets)
    duration = float((table.end - int(table.shown[0])) * time_base)
    costs = list(costs) or [EncoderCost(fps=1.0)]
    if is_small_job(duration, chosen):
        seconds = 2 * duration + 1
        return Plan(table.segments(table.starts(seconds / time_base), table.end, time_base), seconds,
                    reason="shorter than two segments: one")
    n = len(packets)
    firsts = sorted({c: i for i, c in reversed(list(enumerate(costs)))}.values())  # one encoder of each kind
    guessed = not all(c.known for c in costs) and len({c.kind for c in costs}) > 1
    spread = GUESS_SPREAD if guessed else SPEED_SPREAD

    def scored(starts: list[int]) -> tuple[float, float]:
        works, ends = table.work(starts)
        ready = [e / n * source_bytes / CUT_BYTES_PER_SECOND for e in ends]
        return (_predict(works, costs, ready, None),
                max(_predict(works, costs, ready, slow, spread) for slow in firsts))

    if chosen:
        starts = table.starts(chosen / time_base)
        expected, worst = scored(starts)
        return Plan(table.segments(starts, table.end, time_base), chosen, predicted=expected, worst=worst,
                    reason=f"{chosen:g} s asked for")
    workers = len(costs)
    longest = MAX_SEGMENT_SECONDS
    if source_bytes > 0 and duration > 0:
        longest = max(MIN_SEGMENT_SECONDS, min(longest, MAX_SEGMENT_BYTES * duration / source_bytes))
    tried: dict[tuple[int, ...], tuple[float, float, float, float, float, str]] = {}
    best = float("inf")
    for rounds in ROUNDS:
        seconds = min(longest, duration / (rounds * workers))
        if seconds < MIN_SEGMENT_SECONDS and tried:
            break
        if tried and min((v[3] + v[4]) / 2 for v in tried.values()) > best:
            break  # more segments only added overhead last time: the scores rise from here on
        best = min([(v[3] + v[4]) / 2 for v in tried.values()], default=best)
        seconds = max(seconds, MIN_SEGMENT_SECONDS)
        for taper in ((0.0, TAPER) if workers > 1 and rounds > 1 else (0.0,)):
            for snap in ((0.5, 0.0) if all(c.evens for c in costs) else (0.5,)):
                starts = table.starts(seconds / time_base, taper=taper, snap=snap)
                if tuple(starts) in tried:
                    continue
                expected, worst = scored(starts)
                tried[tuple(starts)] = (seconds, taper, snap, expected, worst,
                                        f"{rounds} per encoder" + (", a tapered tail" if taper else "")
                                        + ("" if snap else ", cut at the frames the lengths land on"))
    best = min((v[3] + v[4]) / 2 for v in tried.values())
    starts, (seconds, taper, snap, expected, worst, reason) = min(
        ((list(k), v) for k, v in tried.items() if (v[3] + v[4]) / 2 <= best * (1 + PREFER_FEWER)),
        key=lambda kv: (len(kv[0]), kv[1][3] + kv[1][4]))
    return Plan(table.segments(starts, table.end, time_base), seconds, taper, snap, expected, worst, reason, spread)


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
                  *, taper: float = 0.0, any_frame: bool = True, snap: float = 0.5) -> list[Segment]:
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
    if len(packets) == 0:
        return []
    table = _Table(packets)
    return table.segments(table.starts(segment_seconds / time_base, taper=taper, any_frame=any_frame, snap=snap),
                          table.end, time_base)


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
        self.cuts = packets.clean_cuts()
        self.clean_times = np.sort(self.pts[self.cuts])
        self.clean_set = set(self.clean_times.tolist())
        self.key_times = np.sort(self.pts[self.keys])
        self.end = _stream_end(packets)

    def starts(self, ticks: Fraction | float, *, taper: float = 0.0, any_frame: bool = True,
               snap: float = 0.5) -> list[int]:
        """Where the segments of :func:`plan_segments` start (ticks), for segments of ``ticks``."""
        n, shown, last_end = self.shown.size, self.shown, self.end
        first = int(shown[0])
        total_ticks = last_end - first
        target = max(1.0, float(ticks))
        starts = [first]   # presentation time (ticks) where each segment starts
        ideal = float(first)  # where the last segment would start unrounded: lengths of a fraction of a tick add up
        if total_ticks >= 2 * target and (self.cuts.size > 1 or any_frame):
            tail = int(total_ticks * min(max(taper, 0.0), 1.0))
            while True:
                cur = starts[-1]
                here = ideal if int(round(ideal)) == cur else float(cur)
                # half length once a full segment from here would reach into the tail
                step = target if not tail or last_end - here - target >= tail else max(1.0, target // 2)
                # a segment that starts between keyframes must hold enough frames to pay for those it drops
                at = int(np.searchsorted(shown, cur))
                need = int(np.ceil(self.dropped_before(cur) * DECODE_COST / MAX_EXTRA_WORK))
                earliest = int(shown[at + need]) if at + need < n else last_end
                length = max(step, earliest - here)
                if last_end - here <= length + length // 2:
                    break  # the rest is the last segment
                want = int(round(here + length))
                low = max(cur + 1, earliest)
                best = _nearest(self.clean_times, want, low)
                reach = int(length * snap)
                if any_frame and (best is None or abs(best - want) > reach):
                    best = _nearest(self.key_times, want, low)
                    if best is None or abs(best - want) > reach:
                        best = _nearest(shown, want, low)
                if best is None or last_end - best < step // 2:
                    break  # the rest is too short to stand alone
                after = n - int(np.searchsorted(shown, best))
                if after * MAX_EXTRA_WORK < self.dropped_before(best) * DECODE_COST:
                    break  # the rest could not pay for what it would decode to drop: it stays in this segment
                starts.append(best)
                ideal = here + length
        if len(starts) > 1:
            starts[-1] = self.balance_last(starts[-1])
        return starts

    def work(self, starts: list[int]) -> tuple[list[tuple[int, int]], list[int]]:
        """For segments starting at ``starts``: the frames each encodes and those it decodes only to drop
        before its start, and its last packet + 1."""
        at = np.searchsorted(self.shown, np.asarray(starts, dtype=np.int64))
        bounds = np.append(at, self.shown.size)
        frames = np.diff(bounds).tolist()
        ends = [int(self.last_before[b - 1]) + 1 for b in bounds[1:]]
        return [(f, self.dropped_before(t)) for f, t in zip(frames, starts)], ends

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
        if start in self.clean_set:
            return 0
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
