"""Cut the source's video stream into the planned segments by stream copy (no re-encoding), in the background.

One ffmpeg pass with the segment muxer cuts at the planned packet numbers (``-segment_frames``), which are
clean keyframes, into NUT files that keep the source's timestamps exactly. The muxer lists each piece in a
CSV segment list the moment it closes it, so a piece can be encoded while the rest is still being cut:
:func:`start_cut` returns a :class:`Cut` whose :meth:`Cut.ready` hands out the pieces as they are done.

No process is started per piece: a piece's packet count is known from the plan (a stream copy of a planned
packet range), and each piece's start time from the segment list is checked against the plan in Python.
The encoder actor counts its input again when its output comes out short (see
:func:`~montage_ray.segment_encode.encode_segment`)::

    from montage_ray.split import start_cut, split_source

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

from montage_ray import commands, ffmpeg_cli
from montage_ray.caps import ffmpeg_caps
from montage_ray.errors import EncoderError
from montage_ray.media import MediaInfo
from montage_ray.plan import Segment

#: How often :meth:`Cut.ready` looks at the segment list while it waits (seconds).
POLL_SECONDS = 0.02


def split_timeout(media: MediaInfo) -> float:
    """Stream copy runs at disk speed; allow 60 s plus 1 s for every 20 MB."""
    return 60.0 + media.size / 20e6


class Cut:
    """One running cut: which pieces are done (:meth:`ready`), their paths, and the cutter's end.

    A piece is handed out once the muxer listed it *and* closed it (the next piece exists, or ffmpeg ended):
    the list entry is written just before the piece's file is closed. ``finished`` is true once every piece
    was handed out and ffmpeg exited cleanly; ``events`` records ("listed", index) and ("exited", code) in
    the order this object saw them.
    """

    def __init__(self, media: MediaInfo, segments: Sequence[Segment], workdir: str) -> None:
        self.segments = list(segments)
        # ffmpeg runs inside workdir and gets relative names (see commands.cut_command): the segment muxer
        # reads its output name as a printf pattern, and the folder's own name (a user's, say "100%") must
        # never be one.
        self.pattern = "src-%06d.nut"
        self.list_path = os.path.join(workdir, "pieces.csv")
        self.workdir = workdir
        self.paths = [self._piece(i) for i in range(len(self.segments))]
        self.events: list[tuple[str, int]] = []
        self._listed: list[float] = []     # start time (s) of each listed piece, from the segment list
        self._list = ffmpeg_cli.AppendedLines(self.list_path)
        self._given = 0                    # pieces handed out
        self._exit: int | None = None
        self.finished = False
        args = commands.cut_command(media.path, media.video.index, [s.first_packet for s in self.segments[1:]],
                                    self.pattern, caps=ffmpeg_caps(), segment_list=self.list_path)
        self._proc = ffmpeg_cli.start(args, timeout=split_timeout(media), cwd=workdir)

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
                raise EncoderError("cutting the source failed: " + ffmpeg_cli.describe_failure(done))
        self._read_list()
        closed = len(self._listed) if self._exit is not None else self._closed()
        new = list(range(self._given, closed))
        for i in new:
            self._check(i)
            self.events.append(("listed", i))
        self._given = closed
        if self._exit is not None:
            self.events.append(("exited", self._exit))
            if self._given != len(self.segments):
                raise EncoderError(f"cutting the source gave {self._given} segments instead of "
                                   f"{len(self.segments)}; the source's packet table may be inconsistent "
                                   "(try remuxing it first)")
            if os.path.exists(self._piece(len(self.segments))):
                raise EncoderError("cutting the source gave more segments than planned")
            self.finished = True
        return new

    def _closed(self) -> int:
        """Listed pieces whose file is closed: all but the last listed, unless the next one was opened."""
        n = len(self._listed)
        return n if n and os.path.exists(self._piece(n)) else max(0, n - 1)

    def _piece(self, i: int) -> str:
        return os.path.join(self.workdir, self.pattern % i)

    def _read_list(self) -> None:
        if len(self.segments) == 1:  # one piece, no segment muxer: done when ffmpeg is
            if self._exit is not None and not self._listed:
                self._listed.append(self.segments[0].start)
            return
        for line in (raw.decode(errors="replace") for raw in self._list.read()):
            fields = line.rsplit(",", 2)
            if len(fields) == 3:
                self._listed.append(float(fields[1]))

    def _check(self, i: int) -> None:
        """A piece must start where the plan says, within half a frame. The muxer lists the first piece at 0
        and the others shifted by the decode delay it gave the stream, so pieces are compared from the second."""
        if i >= len(self.segments):
            raise EncoderError("cutting the source gave more segments than planned")
        if i < 2:
            return
        seg, second = self.segments[i], self.segments[1]
        half_frame = 0.5 * seg.duration / max(1, seg.frames)
        got = self._listed[i] - self._listed[1]
        if abs(got - (seg.start - second.start)) > max(half_frame, 0.002):
            raise EncoderError(f"cutting segment {i} started it {got:.3f} s after segment 1 instead of "
                               f"{seg.start - second.start:.3f} s; the source's packet table may be "
                               "inconsistent (try remuxing it first)")


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
