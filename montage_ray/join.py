"""Join encoded segments into one file, mux everything else from the source once, and verify it.

The encoded segments (MP4, parameter sets in-band) are concatenated by stream copy with ffmpeg's concat demuxer, each given its exact
source duration so that presentation times come out as they were in the source (variable frame rate
included). Audio, subtitles, chapters and metadata come straight from the source in the same pass, so
audio is copied or encoded **once for the whole file**: nothing is cut at segment joins. The result is
written to a temporary name and only becomes the destination after :func:`verify_output` passes::

    from montage_ray.join import join_segments, verify_output

    plan = join_segments(info, segments, encoded_paths, tmp_path, workdir)
    verify_output(tmp_path, plan)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Sequence

from montage_ray import commands, ffmpeg_cli
from montage_ray.caps import ffmpeg_caps
from montage_ray.errors import FFmpegError, InputError, VerificationError
from montage_ray.media import TEXT_SUBTITLES, MediaInfo, stream_rotation
from montage_ray.plan import Segment

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
            name = ffmpeg_cli.file_url(path)
        if "\n" in name or "\r" in name:
            raise InputError(f"cannot join a file whose path contains a line break: {path!r}")
        lines.append("file '" + name.replace("'", "'\\''") + "'")
        lines.append(f"duration {seg.duration:.9f}")
    with open(list_path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


def mux_args(media: MediaInfo, family: str) -> tuple[list[int], dict[str, str], list[str]]:
    """(source stream indices to map, their options, notes) for the source's non-video streams in this
    container family."""
    streams: list[int] = []
    options: list[tuple[str, str]] = []
    notes: list[str] = []
    # output stream numbers: 0 is the video, then audio, subtitles, attachments in this order
    for n, a in enumerate(media.audio):
        streams.append(a.index)
        options.append((f"map_metadata:s:a:{n}", f"1:s:{a.index}"))
        if family == "mp4" and a.codec not in MP4_AUDIO:
            options += [(f"c:a:{n}", "aac"), (f"b:a:{n}", "192k")]
            notes.append(f"audio stream {a.index} ({a.codec}) encoded once to AAC for {family}")
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
        ffmpeg_cli.run(commands.cover_picture_command(media.path, c.index, picture, caps=ffmpeg_caps()), timeout=120)
        out.append(commands.Attachment(picture, kept + k, mime, f"cover{ext if k == 0 else f'-{k}{ext}'}"))
    return out


def _first_packet(path: str) -> tuple[float, float, Fraction]:
    """(pts, dts) in seconds of a file's first video packet, and the stream's time base."""
    data = ffmpeg_cli.probe_json(["-select_streams", "v:0", "-show_entries", "packet=pts_time,dts_time:stream=time_base",
                                  "-read_intervals", "%+#1", ffmpeg_cli.file_url(path)], timeout=60)
    packet = (data.get("packets") or [{}])[0]
    tb = Fraction((data.get("streams") or [{}])[0].get("time_base", "1/90000"))
    pts = float(packet.get("pts_time", 0) or 0)
    return pts, float(packet.get("dts_time", pts) or pts), tb


def align_decode_delays(encoded: Sequence[str], workdir: str) -> list[str]:
    """Give every segment the same DTS-before-PTS delay, so DTS rise across joins of mixed encoders.

    An encoder with B-frames starts its DTS a few frames before its first PTS; one without starts them
    equal. Joined as they are, DTS would go backwards at the seam. Segments with less delay than the
    deepest are remuxed (stream copy) with their DTS moved earlier by the difference; PTS never change.
    """
    delays = []
    for path in encoded:
        pts, dts, tb = _first_packet(path)
        delays.append((pts - dts, tb))
    deepest = max(d for d, _ in delays)
    out = []
    for i, (path, (delay, tb)) in enumerate(zip(encoded, delays)):
        shift = round((deepest - delay) / tb)
        if shift <= 0:
            out.append(path)
            continue
        moved = os.path.join(workdir, f"aligned-{i:06d}.mp4")
        ffmpeg_cli.run(commands.align_command(path, moved, shift, caps=ffmpeg_caps()), timeout=120)
        out.append(moved)
    return out


#: MP4 sample entries that allow parameter sets to change in-band (segments from different encoders).
IN_BAND_TAGS = {"h264": "avc3", "hevc": "hev1"}


def join_segments(media: MediaInfo, segments: Sequence[Segment], encoded: Sequence[str], dst_tmp: str,
                  workdir: str, *, container: tuple[str, str], mixed: bool = False,
                  codec: str | None = None, timeout: float | None = None) -> JoinPlan:
    """Concatenate ``encoded`` (MP4 files, one per segment) with the source's other streams into ``dst_tmp``.

    ``mixed`` says the segments come from differently configured encoders: their decode delays are
    aligned and an MP4 output uses the in-band sample entry (avc3/hev1) for ``codec``.
    """
    muxer, family = container
    if mixed:
        encoded = align_decode_delays(encoded, workdir)
    list_path = os.path.join(workdir, "segments.ffconcat")
    _concat_list(segments, encoded, list_path)
    # The concat demuxer starts the video at 0; the source starts every stream at its own time. Shift the
    # video by how far its first frame was from the file's start so that A/V offset is kept exactly.
    offset = segments[0].start - media.start_time
    streams, options, notes = mux_args(media, family)
    attach = cover_attachments(media, workdir) if family == "mkv" and media.cover_art else []
    args = commands.join_command(list_path, media.path, dst_tmp, caps=ffmpeg_caps(), offset=offset,
                                 video_index=media.video.index, rotation=media.video.rotation, streams=streams,
                                 stream_options=options, muxer=muxer, mp4=family == "mp4",
                                 tag=IN_BAND_TAGS.get(codec or "") if mixed else None, attach=attach)
    ffmpeg_cli.run(args, timeout=timeout or 120.0 + media.size / 20e6)
    rate = media.video.frame_rate
    frame_duration = float(1 / rate) if rate else 0.04
    kept_subs = sum(1 for s in media.subtitles if family == "mkv" or s.codec in TEXT_SUBTITLES)
    return JoinPlan(frames=sum(s.frames for s in segments), audio_streams=len(media.audio),
                    subtitle_streams=kept_subs, rotation=media.video.rotation, family=family,
                    duration=sum(s.duration for s in segments), frame_duration=frame_duration,
                    notes=tuple(notes))


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
    """Check the joined file before it is called done: frame count, a clean decode, streams, duration.

    With ``decode`` every video frame is decoded (ffprobe ``-count_frames``) and any decoder message fails
    verification; without it, packets are counted. Raises :class:`VerificationError` on any mismatch.
    """
    field_name = "nb_read_frames" if decode else "nb_read_packets"
    try:
        done = ffmpeg_cli.run(commands.verify_command(ffmpeg_cli.ffprobe(), path, decode=decode), timeout=timeout)
        listing = ffmpeg_cli.probe_json(["-show_entries", "stream=codec_type:stream_side_data=rotation:stream_tags=rotate",
                                         ffmpeg_cli.file_url(path)], timeout=60)
    except FFmpegError as err:
        raise VerificationError(f"the joined output cannot be read back: {err}") from None
    data = json.loads(done.stdout or "{}")
    if done.stderr.strip():
        raise VerificationError("decoding the joined output reported errors: "
                                + ffmpeg_cli.last_error_line(done.stderr))
    stream = (data.get("streams") or [{}])[0]
    frames = int(stream.get(field_name) or 0)
    if frames != plan.frames:
        raise VerificationError(f"the joined output has {frames} video frames, the source has {plan.frames}")
    kinds = [s.get("codec_type") for s in listing.get("streams", [])]
    audio, subs = kinds.count("audio"), kinds.count("subtitle")
    if audio != plan.audio_streams:
        raise VerificationError(f"the joined output has {audio} audio streams, expected {plan.audio_streams}")
    if subs != plan.subtitle_streams:
        raise VerificationError(f"the joined output has {subs} subtitle streams, "
                                f"expected {plan.subtitle_streams}")
    rotation = 0
    for entry in listing.get("streams", []):
        if entry.get("codec_type") == "video":
            rotation = stream_rotation(entry)
            break
    notes: tuple[str, ...] = ()
    if rotation != plan.rotation:
        if plan.family == "mp4":
            raise VerificationError(f"the joined output is rotated {rotation} degrees, the source "
                                    f"{plan.rotation}")
        notes = (f"display rotation {plan.rotation} is not stored in .mkv by this ffmpeg; use .mp4 to keep it",)
    duration = float(stream.get("duration") or 0.0)
    if duration and abs(duration - plan.duration) > plan.frame_duration * 1.5:
        raise VerificationError(f"the joined video lasts {duration:.3f} s, the source {plan.duration:.3f} s")
    return Verification(frames=frames, audio_streams=audio, subtitle_streams=subs, video_duration=duration,
                        seconds=done.seconds, rotation=rotation, notes=notes)
