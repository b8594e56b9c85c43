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

import shutil
import sys
import time
from typing import TYPE_CHECKING, Callable, TextIO

if TYPE_CHECKING:  # pragma: no cover
    from montage_ray.encoders.records import EncodeResult
    from montage_ray.encoders.records import FailedAttempt


class ProgressListener:
    """What a job tells whoever follows it; every method may be left as it is (does nothing)."""

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

    def line(self, width: int = 80) -> str:
        """One line: a bar sized to ``width``, frames, percent, fps, ETA, busy encoders, segments."""
        share = self.done / self.frames if self.frames else 0.0
        eta = self.eta
        text = (f" {self.done}/{self.frames} frames {100 * share:3.0f}% | {self.fps:6.1f} fps | "
                f"ETA {_clock(eta) if eta is not None else '--:--'} | "
                f"{self.busy}/{self.encoders} encoders busy | {len(self.finished)}/{self.segments} segments")
        if self.failures:
            text += f" | {self.failures} failed"
        bar = max(10, width - len(text) - 2)
        filled = int(round(bar * share))
        return "[" + "#" * filled + "." * (bar - filled) + "]" + text


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


class ProgressPrinter(ProgressListener):
    """Shows a job's progress on ``stream``: a bar redrawn in place on a terminal, else a line per segment."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.state: JobProgress | None = None
        self._drawn = False

    def start(self, *, frames: int, segments: int, encoders: int) -> None:
        self.state = JobProgress(frames, segments, encoders)
        if not self.tty:
            self._print(f"encoding {frames} frames in {segments} segments on {encoders} encoders")
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
            self._print(f"segment {result.segment + 1}/{s.segments} done: {result.frames} frames in "
                        f"{result.seconds:.1f} s ({result.fps:.1f} fps) on {result.actor}; "
                        f"{s.done}/{s.frames} frames ({100 * s.done / max(s.frames, 1):.0f}%)")

    def failure(self, attempt: "FailedAttempt") -> None:
        if self.state is None:
            return
        self.state.failures += 1
        message = (f"segment {attempt.segment + 1} attempt {attempt.attempt} failed on {attempt.actor} "
                   f"({attempt.reason}): {attempt.message}")
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[2K")  # clear the bar, print the line, draw the bar below it
        self._print(message)
        if self.tty:
            self._draw()

    def close(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False

    def _draw(self) -> None:
        width = shutil.get_terminal_size((100, 24)).columns - 1
        self.stream.write("\r" + self.state.line(width))  # type: ignore[union-attr]
        self.stream.flush()
        self._drawn = True

    def _print(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
