"""Encode one segment on one backend: bytes in, verified bytes out. No Ray here.

An encoder actor (see :mod:`montage_ray.cluster.actor`) calls :func:`encode_segment` with the segment's packets
(a NUT file made by stream copy, so timestamps are exact) and an :class:`~montage_ray.encoders.backends.EncoderSpec`.
The output keeps the source's presentation times (passthrough timing, the source time base: see
:func:`montage_ray.ffmpeg.commands.encode_command`), so
variable frame rate survives, and is checked by counting its packets: ffmpeg's exit status alone proves
nothing::

    from montage_ray.encoders.backends import cpu_spec
    from montage_ray.encoders.segment import SegmentOutput, SegmentRun, encode_segment

    result, encoded = encode_segment(cpu_spec("h264", threads=2), segment, open("seg.nut", "rb").read(),
                                     SegmentOutput(video_args=("-pix_fmt", "yuv420p")), SegmentRun(timeout=60))
    result.frames, result.fps
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from montage_ray.ffmpeg import commands
from montage_ray.ffmpeg import tool
from montage_ray.encoders import quality
from montage_ray.util import workdirs
from montage_ray.encoders import hdr as hdr_carry
from montage_ray.ffmpeg.caps import FFmpegCaps, ffmpeg_caps
from montage_ray.encoders.backends import EncoderSpec
from montage_ray.encoders.records import EncodeResult, JobSettings
from montage_ray.encoders.checks import Check
from montage_ray.errors import EncoderError, FFmpegError, InputError
from montage_ray.media.info import HdrInfo, VideoInfo
from montage_ray.media.mp4 import NotPatchable, set_video_end
from montage_ray.media.plan import Segment
from montage_ray.util.params import records

#: Pixel formats each codec is encoded to on CPU backends (broadest playback support).
_PIX_FMT_8BIT = "yuv420p"
_PIX_FMT_10BIT = "yuv420p10le"




#: H.264 levels: (name, max macroblocks per frame, max macroblocks per second).
H264_LEVELS = (("3.0", 1620, 40500), ("3.1", 3600, 108000), ("3.2", 5120, 216000), ("4.0", 8192, 245760),
               ("4.2", 8704, 522240), ("5.0", 22080, 589824), ("5.1", 36864, 983040), ("5.2", 36864, 2073600),
               ("6.0", 139264, 4177920), ("6.1", 139264, 8355840), ("6.2", 139264, 16711680))


def h264_level(width: int, height: int, fps: float) -> str:
    """The lowest H.264 level whose frame size and macroblock rate fit the video."""
    mbs = -(-width // 16) * -(-height // 16)
    for name, max_fs, max_mbps in H264_LEVELS:
        if mbs <= max_fs and mbs * fps <= max_mbps:
            return name
    return H264_LEVELS[-1][0]


def level_idc(level: str) -> str:
    """``"4.0"`` -> ``"40"``: the one spelling every encoder's ``-level`` takes (x264 parses it, the
    hardware encoders' integer options take it as is, where ``"4.0"`` would mean level_idc 4)."""
    return str(round(float(level) * 10))


def video_output_args(video: VideoInfo, spec: EncoderSpec) -> list[str]:
    """Output options that keep the source's look (pixel format, colour description) and make segments
    from different encoders joinable: H.264 is High profile at one level computed from the video, but for
    x264's lossless mode (``--quality 0``: CRF 0), which exists only in High 4:4:4 Predictive."""
    args: list[str] = []
    if spec.codec == "h264":
        fps = float(video.frame_rate) if video.frame_rate else 30.0
        args += ["-profile:v", X264_LOSSLESS_PROFILE if x264_lossless(spec) else spec.h264_high,
                 "-level:v", level_idc(h264_level(video.width, video.height, fps))]
    if spec.video_filter is None:  # hardware backends choose their surface format in their filter
        ten_bit = bool(video.pix_fmt) and ("10" in video.pix_fmt or "12" in video.pix_fmt)
        args += ["-pix_fmt", _PIX_FMT_10BIT if ten_bit and spec.codec != "h264" else _PIX_FMT_8BIT]
    for option, value in (("-color_primaries", video.color_primaries), ("-color_trc", video.color_transfer),
                          ("-colorspace", video.color_space), ("-color_range", video.color_range)):
        if value:
            args += [option, value]
    return args


#: The H.264 profile of x264's lossless mode (CRF 0 or QP 0): High refuses it ("Error setting profile high").
X264_LOSSLESS_PROFILE = "high444"


def x264_lossless(spec: EncoderSpec) -> bool:
    """Whether ``spec`` is x264 asked for lossless output (``-crf 0`` or ``-qp 0`` among its quality options)."""
    if spec.encoder not in ("libx264", "libx264rgb"):
        return False
    q = list(spec.quality_args)
    return any(q[i] in ("-crf", "-qp") and float(q[i + 1]) == 0 for i in range(len(q) - 1))


def segment_timeout(frames: int, width: int, height: int, *, min_fps_1080p: float = 1.0) -> float:
    """A generous time limit for one segment: 60 s plus the time at ``min_fps_1080p`` scaled by area."""
    scale = max(width * height, 1) / (1920 * 1080)
    return 60.0 + frames * scale / max(min_fps_1080p, 1e-3)


def count_packets(path: str, *, timeout: float = 60.0) -> int:
    """Number of video packets in a file, read by demuxing only (cheap)."""
    data = tool.probe_json(["-select_streams", "v:0", "-count_packets",
                                  "-show_entries", "stream=nb_read_packets", tool.file_url(path)],
                                 timeout=timeout)
    streams = data.get("streams") or [{}]
    try:
        return int(streams[0].get("nb_read_packets", 0))
    except (TypeError, ValueError):
        return 0


def check_encoded(path: str, expected: int, *, decode: bool, threads: int = 1, timeout: float = 600.0) -> str:
    """Check an encoded segment where it was made: its packet count and structure (a keyframe first, decode
    times rising, every packet with its own presentation time), and with ``decode`` a full decode that
    must give ``expected`` frames without a decoder message. Returns "" when it is good, else what is wrong.

    One ffprobe pass; ffprobe (unlike ffmpeg's exit status) tells a truncated or damaged file."""
    try:
        done = tool.run(commands.segment_check_command(tool.ffprobe(), path, decode=decode,
                                                             threads=threads), timeout=timeout)
    except FFmpegError as err:
        return "cannot be read back: " + (tool.last_error_line(err.stderr) or str(err))
    try:
        listing = json.loads(done.stdout or "{}")
        stream = (listing.get("streams") or [{}])[0]
        packets = int(stream.get("nb_read_packets") or 0)
        frames = int(stream.get("nb_read_frames") or 0) if decode else packets
    except (ValueError, TypeError, AttributeError):
        return "cannot be read back"
    if packets != expected:
        return f"wrote {packets} frames, expected {expected}"
    wrong = packet_structure(listing.get("packets") or [])
    if wrong:
        return wrong
    if frames != expected:
        return f"decodes to {frames} frames, expected {expected}"
    if decode and done.stderr.strip():
        return "decoding it reported errors: " + tool.last_error_line(done.stderr)
    return ""


def packet_structure(packets: list[dict]) -> str:
    """What is wrong with an encoded segment's packet list (ffprobe's ``pts``, ``dts``, ``flags`` of each, in
    file order), "" when nothing: it must start with a keyframe, its decode times must rise, and every
    packet must have a presentation time of its own (a join cuts and shifts by them)."""
    if not packets:
        return "has no video packets"
    if "K" not in str(packets[0].get("flags", "")):
        return "does not start with a keyframe"
    try:
        dts = [int(p["dts"]) for p in packets]
        pts = [int(p["pts"]) for p in packets]
    except (KeyError, TypeError, ValueError):
        return "has packets without timestamps"
    if any(b <= a for a, b in zip(dts, dts[1:])):
        return "has decode times that do not rise"
    if len(set(pts)) != len(pts):
        return "has two packets shown at the same time"
    return ""


class _ProgressFile:
    """Reads the frame count ffmpeg's ``-progress`` writes, from where the last read stopped."""

    def __init__(self, path: str, report: Callable[[int], None]) -> None:
        self.lines, self.report, self.frame = tool.AppendedLines(path), report, -1

    def poll(self) -> None:
        try:
            lines = self.lines.read()
        except OSError:
            return
        for line in reversed(lines):
            if line.startswith(b"frame="):
                frame = int(line[6:] or 0)
                if frame != self.frame:
                    self.frame = frame
                    self.report(frame)
                return


#: Prefix of an encode's scratch folder (in the system's temp folder unless a workdir is given).
SEGMENT_PREFIX = "montage-seg-"


@dataclass(frozen=True)
class SegmentOutput:
    """What one encoded segment must be, beyond its encoder spec (the job's output settings): ``video_args``
    after the encoder's own (pixel format, colour), the sample aspect ratio ``sar``, a ``frame_filter`` that
    fits the frame, the source's ``hdr`` facts to carry and check, and a quality ``target`` to reach."""

    video_args: tuple[str, ...] = ()
    sar: str | None = None
    frame_filter: str | None = None
    hdr: HdrInfo | None = None
    target: quality.Target | None = None

    @classmethod
    def of(cls, settings: JobSettings, spec: EncoderSpec) -> "SegmentOutput":
        """A job's output settings as encoded by ``spec``."""
        return cls(tuple(video_output_args(settings.video, spec)), settings.sar, settings.frame_filter,
                   settings.video.hdr, settings.target)


@dataclass(frozen=True)
class SegmentRun:
    """How and where one encode runs: its ``timeout`` and ffmpeg ``threads``, the folder its scratch folder
    goes in (``workdir``, default the system's), the ``caps`` of the ffmpeg that runs it (default this
    process's), who runs it (``actor``, ``attempt``: said in the result), ``should_stop`` (polled: cancel)
    and ``on_progress(frames)``."""

    timeout: float = 600.0
    threads: int = 1
    workdir: str | None = None
    caps: FFmpegCaps | None = None
    actor: str = ""
    attempt: int = 1
    should_stop: Callable[[], bool] | None = None
    on_progress: Callable[[int], None] | None = None


def encode_segment(spec: EncoderSpec, segment: Segment, data: bytes, output: SegmentOutput | None = None,
                   run: SegmentRun | None = None, *, decode: bool = False, check_why: str = "", **fields: Any
                   ) -> tuple[EncodeResult, bytes]:
    """Encode one segment's packets (a NUT file's bytes) and return the result and the encoded MP4 bytes.

    The output is checked here (:func:`check_encoded`): its packet count and structure, and with ``decode``
    a full decode; the result says which (``check``, and ``check_why``: what the caller went by). When it
    comes out short, the input is counted too: a piece that was cut wrong is a
    ``bad-input`` failure (no other encoder would do better), not this encoder's.

    A segment cut between keyframes gets ``segment.packets`` packets for its ``segment.frames`` frames: the
    encode keeps only those shown within ``segment.keep`` (:func:`montage_ray.ffmpeg.commands.keep_filter`).

    ``output`` (:class:`SegmentOutput`) says what the piece must be, ``run`` (:class:`SegmentRun`) how and
    where it is made; their fields may also come as keywords (``timeout=60``, ``video_args=[...]``).
    ``on_progress(frames)`` is called about twice a second with the frames encoded so far. ``caps`` are
    those of the ffmpeg that encodes (default: this process's, :func:`montage_ray.ffmpeg.caps.ffmpeg_caps`).
    ``hdr`` (the source's HDR facts) makes the encoder carry them (:func:`montage_ray.encoders.hdr.for_encoder`) and
    has the output's first frame checked for them: ``EncodeResult.hdr`` says "kept" or what was lost.
    With ``target`` (:class:`~montage_ray.encoders.quality.Target`), the encoded segment is measured against the
    piece (the source) and, outside the target's tolerance, encoded again with the encoder family's knob
    moved (:func:`montage_ray.encoders.quality.next_value`); the try nearest the target is kept and the result says
    its score, knob and how many tries it took.
    Raises :class:`EncoderError` when ffmpeg fails, crashes, hangs past ``timeout`` or writes a wrong
    number of frames; the error's message carries ffmpeg's last line and ``stderr`` its tail.
    """
    output, run = records(fields, (output or SegmentOutput(), SegmentOutput), (run or SegmentRun(), SegmentRun))
    video_args, sar, frame_filter, hdr, target = (output.video_args, output.sar, output.frame_filter, output.hdr,
                                                  output.target)
    timeout, threads, workdir, caps = run.timeout, run.threads, run.workdir, run.caps
    actor, attempt, should_stop, on_progress = run.actor, run.attempt, run.should_stop, run.on_progress
    started, started_at = time.monotonic(), time.time()

    def failed(message: str, reason: str, stderr: str) -> SegmentEncodeError:
        return SegmentEncodeError(f"segment {segment.index} on {spec.label}: {message}", reason=reason,
                                  stderr=stderr, started=started_at, seconds=time.monotonic() - started)

    parent = workdir or tempfile.gettempdir()
    workdirs.sweep(parent, SEGMENT_PREFIX)  # scratch folders of encodes whose process was killed
    tmp = workdirs.make_workdir(parent, SEGMENT_PREFIX)
    try:
        src = os.path.join(tmp, "in.nut")
        dst = os.path.join(tmp, "out.mp4")
        with open(src, "wb") as fh:
            fh.write(data)
        poll = should_stop
        progress_path = None
        if on_progress is not None:
            progress_path = os.path.join(tmp, "progress.txt")
            reader = _ProgressFile(progress_path, on_progress)

            def poll() -> bool:
                reader.poll()
                return bool(should_stop and should_stop())

        caps = caps or ffmpeg_caps()
        spec, hdr_lost = hdr_carry.for_encoder(spec, hdr, caps)
        try:  # a metric this node's ffmpeg lacks fails the segment here, before encoding: never a silent skip
            quality.require(target, caps)
        except InputError as err:
            raise failed(str(err), "failed", "") from None

        def encode_to(spec_now: EncoderSpec, out: str) -> tool.Completed:
            try:
                cmd = commands.encode_command(spec_now, src, out, caps=caps, video_args=video_args,
                                              sar=sar, progress=progress_path, frame_filter=frame_filter,
                                              keep=segment.keep)
            except EncoderError as err:  # this ffmpeg lacks what the command needs: no retry will help here
                raise failed(str(err), "failed", "") from None
            try:
                done = tool.run(cmd, timeout=timeout, env=spec_now.env or None, should_stop=poll)
            except tool.Cancelled as err:
                raise failed(str(err), "cancelled", err.stderr) from None
            except FFmpegError as err:
                reason = "timeout" if err.timed_out else ("crash" if (err.returncode or 0) < 0 else "failed")
                raise failed(str(err), reason, err.stderr) from None
            if os.path.exists(out):
                end_piece(out, segment)
            wrong = check_encoded(out, segment.frames, decode=decode, threads=threads,
                                  timeout=max(60.0, timeout / 2)) if os.path.exists(out) else "wrote no file"
            if wrong:
                given = count_packets(src)
                if given != segment.packets:
                    raise failed(f"was given {given} packets instead of {segment.packets} (the cut went wrong)",
                                 "bad-input", done.stderr)
                raise failed(wrong, "frame-count", done.stderr)
            return done

        done = encode_to(spec, dst)
        tuning: dict = {}
        if target is not None:
            # the reference is the piece's kept frames (a segment cut between keyframes drops its first ones)
            # at the encoded size
            reference = ",".join(f for f in (commands.keep_filter(segment.keep) if segment.keep else None,
                                              frame_filter) if f) or None
            dst, done, tuning = _reach_target(target, spec, dst, done, encode_to, tmp, lambda path: quality.measure(
                target, path, src, caps=caps, pix_fmt=_option(video_args, "-pix_fmt") or _PIX_FMT_8BIT,
                reference_filter=reference, threads=threads, timeout=timeout), failed)
        frames = segment.frames
        if hdr is not None and not hdr_lost:
            hdr_lost = hdr_carry.check_output(dst, hdr)
        with open(dst, "rb") as fh:
            encoded = fh.read()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = EncodeResult(
        segment=segment.index, frames=frames, bytes_in=len(data), bytes_out=len(encoded),
        seconds=time.monotonic() - started, encoder=spec.label, backend=spec.backend,
        resource=spec.resource, standin=spec.is_standin, node=socket.gethostname(), actor=actor,
        attempt=attempt, stderr=done.stderr[-2000:], started=started_at, ffmpeg=caps.version,
        ffmpeg_build=caps.build,
        hdr="" if hdr is None else (hdr_carry.LOST + hdr_lost if hdr_lost else "kept"),
        check=Check.DECODE.value if decode else Check.PACKETS.value, check_why=check_why, **tuning)
    return result, encoded


def end_piece(path: str, segment: Segment) -> None:
    """The encoded piece's video shown for the segment's whole duration (:func:`montage_ray.media.mp4.set_video_end`).

    ffmpeg 4.2 writes an encoded stream's last packet without a duration, so the piece's edit list ended at
    its last frame's start, and the join's demuxer dropped that frame whenever the edit's end fell on it
    exactly (times on a millisecond clock, as every WebM and Matroska source has); 5.1 and newer give it the
    nominal frame duration, which a variable-frame-rate segment's last frame need not have. A layout this
    cannot edit stays as ffmpeg wrote it: the join's verification counts what it shows."""
    try:
        set_video_end(path, segment.duration)
    except NotPatchable:
        pass


def _option(args: Sequence[str], name: str) -> str | None:
    """The value of option ``name`` in an argument list (None when it is not there)."""
    args = list(args)
    return args[args.index(name) + 1] if name in args[:-1] else None


def _reach_target(target: quality.Target, spec: EncoderSpec, first: str, done: tool.Completed,
                  encode_to: Callable[[EncoderSpec, str], tool.Completed], tmp: str,
                  measure: Callable[[str], float], failed: Callable[[str, str, str], Exception]
                  ) -> tuple[str, tool.Completed, dict]:
    """Measure the first encode; while it misses ``target``, encode again with the knob moved (at most
    ``target.tries`` encodes); return the kept file, its ffmpeg run and the result's quality fields."""
    started = time.monotonic()

    def scored(path: str) -> float:
        try:
            return measure(path)
        except (FFmpegError, InputError) as err:  # InputError: this node's ffmpeg lacks the metric
            raise failed(f"measuring {target.metric}: {err}", "failed", getattr(err, "stderr", "")) from None

    knob = quality.knob_for(spec)
    runs, paths = [done], [first]
    if knob is None:
        score = scored(first)
        return first, done, {"metric": target.metric, "score": score, "tried": (("", score),),
                             "quality_seconds": time.monotonic() - started}
    tried = [(quality.current_value(knob, spec.quality_args), scored(first))]
    while (value := quality.next_value(knob, target, tried)) is not None:
        paths.append(os.path.join(tmp, f"out-{len(paths)}.mp4"))
        runs.append(encode_to(quality.with_knob(spec, knob, value), paths[-1]))
        tried.append((value, scored(paths[-1])))
    kept = quality.best(target, tried)
    return paths[kept], runs[kept], {
        "metric": target.metric, "score": tried[kept][1], "knob": knob.shown(tried[kept][0]), "tries": len(tried),
        "tried": tuple((knob.shown(v), s) for v, s in tried), "quality_seconds": time.monotonic() - started}


class SegmentEncodeError(EncoderError):
    """One segment failed on one encoder; ``reason`` is failed, crash, timeout, frame-count, bad-input (the
    piece it was given is wrong: no retry helps) or cancelled.

    ``started`` (epoch seconds) and ``seconds`` say when the failed attempt ran, for the job's timeline.
    """

    def __init__(self, message: str, *, stderr: str = "", reason: str = "failed", started: float = 0.0,
                 seconds: float = 0.0) -> None:
        super().__init__(message)
        self.stderr = stderr
        self.reason = reason
        self.started = started
        self.seconds = seconds

    def __reduce__(self):  # keep every field when Ray ships the error back to the driver
        return (_rebuild_segment_error, (str(self), self.stderr, self.reason, self.started, self.seconds))


def _rebuild_segment_error(message: str, stderr: str, reason: str, started: float = 0.0,
                           seconds: float = 0.0) -> "SegmentEncodeError":
    return SegmentEncodeError(message, stderr=stderr, reason=reason, started=started, seconds=seconds)
