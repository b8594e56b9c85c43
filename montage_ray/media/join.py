"""Join encoded segments into one file, mux everything else from the source once, and verify it.

The encoded segments (MP4, parameter sets in-band) are concatenated by stream copy with ffmpeg's concat demuxer, each given its exact
source duration so that presentation times come out as they were in the source (variable frame rate
included). Audio, subtitles, chapters and metadata come straight from the source in the same pass, so
audio is copied or encoded **once for the whole file**: nothing is cut at segment joins. The result is
written to a temporary name and only becomes the destination after :func:`verify_output` passes.
A job whose segments all come from one encoder runs that join while they are still being encoded
(:class:`StreamingJoin`: each piece goes in as soon as it and all before it have arrived), so that only
the last segment's share of it is left when the encoders finish.

Verification reads the joined file's structure in one demux pass (:func:`check_structure`: packets per
stream, DTS rising, every presentation time where the source had it, so a gap or overlap at a join shows,
and the duration), then decodes: every frame (``decode=True``), or, when the encoder actors already decoded
their own segments in full, a short window around each join (:func:`decode_joins`), which is where
joining can break a stream::

    from montage_ray.media.join import join_segments, verify_output

    plan = join_segments(info, segments, encoded_paths, tmp_path, workdir)
    verify_output(tmp_path, plan)                 # structure + a full decode
    verify_output(tmp_path, plan, decode=False)   # structure + the joins decoded (actors decoded the rest)
"""

from __future__ import annotations

import array
import errno
import logging
import os
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Sequence

import numpy as np

from montage_ray.ffmpeg import commands
from montage_ray.ffmpeg import tool
from montage_ray.ffmpeg.caps import ffmpeg_caps
from montage_ray.errors import FFmpegError, InputError, VerificationError
from montage_ray.media.info import TEXT_SUBTITLES, MediaInfo, stream_rotation
from montage_ray.media.mp4 import NotPatchable, set_video_end
from montage_ray.media.plan import Segment
from montage_ray.media.verify import (MISSING, ShownFrames, SourceCount, compare, decode_tail, shown_from_table,
                                      tail_window)

log = logging.getLogger(__name__)

#: Output containers by file extension: (ffmpeg muxer, family).
CONTAINERS = {".mp4": ("mp4", "mp4"), ".m4v": ("mp4", "mp4"), ".mov": ("mov", "mp4"),
              ".mkv": ("matroska", "mkv")}

#: Audio codecs an MP4/MOV file holds as they are; anything else is encoded to AAC, once.
MP4_AUDIO = frozenset({"aac", "mp3", "ac3", "eac3", "alac", "opus", "mp2"})

#: Cover art codecs kept (MP4: an attached picture; MKV: an attachment): file extension and MIME type.
COVER_ART = {"mjpeg": (".jpg", "image/jpeg"), "png": (".png", "image/png"), "bmp": (".bmp", "image/bmp")}


def container_for(path: str) -> tuple[str, str]:
    """(muxer, family) for a destination path, or InputError for an extension montage-ray cannot write."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in CONTAINERS:
        raise InputError(f"cannot write {ext or 'files without an extension'!r}: "
                         f"use one of {', '.join(sorted(CONTAINERS))}")
    return CONTAINERS[ext]


@dataclass(frozen=True)
class JoinPlan:
    """What the joined file must contain, for verification and the report."""

    frames: int
    audio_streams: int
    subtitle_streams: int
    duration: float
    frame_duration: float
    rotation: int = 0
    family: str = "mp4"
    notes: tuple[str, ...] = field(default=())
    #: Where every frame must be shown: the source's sorted presentation times in seconds, from the first.
    times: np.ndarray | None = field(default=None, repr=False, compare=False)
    #: Where each segment after the first starts, in seconds from the first frame (the joins).
    joins: tuple[float, ...] = ()
    #: Where the joined video's first frame should be shown (the file's clock), seconds.
    first_time: float | None = None
    #: The source file and its video stream, counted again by the verification (:mod:`montage_ray.media.verify`).
    source: str = ""
    source_video: int = 0


def _concat_list(segments: Sequence[Segment], paths: Sequence[str], list_path: str) -> None:
    """Write the concat demuxer's list. Files beside the list are named relative to it (the demuxer resolves
    them against the list's own URL), so that a folder name with a newline or a quote never reaches a line
    of the list; any other file is a quoted ``file:`` URL."""
    lines = ["ffconcat version 1.0"]
    folder = os.path.dirname(os.path.abspath(list_path))
    for seg, path in zip(segments, paths):
        if os.path.dirname(os.path.abspath(path)) == folder:
            name = os.path.basename(path)       # our own names: enc-000000.mp4, aligned-000001.mp4
        else:
            name = tool.file_url(path)
        if "\n" in name or "\r" in name:
            raise InputError(f"cannot join a file whose path contains a line break: {path!r}")
        lines.append("file '" + name.replace("'", "'\\''") + "'")
        lines.append(f"duration {seg.duration:.9f}")
    with open(list_path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


def mux_args(media: MediaInfo, family: str, *, mp4_opus: bool = True) -> tuple[list[int], dict[str, str], list[str]]:
    """(source stream indices to map, their options, notes) for the source's non-video streams in this
    container family; without ``mp4_opus`` (the joining ffmpeg's MP4 muxer refuses Opus:
    :attr:`~montage_ray.ffmpeg.caps.FFmpegCaps.mp4_opus`) Opus audio is encoded to AAC for MP4 as well."""
    streams: list[int] = []
    options: list[tuple[str, str]] = []
    notes: list[str] = []
    # output stream numbers: 0 is the video, then audio, subtitles, attachments in this order
    for n, a in enumerate(media.audio):
        streams.append(a.index)
        options.append((f"map_metadata:s:a:{n}", f"1:s:{a.index}"))
        if family == "mp4" and (a.codec not in MP4_AUDIO or (a.codec == "opus" and not mp4_opus)):
            options += [(f"c:a:{n}", "aac"), (f"b:a:{n}", "192k")]
            why = " (this ffmpeg writes Opus into MP4 only as an experimental feature)" if a.codec == "opus" else ""
            notes.append(f"audio stream {a.index} ({a.codec}) encoded once to AAC for {family}{why}")
        else:
            options.append((f"c:a:{n}", "copy"))
    kept = 0
    for s in media.subtitles:
        if family == "mkv" or s.codec in TEXT_SUBTITLES:
            streams.append(s.index)
            options += [(f"map_metadata:s:s:{kept}", f"1:s:{s.index}"),
                        (f"c:s:{kept}", "copy" if family == "mkv" else "mov_text")]
            kept += 1
        else:
            notes.append(f"subtitle stream {s.index} ({s.codec}) dropped: MP4 holds text subtitles only")
    if family == "mkv":
        streams += [t.index for t in media.attachments]
        if media.attachments:
            options.append(("c:t", "copy"))
    elif media.attachments:
        notes.append(f"{len(media.attachments)} attachment(s) (fonts, files) dropped: MP4 cannot hold them")
    # Cover art (attached pictures): in MP4 it follows the encoded video as v:1, v:2 ...; in MKV it is an
    # attachment (see cover_attachments). Both hold JPEG, PNG and BMP.
    pictures = 0
    for c in media.cover_art:
        if c.codec not in COVER_ART:
            notes.append(f"cover art stream {c.index} ({c.codec}) dropped: {family} cover art is JPEG, PNG or BMP")
        elif family == "mp4":
            pictures += 1
            streams.append(c.index)
            options += [(f"c:v:{pictures}", "copy"), (f"disposition:v:{pictures}", "attached_pic")]
    for v in media.other_video:
        notes.append(f"video stream {v.index} ({v.codec}) dropped: only the first video stream is encoded")
    for d in media.data:
        notes.append(f"data stream {d.index} ({d.codec}) dropped")
    return streams, commands.stream_options(options), notes


def cover_attachments(media: MediaInfo, workdir: str) -> list[commands.Attachment]:
    """MKV only: the source's cover art as attachments, each copied out to a picture file in ``workdir`` first.

    ffmpeg's Matroska muxer writes an attached picture only as an attachment (read back as cover art by
    every demuxer), and an attachment can only come from a file.
    """
    out: list[commands.Attachment] = []
    kept = len(media.attachments)  # mapped attachments come first among the output's t: streams
    for k, c in enumerate(s for s in media.cover_art if s.codec in COVER_ART):
        ext, mime = COVER_ART[c.codec]
        picture = os.path.join(workdir, f"cover-{k}{ext}")
        tool.run(commands.cover_picture_command(media.path, c.index, picture, caps=ffmpeg_caps()), timeout=120)
        out.append(commands.Attachment(picture, kept + k, mime, f"cover{ext if k == 0 else f'-{k}{ext}'}"))
    return out


def decode_delay(path: str) -> tuple[float, Fraction]:
    """How far a piece's first video packet is shown after it is decoded (its PTS minus its DTS, seconds), and
    the stream's time base: one packet read."""
    data = tool.probe_json(["-select_streams", "v:0", "-show_entries", "packet=pts_time,dts_time:stream=time_base",
                            "-read_intervals", "%+#1", tool.file_url(path)], timeout=60)
    packet = (data.get("packets") or [{}])[0]
    tb = Fraction((data.get("streams") or [{}])[0].get("time_base", "1/90000"))
    pts = float(packet.get("pts_time", 0) or 0)
    return pts - float(packet.get("dts_time", pts) or pts), tb


class DecodeDelays:
    """The decode delay of each encoded piece (:func:`decode_delay`), read in the background as the pieces
    land: a join at the end of segments from different encoders aligns them (:func:`align_decode_delays`),
    and reading every piece's first packet one after another once the last has come was most of that join's
    time (10 pieces: 0.85 of 1.0 s on 2 cores). A piece whose delay was not read here is read then, side by
    side with the others::

        delays = DecodeDelays()
        delays.offer(path)               # as each encoded piece is written (never written again after)
        join_segments(media, segments, paths, tmp, workdir, container=..., mixed=True, delays=delays)
        delays.close()
    """

    def __init__(self, workers: int = 2) -> None:
        self._side = ThreadPoolExecutor(workers, thread_name_prefix="decode-delay")
        self._read: dict[str, Future[tuple[float, Fraction]]] = {}

    def offer(self, path: str) -> None:
        """The encoded piece at ``path`` is complete: read its delay in the background."""
        self._read[path] = self._side.submit(decode_delay, path)

    def get(self, path: str) -> tuple[float, Fraction]:
        """The delay of the piece at ``path``: as read in the background, else read now."""
        read = self._read.get(path)
        return read.result() if read is not None else decode_delay(path)

    def close(self) -> None:
        self._side.shutdown(wait=False, cancel_futures=True)


#: At most this many pieces are read or remuxed side by side when a join aligns decode delays.
ALIGN_PROCESSES = 8


def align_decode_delays(encoded: Sequence[str], workdir: str, delays: DecodeDelays | None = None) -> list[str]:
    """Give every segment the same DTS-before-PTS delay, so DTS rise across joins of mixed encoders.

    An encoder with B-frames starts its DTS a few frames before its first PTS; one without starts them
    equal. Joined as they are, DTS would go backwards at the seam. Segments with less delay than the
    deepest are remuxed (stream copy) with their DTS moved earlier by the difference; PTS never change.
    The delays come from ``delays`` where it read them while the pieces landed; the rest, and the remuxes,
    run side by side.
    """
    if not encoded:
        return []
    with ThreadPoolExecutor(min(ALIGN_PROCESSES, len(encoded)), thread_name_prefix="align") as side:
        found = list(side.map(delays.get if delays is not None else decode_delay, encoded))
        deepest = max(d for d, _ in found)

        def aligned(i: int) -> str:
            delay, tb = found[i]
            shift = round((deepest - delay) / tb)
            if shift <= 0:
                return encoded[i]
            moved = os.path.join(workdir, f"aligned-{i:06d}.mp4")
            tool.run(commands.align_command(encoded[i], moved, shift, caps=ffmpeg_caps()), timeout=120)
            return moved

        return list(side.map(aligned, range(len(encoded))))


#: MP4 sample entries that allow parameter sets to change in-band (segments from different encoders).
IN_BAND_TAGS = {"h264": "avc3", "hevc": "hev1"}


def join_segments(media: MediaInfo, segments: Sequence[Segment], encoded: Sequence[str], dst_tmp: str,
                  workdir: str, *, container: tuple[str, str], mixed: bool = False,
                  codec: str | None = None, timeout: float | None = None, reserve: bool = True,
                  delays: DecodeDelays | None = None) -> JoinPlan:
    """Concatenate ``encoded`` (MP4 files, one per segment) with the source's other streams into ``dst_tmp``.

    ``mixed`` says the segments come from differently configured encoders: their decode delays are
    aligned (with the ones ``delays`` read as the pieces landed) and an MP4 output uses the in-band sample
    entry (avc3/hev1) for ``codec``. Without ``reserve``
    an MP4's sample tables are moved to the front at the end (``+faststart``) instead of into room kept
    for them (:func:`moov_reserve`).
    """
    if mixed:
        encoded = align_decode_delays(encoded, workdir, delays)
    tag = IN_BAND_TAGS.get(codec or "") if mixed else None
    args, plan = _join(media, segments, encoded, dst_tmp, workdir, container=container, tag=tag,
                       list_name="segments.ffconcat", reserve=reserve)
    done = tool.run(args, timeout=timeout or join_timeout(media), check=False)
    if commands.MOOV_TOO_SMALL in done.stderr:  # the space kept for the sample tables was short: move them
        args, plan = _join(media, segments, encoded, dst_tmp, workdir, container=container, tag=tag,
                           list_name="segments.ffconcat", reserve=False)
        tool.run(args, timeout=timeout or join_timeout(media))
    elif done.returncode != 0:
        raise FFmpegError(tool.describe_failure(done), returncode=done.returncode,
                          stderr=tool.tail(done.stderr))
    end_video(dst_tmp, plan)
    return plan


def end_video(path: str, plan: JoinPlan) -> None:
    """An MP4 output's video shown until the source's video ends (:func:`montage_ray.media.mp4.set_video_end`):
    ffmpeg's MP4 muxer ends it after the last packet's duration, which ffmpeg 4.2 leaves at 0 (its edit list
    then hides the last frame, and a one-frame clip shows none) and 5.1 and newer take from the encoder's
    nominal frame (a variable-frame-rate source's longer last frame comes out short). A layout this cannot
    edit is left as the muxer wrote it, for the verification to judge."""
    if plan.family != "mp4":
        return
    try:
        set_video_end(path, plan.duration)
    except (NotPatchable, OSError) as err:
        log.info("the joined video's end is left as ffmpeg wrote it: %s", err)


def moov_reserve(media: MediaInfo, segments: Sequence[Segment]) -> int | None:
    """Bytes to keep free at the start of an MP4 output for its sample tables (``moov``), so that they go
    first without a second pass over the file; None to move them there at the end instead (cover art: its
    picture is written inside the ``moov``). Generous for common streams: 32 bytes per video frame (size,
    time and composition offset each, keyframe, chunk offset), 16 per audio or subtitle packet at 100 a
    second, 64 KiB for the rest (metadata, chapters, edit lists). Measured: 10 min of 60 fps VFR x264 with
    B-frames and AAC needed 0.96 MB of the 2.18 MB kept; the rest stays in the file as a ``free`` box. A
    short guess (VFR with much interleaving, large metadata) is caught: :func:`join_segments`."""
    if media.cover_art:
        return None
    seconds = sum(s.duration for s in segments)
    others = (len(media.audio) + len(media.subtitles)) * int(seconds * 100 + 100)
    return 65536 + 32 * sum(s.frames for s in segments) + 16 * others + 1024 * media.chapters


def join_timeout(media: MediaInfo) -> float:
    """How long the join's ffmpeg may take once it has every segment (seconds)."""
    return 120.0 + media.size / 20e6


def _join(media: MediaInfo, segments: Sequence[Segment], encoded: Sequence[str], dst_tmp: str, workdir: str, *,
          container: tuple[str, str], tag: str | None, list_name: str,
          reserve: bool = True) -> tuple[list[str], JoinPlan]:
    """The join's ffmpeg command (reading ``encoded`` through a concat list) and what it will have made."""
    muxer, family = container
    list_path = os.path.join(workdir, list_name)
    _concat_list(segments, encoded, list_path)
    # The concat demuxer starts the video at 0; the source starts every stream at its own time. Shift the
    # video by how far its first frame was from the file's start so that A/V offset is kept exactly.
    offset = segments[0].start - media.start_time
    streams, options, notes = mux_args(media, family, mp4_opus=ffmpeg_caps().mp4_opus)
    attach = cover_attachments(media, workdir) if family == "mkv" and media.cover_art else []
    args = commands.join_command(
        list_path, media.path, dst_tmp, caps=ffmpeg_caps(),
        video=commands.JoinVideo(offset, media.video.index, media.video.rotation),
        others=commands.JoinStreams(tuple(streams), options, tuple(attach)),
        container=commands.JoinContainer(muxer, mp4=family == "mp4", tag=tag,
                                         moov_size=moov_reserve(media, segments) if reserve and family == "mp4"
                                         else None))
    rate = media.video.frame_rate
    frame_duration = float(1 / rate) if rate else 0.04
    kept_subs = sum(1 for s in media.subtitles if family == "mkv" or s.codec in TEXT_SUBTITLES)
    return args, JoinPlan(frames=sum(s.frames for s in segments), audio_streams=len(media.audio),
                          subtitle_streams=kept_subs, rotation=media.video.rotation, family=family,
                          duration=sum(s.duration for s in segments), frame_duration=frame_duration,
                          notes=tuple(notes), times=source_times(media),
                          joins=tuple(s.start - segments[0].start for s in segments[1:]), first_time=offset,
                          source=media.path, source_video=media.video.index)


def streamable(path: str) -> bool:
    """Whether an MP4 file can be read front to back without seeking: its ``moov`` box (the sample tables)
    comes before its ``mdat`` (the samples), as ``-movflags +faststart`` writes it."""
    with open(path, "rb") as fh:
        while True:
            head = fh.read(8)
            if len(head) < 8:
                return False
            size, kind = int.from_bytes(head[:4], "big"), head[4:]
            if kind == b"moov":
                return True
            if kind == b"mdat":
                return False
            if size == 1:
                size = int.from_bytes(fh.read(8), "big") - 8
            elif size == 0:
                return False  # the box runs to the end of the file
            fh.seek(size - 8, os.SEEK_CUR)


class StreamingJoin:
    """The join running while the segments are still being encoded.

    The join's ffmpeg starts when the job does, its concat list naming one named pipe per segment. The
    concat demuxer opens a segment's pipe only once it has read every segment before it, and a feeder thread
    writes each encoded piece into its pipe as soon as that piece and all before it have arrived
    (:meth:`offer`). So when the last segment comes back, the join has only that segment left to mux, not
    the whole file; the command, the list's durations and the output are those of :func:`join_segments`
    (byte for byte). The pieces must be MP4 with their ``moov`` first (the encoders write them so); any
    other is remuxed so first (:func:`streamable`). Segments from differently configured encoders need
    their decode delays aligned first, which needs every segment: that case takes :func:`join_segments`.

    Example::

        with StreamingJoin(media, segments, tmp_path, workdir, container=("mp4", "mp4")) as join:
            for index, path in pieces_as_they_arrive():
                join.offer(index, path)
            plan = join.finish()              # every segment offered: the rest of the mux, then its plan
        verify_output(tmp_path, plan)

    Leaving the ``with`` block without :meth:`finish` (an encode failed) kills the ffmpeg and stops the
    feeder; nothing is left running.
    """

    #: How long to wait between looks for the demuxer opening the next pipe (seconds).
    POLL = 0.002

    def __init__(self, media: MediaInfo, segments: Sequence[Segment], dst_tmp: str, workdir: str, *,
                 container: tuple[str, str], timeout: float | None = None) -> None:
        self.timeout = timeout or join_timeout(media)
        self.workdir = workdir
        self.dst_tmp = dst_tmp
        self.pipes = [os.path.join(workdir, f"pipe-{i:06d}.mp4") for i in range(len(segments))]
        try:
            for pipe in self.pipes:
                os.mkfifo(pipe, 0o600)
        except OSError as err:
            raise NoNamedPipes(f"cannot make a named pipe in {workdir}: {err.strerror or err}") from err
        args, self.plan = _join(media, segments, self.pipes, dst_tmp, workdir, container=container, tag=None,
                                list_name="stream.ffconcat")
        self._files: list[str | None] = [None] * len(segments)
        self._ready = threading.Condition()
        self._stopped = False
        self._error: BaseException | None = None
        self.fed = 0  # pieces written into their pipes so far
        # it waits as long as the encoders take: the timeout starts counting in finish()
        self._run = tool.start(args, timeout=FEED_TIMEOUT)
        try:
            self._feeder = threading.Thread(target=self._feed, name="join-feeder", daemon=True)
            self._feeder.start()
        except BaseException:
            self._run.kill()
            raise

    def __enter__(self) -> "StreamingJoin":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def offer(self, index: int, path: str) -> None:
        """Segment ``index``'s encoded piece is complete at ``path``."""
        with self._ready:
            self._files[index] = path
            self._ready.notify_all()

    def finish(self) -> JoinPlan:
        """Wait for the join to end once every segment was offered; its :class:`JoinPlan`. Raises
        :class:`FFmpegError` when the join failed or a segment was never offered."""
        missing = [i for i, f in enumerate(self._files) if f is None]
        if missing:
            self.stop()
            raise FFmpegError(f"the streamed join never got segment {missing[0]}")
        try:
            fed = -1
            while self._feeder.is_alive() and self.fed > fed:  # the join timeout counts from the last piece
                fed = self.fed                                   # fed (pieces remuxed first take their time)
                self._feeder.join(timeout=self.timeout)
            self._run.extend(self.timeout)
            done = self._run.wait(check=False)
        finally:
            self.stop()
        if self._error is not None:
            raise FFmpegError(f"feeding the join failed: {self._error}") from self._error
        if commands.MOOV_TOO_SMALL in done.stderr:
            raise MoovRoomTooSmall("the room kept for the MP4's sample tables was too small", stderr=done.stderr)
        if done.returncode != 0 or self.fed != len(self.pipes):
            raise FFmpegError(f"the streamed join took {self.fed} of {len(self.pipes)} segments: "
                              + tool.describe_failure(done), returncode=done.returncode, stderr=done.stderr)
        end_video(self.dst_tmp, self.plan)
        return self.plan

    def stop(self) -> None:
        """Kill the join's ffmpeg (if it still runs) and end the feeder."""
        with self._ready:
            self._stopped = True
            self._ready.notify_all()
        self._run.kill()  # a feeder blocked writing gets EPIPE, one looking for a reader sees it end
        self._feeder.join(timeout=10)

    def _feed(self) -> None:
        try:
            for index, pipe in enumerate(self.pipes):
                with self._ready:
                    self._ready.wait_for(lambda: self._stopped or self._files[index] is not None)
                    if self._stopped:
                        return
                    path = self._files[index]
                assert path is not None
                if not streamable(path):
                    path = self._remux(index, path)
                fd = self._open_writer(pipe)
                if fd is None:
                    return  # the join ended (its exit status says why) or was stopped
                with os.fdopen(fd, "wb") as out, open(path, "rb") as piece:
                    shutil.copyfileobj(piece, out, 1 << 20)
                self.fed += 1
        except BrokenPipeError:
            return  # the join's ffmpeg stopped reading: its exit status says why
        except BaseException as err:  # noqa: BLE001 - handed to finish()
            self._error = err
            self._run.kill()

    def _open_writer(self, pipe: str) -> int | None:
        """Open ``pipe`` for writing once the demuxer opened it for reading (blocking writes from then on);
        None when the join's ffmpeg ended or the join was stopped first."""
        while True:
            try:
                fd = os.open(pipe, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as err:
                if err.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
            else:
                os.set_blocking(fd, True)
                return fd
            if self._stopped or self._run.returncode() is not None:
                return None
            time.sleep(self.POLL)

    def _remux(self, index: int, path: str) -> str:
        moved = os.path.join(self.workdir, f"streamable-{index:06d}.mp4")
        tool.run(commands.faststart_command(path, moved, caps=ffmpeg_caps()), timeout=120,
                       should_stop=lambda: self._stopped)
        return moved


class MoovRoomTooSmall(FFmpegError):
    """The join's MP4 came out without sample tables: the room :func:`moov_reserve` kept was too small
    (join again with ``reserve=False``)."""


class NoNamedPipes(Exception):
    """The work folder's filesystem cannot hold named pipes (some network and FAT mounts): join at the end."""


#: How long the streamed join's ffmpeg may wait for the encoders before it is killed (seconds): a week;
#: the job ends it long before (it is killed with the job), and :meth:`StreamingJoin.finish` gives it
#: :func:`join_timeout` from then on.
FEED_TIMEOUT = 7 * 24 * 3600.0


def source_times(media: MediaInfo) -> np.ndarray:
    """The source's video presentation times, sorted, in seconds from the first (from the packet table)."""
    pts = np.sort(media.packets.pts)
    return (pts - pts[0]).astype(np.float64) * float(media.video.time_base)


@dataclass(frozen=True)
class Structure:
    """What one demux pass over the joined file found (see :func:`check_structure`)."""

    frames: int
    audio_streams: int
    subtitle_streams: int
    video_duration: float
    first_time: float        # the first video frame's presentation time, seconds (file clock)
    rotation: int = 0
    notes: tuple[str, ...] = ()
    #: The frames the file shows, counted from its packets (see :mod:`montage_ray.media.verify`).
    shown: ShownFrames | None = None
    #: The stretch from the last keyframe to the end, decoded by the verification (:func:`~montage_ray.media.verify.tail_window`).
    tail: tuple[float, int, int] | None = None


#: Stands for a missing (N/A) timestamp in the packet table's arrays.
_MISSING = MISSING


def _packet_table(path: str) -> tuple[dict[int, tuple[str, Fraction]], dict[int, np.ndarray], str]:
    """({stream index: (kind, time base)}, {stream index: int64 array of [pts, dts, duration, key, discard]
    rows}, stderr): one pass. Each row is packed into 40 bytes as it is read, so the driver's memory stays
    small for long files (a list of strings per packet took about 30 MB for 20 minutes of video and audio)."""
    done = tool.run(commands.structure_command(tool.ffprobe(), path), timeout=600)
    streams: dict[int, tuple[str, Fraction]] = {}
    rows: dict[int, array.array] = {}
    for line in done.stdout.splitlines():
        fields = line.split(",")
        if fields[0] == "packet" and len(fields) >= 6:
            column = rows.get(int(fields[1]))
            if column is None:
                column = rows[int(fields[1])] = array.array("q")
            column.extend(int(v) if v not in ("N/A", "") else _MISSING for v in fields[2:5])
            column.extend(("K" in fields[5], "D" in fields[5]))
        elif fields[0] == "stream" and len(fields) >= 4:
            streams[int(fields[1])] = (fields[2], Fraction(fields[3]) if "/" in fields[3] else Fraction(1, 90000))
    packets = {index: np.frombuffer(column, dtype=np.int64).reshape(-1, 5) for index, column in rows.items()}
    return streams, packets, done.stderr


def check_structure(path: str, plan: JoinPlan) -> Structure:
    """The joined file's structure from one demux pass (no decoding): packets per stream, video DTS rising,
    every video frame shown when the source showed it (relative to the first: a gap or overlap at a join
    fails, naming the join), streams and duration. Raises :class:`VerificationError`. The streams' listing
    (kinds, rotation, durations) is read beside the packet pass."""
    with ThreadPoolExecutor(1, thread_name_prefix="structure") as side:
        listed = side.submit(tool.probe_json, ["-show_entries",
                                               "stream=codec_type,duration:stream_side_data=rotation:stream_tags=rotate",
                                               tool.file_url(path)], timeout=60)
        try:
            streams, packets, stderr = _packet_table(path)
            listing = listed.result()
        except FFmpegError as err:
            raise VerificationError(f"the joined output cannot be read back: {err}") from None
    if stderr.strip():
        raise VerificationError("reading the joined output reported errors: " + tool.last_error_line(stderr))
    video = [i for i, (kind, _) in sorted(streams.items()) if kind == "video"]
    table = packets.get(video[0], np.zeros((0, 5), np.int64)) if video else np.zeros((0, 5), np.int64)
    tb = streams[video[0]][1] if video else Fraction(1, 90000)
    discard = table[:, 4].astype(bool)
    shown_frames = shown_from_table(table[:, 0], discard, tb, probe=tool.ffprobe())
    if shown_frames.frames != plan.frames:
        hidden = f" ({int(discard.sum())} more outside its edit list)" if discard.any() else ""
        raise VerificationError(f"the joined output shows {shown_frames.frames} video frames{hidden}, the source "
                                f"has {plan.frames}")
    kinds = [s.get("codec_type") for s in listing.get("streams", [])]
    audio, subs = kinds.count("audio"), kinds.count("subtitle")
    if audio != plan.audio_streams:
        raise VerificationError(f"the joined output has {audio} audio streams, expected {plan.audio_streams}")
    if subs != plan.subtitle_streams:
        raise VerificationError(f"the joined output has {subs} subtitle streams, expected {plan.subtitle_streams}")
    for index, (kind, _) in streams.items():
        if kind == "audio" and not len(packets.get(index, ())):
            raise VerificationError(f"audio stream {index} of the joined output has no packets")
    pts, dts, dur = table[:, 0], table[:, 1], table[:, 2]
    missing = _MISSING
    if (pts == missing).any():
        raise VerificationError("the joined output has video packets without a presentation time")
    known = dts[dts != missing]
    if known.size > 1 and (np.diff(known) <= 0).any():
        where = int(np.argmax(np.diff(known) <= 0))
        raise VerificationError(f"the joined output's video decode times do not rise at packet {where + 1}")
    shown = np.sort(pts[~discard])
    times = (shown - shown[0]).astype(np.float64) * float(tb)
    if plan.times is not None and plan.times.shape == times.shape:
        off = np.abs(times - plan.times) > max(plan.frame_duration / 2, 2 * float(tb))
        if off.any():
            frame = int(np.argmax(off))
            at = float(plan.times[frame])
            join = sum(1 for j in plan.joins if j <= at + 1e-9)
            where = f"after join {join} (at {plan.joins[join - 1]:.3f} s)" if join else "in the first segment"
            raise VerificationError(f"the joined video shows frame {frame} at {times[frame]:.3f} s instead of "
                                    f"{at:.3f} s: timestamps are not continuous {where}")
    # where the video ends: the latest end of a shown packet (with B-frames the frame shown last need not be the
    # one whose duration reaches the end: the join gives the last decoded its length, see mp4.set_video_end)
    # or, where the demuxer gives packets no duration (MP4 with B-frames), the stream's (its edit list's)
    ends = pts[~discard] + np.where(dur[~discard] == missing, 0, np.maximum(dur[~discard], 0))
    duration = float((int(ends.max()) - int(shown[0])) * tb)
    listed = next((s.get("duration") for s in listing.get("streams", []) if s.get("codec_type") == "video"), None)
    if (dur[~discard] == missing).any() and listed not in (None, "N/A"):
        duration = max(duration, float(listed))
    # the last frame's own duration is the source's where it had one, else a typical frame's: within one and a
    # half of the larger of a nominal frame and the source's typical gap (a VFR stream's rate may say 1000 fps)
    typical = float(np.median(np.diff(plan.times))) if plan.times is not None and plan.times.size > 1 else 0.0
    if abs(duration - plan.duration) > max(plan.frame_duration, typical) * 1.5:
        raise VerificationError(f"the joined video lasts {duration:.3f} s, the source {plan.duration:.3f} s")
    rotation = 0
    for entry in listing.get("streams", []):
        if entry.get("codec_type") == "video":
            rotation = stream_rotation(entry)
            break
    notes: tuple[str, ...] = ()
    if rotation != plan.rotation:
        if plan.family == "mp4":
            raise VerificationError(f"the joined output is rotated {rotation} degrees, the source {plan.rotation}")
        notes = (f"display rotation {plan.rotation} is not stored in .mkv by this ffmpeg; use .mp4 to keep it",)
    return Structure(frames=shown_frames.frames, audio_streams=audio, subtitle_streams=subs, video_duration=duration,
                     first_time=float(shown[0] * tb), rotation=rotation, notes=notes, shown=shown_frames,
                     tail=tail_window(pts, table[:, 3].astype(bool), discard, tb, shown_frames.gap))


#: Packets decoded from each join on: the next segment's keyframe and the pictures after it in decode
#: order, past the deepest reordering the encoders use (x264 and NVENC 3-4 B-frames, x265 4, an AV1
#: packet per shown frame), since what a join can break is its first pictures. It was half a second
#: (15 pictures at 30 fps); 8 decode about half as much (measured on 2 cores: 14 windows of 1080p,
#: 0.87 s -> 0.42 s, most of what is left being each window's seek and keyframe). Each
#: window starts half a frame after the join, so that ffprobe seeks to the segment's own first keyframe and
#: decodes from it: a window that starts before the join seeks to the previous segment's keyframe and skips
#: the packets before the window unread, the join's keyframe among them (its DTS is earlier), and a damaged
#: picture there went unnoticed (tests/test_join.py shows it). The frames before a join were decoded in full
#: by the actor that encoded them.
JOIN_PACKETS = 8


def join_windows(plan: JoinPlan, first_time: float) -> list[tuple[float, int]]:
    """(start on the file's clock, packets) of the window decoded from each join."""
    return [(first_time + j + plan.frame_duration / 2, JOIN_PACKETS) for j in plan.joins]


#: At most this many ffprobe processes decode the join windows side by side: one process seeks and decodes
#: its windows one after another, so splitting them is what makes the check's wall time short (measured on
#: 16 cores, 120 s of 1080p in 30 pieces: 0.74 s in one process, 0.36 s in eight).
WINDOW_PROCESSES = 8


class _Windows:
    """The join windows decoding in the background, split over a few ffprobe processes."""

    def __init__(self, path: str, windows: list[tuple[float, float]], timeout: float) -> None:
        cpus = os.cpu_count() or 1
        n = max(1, min(len(windows), WINDOW_PROCESSES, cpus))
        self.running: list[tool.Running] = []
        try:
            for i in range(n):
                self.running.append(tool.start(
                    commands.join_windows_command(tool.ffprobe(), path, windows[i::n],
                                                  threads=max(1, cpus // n)),
                    timeout=timeout, capture_stdout=True))
        except BaseException:
            self.kill()
            raise

    def kill(self) -> None:
        for run in self.running:
            run.kill()

    def judge(self) -> int:
        """Frames decoded in all windows; raises :class:`VerificationError` on any failure or message."""
        try:
            return sum(_judge_windows(run.wait(check=False)) for run in self.running)
        finally:
            self.kill()


def _judge_windows(done: tool.Completed) -> int:
    if done.returncode != 0:
        raise VerificationError("decoding the joins of the output failed: " + tool.describe_failure(done))
    if done.stderr.strip():
        raise VerificationError("decoding the joins of the output reported errors: "
                                + tool.last_error_line(done.stderr))
    frames = int(tool.first_stream(done.stdout).get("nb_read_frames") or 0)
    if frames <= 0:
        raise VerificationError("decoding the joins of the output gave no frames")
    return frames


def decode_joins(path: str, plan: JoinPlan, first_time: float, *, timeout: float = 600.0) -> int:
    """Decode a short window around every join (a few ffprobe runs side by side); any decoder message fails.
    Frames decoded."""
    if not plan.joins:
        return 0
    return _Windows(path, join_windows(plan, first_time), timeout).judge()


@dataclass(frozen=True)
class Verification:
    """What verification measured on the joined file."""

    frames: int
    audio_streams: int
    subtitle_streams: int
    video_duration: float
    seconds: float
    rotation: int = 0
    notes: tuple[str, ...] = ()


def verify_output(path: str, plan: JoinPlan, *, decode: bool = True, timeout: float = 3600.0) -> Verification:
    """Check the joined file before it is called done: its structure (:func:`check_structure`), then a
    decode of every frame (``decode``) or of a window around each join (when the encoder actors decoded
    their own segments in full: ``decode=False``) and of its end (:func:`~montage_ray.media.verify.decode_tail`).

    Independently of every figure of the plan, the cut, the encoders and the join, the frames the output
    shows are compared with those the source shows, both counted the same way by the job's ffprobe from
    their packets (:mod:`montage_ray.media.verify`): one frame off, or the last frame shown elsewhere than the
    source's (within one frame), fails. Raises :class:`VerificationError` on any mismatch."""
    started = time.monotonic()
    source = SourceCount(plan.source, plan.source_video, timeout=timeout) if plan.source else None
    windows = None
    try:
        if not decode and plan.joins and plan.first_time is not None:  # beside the structure pass, where it starts
            windows = _Windows(path, join_windows(plan, plan.first_time), timeout)
        found = check_structure(path, plan)
        if windows is not None and abs(found.first_time - (plan.first_time or 0.0)) > plan.frame_duration / 2:
            windows.kill()  # the file starts elsewhere than planned: decode the windows where it really does
            windows = None
        if decode:
            try:
                done = tool.run(commands.verify_command(tool.ffprobe(), path, decode=True), timeout=timeout)
            except FFmpegError as err:
                raise VerificationError(f"the joined output cannot be decoded: {err}") from None
            if done.stderr.strip():
                raise VerificationError("decoding the joined output reported errors: "
                                        + tool.last_error_line(done.stderr))
            frames = int(tool.first_stream(done.stdout).get("nb_read_frames") or 0)
            if frames != found.frames:
                raise VerificationError(f"the joined output decodes to {frames} video frames, the source has "
                                        f"{found.frames}")
        else:
            with ThreadPoolExecutor(1, thread_name_prefix="tail") as side:  # the end beside the joins
                tail = side.submit(decode_tail, path, found.tail, timeout=timeout) if found.tail is not None else None
                if windows is not None:
                    windows.judge()
                else:
                    decode_joins(path, plan, found.first_time)
                if tail is not None:
                    tail.result()
        if source is not None and found.shown is not None:
            compare(found.shown, source.result(), frame=plan.frame_duration)
    finally:
        if windows is not None:
            windows.kill()
        if source is not None:
            source.kill()
    return Verification(frames=found.frames, audio_streams=found.audio_streams,
                        subtitle_streams=found.subtitle_streams, video_duration=found.video_duration,
                        seconds=time.monotonic() - started, rotation=found.rotation, notes=found.notes)
