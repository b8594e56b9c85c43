"""Cut the source's video stream into the planned segments by stream copy (no re-encoding), in the background.

One ffmpeg pass with the segment muxer cuts at the planned packet numbers (``-segment_frames``), which are
clean keyframes, into NUT files that keep the source's timestamps exactly. The muxer lists each piece in a
CSV segment list the moment it closes it, so a piece can be encoded while the rest is still being cut:
:func:`start_cut` returns a :class:`Cut` whose :meth:`Cut.ready` hands out the pieces as they are done.

Segments cut between keyframes overlap (each carries the packets from the keyframe it needs): they are
cut by the same one ffmpeg into several outputs, one per *lane* of pieces that do not overlap
(:func:`cut_lanes`); what lies between two pieces of a lane is deleted as soon as it is closed.

No process is started per piece: a piece's packet count is known from the plan (a stream copy of a planned
packet range), and each piece's start time from the segment list is checked against the plan in Python.
The encoder actor counts its input again when its output comes out short (see
:func:`~montage_ray.encoders.segment.encode_segment`)::

    from montage_ray.media.cut import start_cut, split_source

    cut = start_cut(info, segments, workdir)      # ffmpeg runs in the background
    while not cut.finished:
        for index in cut.ready(timeout=0.5):      # pieces listed (and closed) since the last call
            send(cut.paths[index])
    paths = split_source(info, segments, workdir) # the same, all at once
"""

from __future__ import annotations

import os
import time
from typing import Sequence

from montage_ray.ffmpeg import commands
from montage_ray.ffmpeg import tool
from montage_ray.ffmpeg.caps import ffmpeg_caps
from montage_ray.errors import EncoderError
from montage_ray.media.info import MediaInfo
from montage_ray.media.plan import Segment

#: How often :meth:`Cut.ready` looks at the segment list while it waits (seconds).
POLL_SECONDS = 0.02


def split_timeout(media: MediaInfo) -> float:
    """Stream copy runs at disk speed; allow 60 s plus 1 s for every 20 MB."""
    return 60.0 + media.size / 20e6


def cut_lanes(segments: Sequence[Segment]) -> list[list[int]]:
    """Segments (indices) grouped into lanes whose packet ranges do not overlap, first fit in segment order.

    Segments cut at clean keyframes follow each other: one lane, today's single segment muxer. A segment
    cut between keyframes carries packets that the one before it also has (from the keyframe it needs),
    so it goes to another lane; a one-keyframe stream needs as many lanes as segments (the plan keeps them
    few: see :func:`montage_ray.media.plan.plan_segments`)."""
    lanes: list[list[int]] = []
    ends: list[int] = []
    for seg in segments:
        for n, end in enumerate(ends):
            if end <= seg.first_packet:
                lanes[n].append(seg.index)
                ends[n] = seg.end_packet
                break
        else:
            lanes.append([seg.index])
            ends.append(seg.end_packet)
    return lanes


class _Lane:
    """One output of the cutter: its pieces (in packet order), which segment each one is (None: a filler
    between two of its segments, deleted once closed) and what its segment list said so far."""

    def __init__(self, number: int, segments: Sequence[Segment], members: list[int], workdir: str) -> None:
        self.end = max(segments[i].end_packet for i in members)  # the lane's output stops there
        bounds = sorted({0, self.end} | {segments[i].first_packet for i in members}
                        | {segments[i].end_packet for i in members})
        owner = {(segments[i].first_packet, segments[i].end_packet): i for i in members}
        self.starts = bounds[:-1]                                   # first packet of each piece
        self.owners = [owner.get((a, b)) for a, b in zip(bounds, bounds[1:])]
        self.pattern = "src-%06d.nut" if number == 0 else f"src{number}-%06d.nut"
        self.list_path = os.path.join(workdir, "pieces.csv" if number == 0 else f"pieces{number}.csv")
        self.workdir = workdir
        self.listed: list[float] = []      # start time (s) of each listed piece, from the segment list
        self.reader = tool.AppendedLines(self.list_path)
        self.given = 0                     # pieces handed out (or deleted)

    def piece(self, i: int) -> str:
        return os.path.join(self.workdir, self.pattern % i)

    def read_list(self, exited: bool) -> None:
        if len(self.starts) == 1:  # one piece, no segment list: done when ffmpeg is
            if exited and not self.listed:
                self.listed.append(0.0)
            return
        for line in (raw.decode(errors="replace") for raw in self.reader.read()):
            fields = line.rsplit(",", 2)
            if len(fields) == 3:
                self.listed.append(float(fields[1]))

    def closed(self, exited: bool) -> int:
        """Listed pieces whose file is closed: all but the last listed, unless the next one was opened."""
        n = len(self.listed)
        if exited:
            return n
        return n if n and os.path.exists(self.piece(n)) else max(0, n - 1)


class Cut:
    """One running cut: which pieces are done (:meth:`ready`), their paths, and the cutter's end.

    A piece is handed out once the muxer listed it *and* closed it (the next piece exists, or ffmpeg ended):
    the list entry is written just before the piece's file is closed. ``finished`` is true once every piece
    was handed out and ffmpeg exited cleanly; ``events`` records ("listed", index) and ("exited", code) in
    the order this object saw them. Segments that overlap (cut between keyframes) are cut by one ffmpeg
    into several outputs (:func:`cut_lanes`); their pieces may come out of order.
    """

    def __init__(self, media: MediaInfo, segments: Sequence[Segment], workdir: str) -> None:
        self.segments = list(segments)
        self.media = media
        # ffmpeg runs inside workdir and gets relative names (see commands.cut_command): the segment muxer
        # reads its output name as a printf pattern, and the folder's own name (a user's, say "100%") must
        # never be one.
        total = len(media.packets)
        self.lanes = [_Lane(n, self.segments, members, workdir)
                      for n, members in enumerate(cut_lanes(self.segments))]
        self.pattern = self.lanes[0].pattern
        self.list_path = self.lanes[0].list_path
        self.workdir = workdir
        self.paths = [""] * len(self.segments)
        for lane in self.lanes:
            for i, owner in enumerate(lane.owners):
                if owner is not None:
                    self.paths[owner] = lane.piece(i)
        self.events: list[tuple[str, int]] = []
        self._exit: int | None = None
        self._done = 0                     # segments handed out
        self.finished = False
        keys = media.packets.key
        lanes = [commands.CutLane(lane.starts[1:], lane.pattern, lane.list_path,
                                  anywhere=not all(keys[p] for p in lane.starts[1:]),
                                  packets=lane.end if lane.end < total else None) for lane in self.lanes]
        args = commands.cut_lanes_command(media.path, media.video.index, lanes, caps=ffmpeg_caps())
        self._proc = tool.start(args, timeout=split_timeout(media), cwd=workdir)

    @property
    def running(self) -> bool:
        """Whether the cutting ffmpeg has not been seen to exit yet."""
        return self._exit is None

    def ready(self, timeout: float = 0.0) -> list[int]:
        """Indices of pieces done since the last call, waiting up to ``timeout`` seconds for at least one.

        Raises :class:`EncoderError` when ffmpeg fails or the pieces do not match the plan.
        """
        deadline = time.monotonic() + timeout
        while True:
            new = self._poll()
            if new or self.finished or time.monotonic() >= deadline:
                return new
            time.sleep(POLL_SECONDS)

    def wait(self) -> list[str]:
        """Block until every piece is cut; the paths in order."""
        while not self.finished:
            self.ready(timeout=1.0)
        return self.paths

    def close(self) -> None:
        """Stop the cutter if it still runs (a failed job); harmless after the end."""
        if self._exit is None:
            self._proc.kill()

    # -- reading the cutter's progress ------------------------------------------------------------
    def _poll(self) -> list[int]:
        if self.finished:
            return []
        code = self._proc.poll() if self._exit is None else self._exit
        if code is not None and self._exit is None:
            self._exit = code
            if code != 0:
                done = self._proc.wait(check=False)
                raise EncoderError("cutting the source failed: " + tool.describe_failure(done))
        exited = self._exit is not None
        new: list[int] = []
        for lane in self.lanes:
            lane.read_list(exited)
            closed = lane.closed(exited)
            for i in range(lane.given, closed):
                if i >= len(lane.starts):
                    raise EncoderError("cutting the source gave more segments than planned")
                self._check(lane, i)
                owner = lane.owners[i]
                if owner is None:
                    os.unlink(lane.piece(i))  # a filler between two segments of this lane
                    continue
                new.append(owner)
                self.events.append(("listed", owner))
            lane.given = max(lane.given, closed)
        self._done += len(new)
        if exited:
            self.events.append(("exited", self._exit))
            for lane in self.lanes:
                if lane.given != len(lane.starts):
                    raise EncoderError(f"cutting the source gave {lane.given} segments instead of "
                                       f"{len(lane.starts)}; the source's packet table may be inconsistent "
                                       "(try remuxing it first)")
                if os.path.exists(lane.piece(len(lane.starts))):
                    raise EncoderError("cutting the source gave more segments than planned")
            self.finished = True
        return new

    def _expected_start(self, lane: _Lane, i: int) -> float:
        """Where piece ``i`` of ``lane`` starts (seconds, source clock): its segment's start when it is cut at
        a clean keyframe, else its first packet's presentation time."""
        owner = lane.owners[i]
        if owner is not None and self.segments[owner].dropped == 0:
            return self.segments[owner].start
        return float(int(self.media.packets.pts[lane.starts[i]]) * self.media.video.time_base)

    def _check(self, lane: _Lane, i: int) -> None:
        """A piece must start where the plan says, within half a frame. The muxer lists the first piece at 0
        and the others shifted by the decode delay it gave the stream, so pieces are compared from the second."""
        if i < 2:
            return
        seg = self.segments[lane.owners[i]] if lane.owners[i] is not None else None
        half_frame = 0.5 * seg.duration / max(1, seg.frames) if seg else 0.0
        got = lane.listed[i] - lane.listed[1]
        want = self._expected_start(lane, i) - self._expected_start(lane, 1)
        if abs(got - want) > max(half_frame, 0.002):
            what = f"segment {lane.owners[i]}" if seg else f"piece {i} of lane {self.lanes.index(lane)}"
            raise EncoderError(f"cutting {what} started it {got:.3f} s after its lane's second piece instead of "
                               f"{want:.3f} s; the source's packet table may be inconsistent "
                               "(try remuxing it first)")


def start_cut(media: MediaInfo, segments: Sequence[Segment], workdir: str) -> Cut:
    """Start cutting ``media`` into ``segments`` (``workdir/src-NNNNNN.nut``) in the background."""
    return Cut(media, segments, workdir)


def split_source(media: MediaInfo, segments: Sequence[Segment], workdir: str) -> list[str]:
    """Cut every segment and return the paths in order (:func:`start_cut`, waited for)."""
    cut = start_cut(media, segments, workdir)
    try:
        return cut.wait()
    finally:
        cut.close()
