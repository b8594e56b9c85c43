"""The frames a file shows, counted from its packets by ffprobe, the same way for the source and the output.

The final verification (:func:`montage_ray.media.join.verify_output`) compares the joined file with its
source on counts made here, never on a figure of the plan, the cut, the encoders or the join: a frame lost
anywhere on the way is a mismatch however every step reported it. A frame is *shown* when its packet is not
marked discard (ffprobe's ``D`` flag: the MP4 demuxer marks so the samples an edit list leaves out, which
decoders then drop; a muxer that ends an edit list before the last frame leaves that frame unshown while its
packet is still there)::

    from montage_ray.media.verify import shown_frames, compare

    source = shown_frames("in.webm", stream=0)        # one demux pass, video only, no decoding
    output = shown_frames("out.mp4", stream=0)
    compare(output, source)                           # VerificationError on one frame off

Counting packets costs a demux pass; decoding would cost as much as a whole encode's check. What a packet
count can miss, a frame that is there but does not decode as one (an ffprobe too old to print the discard
flag, a decoder that drops it), shows at the end of the stream, where the joined file was last written:
:func:`tail_window` names the stretch from the output's last keyframe to its end, which the verification
decodes, and every shown packet there must come out as a frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from montage_ray.errors import FFmpegError, VerificationError
from montage_ray.ffmpeg import commands, tool


@dataclass(frozen=True)
class ShownFrames:
    """What one file's video stream shows, from its packets (times in seconds on the file's own clock)."""

    frames: int          # packets not marked discard
    packets: int         # every video packet
    first: float         # the first shown frame's presentation time
    last: float          # the last shown frame's presentation time
    gap: float           # the typical time between shown frames (median), 0 for a single frame
    tool: str = ""       # the ffprobe that counted

    @property
    def span(self) -> float:
        """The last shown frame's time from the first's."""
        return self.last - self.first


def shown_from_table(pts: np.ndarray, discard: np.ndarray, time_base: Fraction, *, probe: str = "") -> ShownFrames:
    """:class:`ShownFrames` from a video packet table: presentation times in ticks (``MISSING`` where a
    packet has none) and whether each packet is marked discard."""
    keep = ~discard & (pts != MISSING)
    shown = np.sort(pts[keep])
    if shown.size == 0:
        return ShownFrames(0, int(pts.size), 0.0, 0.0, 0.0, probe)
    gaps = np.diff(shown)
    gaps = gaps[gaps > 0]
    tb = float(time_base)
    return ShownFrames(frames=int(shown.size), packets=int(pts.size), first=float(shown[0]) * tb,
                       last=float(shown[-1]) * tb, gap=float(np.median(gaps)) * tb if gaps.size else 0.0,
                       tool=probe)


#: Stands for a missing (N/A) timestamp in packet tables.
MISSING = np.iinfo(np.int64).min


def parse_shown_csv(text: str, *, probe: str = "") -> ShownFrames:
    """:class:`ShownFrames` from :func:`~montage_ray.ffmpeg.commands.shown_frames_command`'s CSV
    (``packet,pts,dts,flags`` rows and a ``stream,time_base`` row)."""
    pts: list[int] = []
    discard: list[bool] = []
    time_base = Fraction(1, 90000)
    for line in text.splitlines():
        fields = line.split(",")
        if fields[0] == "stream" and len(fields) >= 2 and "/" in fields[1]:
            time_base = Fraction(fields[1])
            continue
        if fields[0] != "packet" or len(fields) < 4:
            continue
        value = fields[1] if fields[1] not in ("N/A", "") else fields[2]
        pts.append(int(value) if value not in ("N/A", "") else MISSING)
        discard.append("D" in fields[-1])
    return shown_from_table(np.array(pts, dtype=np.int64), np.array(discard, dtype=bool), time_base, probe=probe)


class SourceCount:
    """The source's shown frames, counted by ffprobe in the background while the output is being read."""

    def __init__(self, path: str, stream: int, *, timeout: float = 600.0) -> None:
        self.path = path
        self.probe = tool.ffprobe()
        self._run = tool.start(commands.shown_frames_command(self.probe, path, stream), timeout=timeout,
                               capture_stdout=True)

    def result(self) -> ShownFrames:
        try:
            done = self._run.wait(check=False)
        except FFmpegError as err:
            raise VerificationError(f"counting the source's frames again failed: {err}") from None
        finally:
            self._run.kill()
        if done.returncode != 0:
            raise VerificationError("counting the source's frames again failed: " + tool.describe_failure(done))
        return parse_shown_csv(done.stdout, probe=self.probe)

    def kill(self) -> None:
        self._run.kill()


def compare(output: ShownFrames, source: ShownFrames, *, frame: float = 0.0) -> None:
    """The output must show as many frames as the source, its last one where the source's is (from the first,
    within one frame: the larger of ``frame``, the source's typical gap and a millisecond). Raises
    :class:`VerificationError`."""
    if output.frames != source.frames:
        hidden = output.packets - output.frames
        why = f" ({hidden} of its {output.packets} packets are outside its edit list)" if hidden else ""
        raise VerificationError(f"the output shows {output.frames} video frames, the source {source.frames}{why} "
                                f"(both counted from their packets by {source.tool or 'ffprobe'})")
    allowed = max(frame, source.gap, 0.001)
    if abs(output.span - source.span) > allowed:
        raise VerificationError(f"the output's last video frame is shown {output.span:.3f} s after its first, the "
                                f"source's {source.span:.3f} s after its first")


def tail_window(pts: np.ndarray, key: np.ndarray, discard: np.ndarray, time_base: Fraction,
                gap: float) -> tuple[float, int, int] | None:
    """(start on the file's clock, packets to read, frames they must decode to) of the stretch from the last
    keyframe to the end, in decode order; None without a keyframe. The start lies half a typical gap after the
    keyframe's time, so that ffprobe seeks to that keyframe and no earlier one."""
    keys = np.flatnonzero(key & (pts != MISSING))
    if keys.size == 0:
        return None
    at = int(keys[-1])
    packets = int(pts.size - at)
    frames = int((~discard[at:]).sum())
    return float(pts[at]) * float(time_base) + gap / 2, packets, frames


def decode_tail(path: str, window: tuple[float, int, int], *, timeout: float = 600.0) -> None:
    """Decode the output's last stretch (:func:`tail_window`); every shown packet there must give a frame and
    the decoder must say nothing. Raises :class:`VerificationError`."""
    start, packets, frames = window
    try:
        done = tool.run(commands.join_windows_command(tool.ffprobe(), path, [(start, packets)]), timeout=timeout,
                        check=False)
    except FFmpegError as err:
        raise VerificationError(f"decoding the end of the output failed: {err}") from None
    if done.returncode != 0:
        raise VerificationError("decoding the end of the output failed: " + tool.describe_failure(done))
    if done.stderr.strip():
        raise VerificationError("decoding the end of the output reported errors: " + tool.last_error_line(done.stderr))
    got = int(tool.first_stream(done.stdout).get("nb_read_frames") or 0)
    if got != frames:
        raise VerificationError(f"the output's last {packets} video packets decode to {got} frames, not {frames}: "
                                "a frame at its end is not shown")
