"""Progress of a running job: frames done of the total, speed, ETA and how many encoders are busy.

:class:`JobProgress` is the arithmetic (no I/O): the pool tells it when a segment finishes and, about once a
second, how far the running segments are (from ffmpeg's ``-progress`` inside each actor).
:class:`ProgressPrinter` draws it: one bar redrawn in place on a terminal, plain lines otherwise, nothing
when quiet. Any object with the methods of :class:`ProgressListener` can follow a job::

    from montage_ray import encode
    from montage_ray.job.progress import ProgressPrinter

    encode("in.mp4", "out.mp4", progress=ProgressPrinter(sys.stdout))
    encode("in.mp4", "out.mp4", progress=lambda done, total, result: print(done, "of", total))
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import TYPE_CHECKING, Callable, TextIO

if TYPE_CHECKING:  # pragma: no cover
    from montage_ray.encoders.records import EncodeResult
    from montage_ray.encoders.records import FailedAttempt


class ProgressListener:
    """What a job tells whoever follows it; every method may be left as it is (does nothing)."""

    def begin(self, *, job_id: str, source: str, destination: str) -> None:
        """The job has its id (the one ``montage-ray status`` lists), before anything is started."""

    def stage(self, text: str) -> None:
        """What the job is doing before its encode starts, when that takes a while ("starting a local Ray")."""

    def start(self, *, frames: int, segments: int, encoders: int) -> None:
        """The job is planned: ``frames`` in ``segments`` segments for ``encoders`` actors."""

    def tick(self, partial: dict[int, int], busy: int) -> None:
        """About once a second: frames done of the running segments, and how many actors are busy."""

    def segment_done(self, result: "EncodeResult") -> None:
        """A segment was encoded (and counted)."""

    def failure(self, attempt: "FailedAttempt") -> None:
        """An attempt failed; the segment goes to another encoder."""

    def close(self) -> None:
        """The encode phase is over (join and verify follow)."""


class CallbackListener(ProgressListener):
    """Adapts a plain ``callback(done, total, result)`` called after each finished segment."""

    def __init__(self, callback: Callable[[int, int, "EncodeResult"], None]) -> None:
        self.callback, self.done, self.total = callback, 0, 0

    def start(self, *, frames: int, segments: int, encoders: int) -> None:
        self.total = segments

    def segment_done(self, result: "EncodeResult") -> None:
        self.done += 1
        self.callback(self.done, self.total, result)


class JobProgress:
    """Frames done (finished segments plus the running ones' partial counts), speed and time left."""

    def __init__(self, frames: int, segments: int, encoders: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.frames, self.segments, self.encoders = frames, segments, encoders
        self.clock = clock
        self.started = clock()
        self.finished: set[int] = set()
        self.finished_frames = 0
        self.partial: dict[int, int] = {}
        self.busy = 0
        self.failures = 0

    def segment_done(self, index: int, frames: int) -> None:
        if index not in self.finished:
            self.finished.add(index)
            self.finished_frames += frames
        self.partial.pop(index, None)

    def update(self, partial: dict[int, int], busy: int) -> None:
        """New partial counts (a segment that already finished is ignored) and the busy actors."""
        self.partial = {i: f for i, f in partial.items() if i not in self.finished}
        self.busy = busy

    @property
    def done(self) -> int:
        return min(self.frames, self.finished_frames + sum(self.partial.values()))

    @property
    def fps(self) -> float:
        elapsed = self.clock() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at the speed so far; None before anything was encoded."""
        fps = self.fps
        return (self.frames - self.done) / fps if fps > 0 else None

    @property
    def over(self) -> bool:
        """Every segment is done."""
        return self.segments > 0 and len(self.finished) >= self.segments

    def line(self, width: int = 80, *, closed: bool = False) -> str:
        """One line of at most ``width`` characters: a bar, then frames, percent, fps, ETA, busy encoders and
        segments, the words shortened or left out until it fits (it is redrawn in place: a line that wraps
        would stack up). Once every segment is done (or ``closed``), the time it took instead of the ETA and
        no busy encoders."""
        share = self.done / self.frames if self.frames else 0.0
        pct = f"{100 * share:3.0f}%"
        finished = self.over or closed
        eta = self.eta
        when = f"done in {_clock(self.clock() - self.started)}" if finished else f"ETA {_clock(eta) if eta is not None else '--:--'}"
        failed = f"{self.failures} failed" if self.failures else ""
        # (long form, short form, dropped at this step or later: 9 never); the busy encoders mean nothing once over
        fields = [(f"{self.done}/{self.frames} frames {pct}", f"{self.done}/{self.frames} {pct}", 4),
                  (f"{self.fps:6.1f} fps", f"{self.fps:.0f} fps", 6), (when, when, 7),
                  ("" if finished else f"{self.busy}/{self.encoders} encoders busy",
                   "" if finished else f"busy {self.busy}/{self.encoders}", 5),
                  (f"{len(self.finished)}/{self.segments} segments", f"seg {len(self.finished)}/{self.segments}", 5),
                  (failed, failed, 6)]
        texts = [" " + " | ".join(f[0] for f in fields if f[0]), " " + " | ".join(f[1] for f in fields if f[1]),
                 " " + " ".join(f[1] for f in fields if f[1])]
        for step in range(4, 9):
            kept = [f[1] for f in fields if f[1] and f[2] > step]
            texts.append(" " + " ".join(([] if step < 4 else [pct]) + kept))
        for text in texts:
            bar = width - len(text) - 2
            if bar >= MIN_BAR:
                filled = int(round(bar * share))
                return "[" + "#" * filled + "." * (bar - filled) + "]" + text
        return texts[-1].strip()[:max(width, 0)]


#: The narrowest bar drawn; on a narrower terminal the words go first, then the bar.
MIN_BAR = 10


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def plural(n: int, word: str) -> str:
    """``1 segment``, ``2 segments``."""
    return f"{n} {word}" + ("" if n == 1 else "s")


class ProgressPrinter(ProgressListener):
    """Shows a job's progress on ``stream``: a bar redrawn in place on a terminal, else a line per segment.

    On a terminal the bar always fits its width (measured at every redraw); a stage before the encode
    ("starting a local Ray ...") is shown in its place until the bar comes. Segments are numbered from 0, as in
    the report, the timeline and the error messages."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None, columns: int | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.columns = columns    # the terminal's width; None: asked at every redraw (a window may be resized)
        self.state: JobProgress | None = None
        self._drawn = ""   # what is drawn in place now: "", "stage" or "bar"

    def begin(self, *, job_id: str, source: str, destination: str) -> None:
        self._print(f"job {job_id}: {source} -> {destination}")

    def stage(self, text: str) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K" + text[:self._width()])
            self.stream.flush()
            self._drawn = "stage"
        else:
            self._print(text)

    def start(self, *, frames: int, segments: int, encoders: int) -> None:
        self.state = JobProgress(frames, segments, encoders)
        if not self.tty:
            self._print(f"encoding {plural(frames, 'frame')} in {plural(segments, 'segment')} on "
                        f"{plural(encoders, 'encoder')}")
        else:
            self._draw()

    def tick(self, partial: dict[int, int], busy: int) -> None:
        if self.state is not None:
            self.state.update(partial, busy)
            if self.tty:
                self._draw()

    def segment_done(self, result: "EncodeResult") -> None:
        if self.state is None:
            return
        self.state.segment_done(result.segment, result.frames)
        if self.tty:
            self._draw()
        else:
            s = self.state
            self._print(f"segment {result.segment} done ({len(s.finished)}/{s.segments}): {result.frames} frames in "
                        f"{result.seconds:.1f} s ({result.fps:.1f} fps) on {result.actor}; "
                        f"{s.done}/{s.frames} frames ({100 * s.done / max(s.frames, 1):.0f}%)")

    def failure(self, attempt: "FailedAttempt") -> None:
        if self.state is None:
            return
        self.state.failures += 1
        message = (f"segment {attempt.segment} attempt {attempt.attempt} failed on {attempt.actor} "
                   f"({attempt.reason}): {attempt.message}")
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[2K")  # clear the bar, print the line, draw the bar below it
        self._print(message)
        if self.tty:
            self._draw()

    def close(self) -> None:
        """The encode is over (or the job failed before it): the bar's last state stays on its line; a stage
        shown in its place is cleared."""
        if self.tty and self._drawn == "bar" and self.state is not None:
            self._draw(closed=True)
            self.stream.write("\n")
        elif self.tty and self._drawn == "stage":
            self.stream.write("\r\x1b[2K")
        self.stream.flush()
        self._drawn = ""

    def _width(self) -> int:
        """The terminal's columns less one (writing the last column wraps on some terminals)."""
        columns = self.columns
        if columns is None:
            try:
                columns = os.get_terminal_size(self.stream.fileno()).columns
            except (AttributeError, OSError, ValueError):
                columns = shutil.get_terminal_size((80, 24)).columns
        return max(columns - 1, 1)

    def _draw(self, *, closed: bool = False) -> None:
        self.stream.write("\r" + self.state.line(self._width(), closed=closed))  # type: ignore[union-attr]
        self.stream.flush()
        self._drawn = "bar"

    def _print(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
