"""Every ffmpeg and ffprobe command montage-ray runs, one builder per kind, spelt for the ffmpeg that runs it.

The argument lists are built with ffmpeg-python's graph (``ffmpeg.input(...).output(...)``, then
``get_args()``) and run by :func:`montage_ray.ffmpeg.tool.run` (timeouts, process groups, stderr tails). Each
builder takes the :class:`~montage_ray.ffmpeg.caps.FFmpegCaps` of the binary that will run the command: an encoder
actor passes its node's ffmpeg, the driver its own::

    from montage_ray.ffmpeg import commands
    from montage_ray.ffmpeg.caps import ffmpeg_caps

    caps = ffmpeg_caps()
    cmd = commands.encode_command(spec, "in.nut", "out.mp4", caps=caps, video_args=["-pix_fmt", "yuv420p"])
    # [.../ffmpeg, -hide_banner, ..., -i, file:/.../in.nut, -map, 0:v:0, ..., -vsync, passthrough, ...] on 4.2

The kinds: :func:`cut_command` and :func:`cut_lanes_command` (the source into segments, stream copy), :func:`encode_command` (one
segment; the probe's test encode is the same command, :func:`probe_encode_command`), :func:`align_command`
and :func:`join_command` (the join and mux), :func:`verify_command` (ffprobe counting the joined frames),
:func:`segment_check_command` (an actor's check of its own output), :func:`quality_command` (an actor's
measure of its segment against the source piece, for ``--target-quality``), :func:`structure_command`,
:func:`shown_frames_command` and :func:`join_windows_command` (the driver's checks of the joined file against
its source),
:func:`test_clip_command` (the probe's own runs; what caps asks a binary is in :mod:`~montage_ray.ffmpeg.queries`).

What ffmpeg-python cannot express is said where it happens: global options (``-hide_banner``, ``-y``,
``-progress``, the hardware device options, which may repeat) go first, before the graph's arguments, because
ffmpeg-python puts global options after the outputs and keeps only one value per option name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import ffmpeg as ffmpeg_python

from montage_ray.ffmpeg.caps import FFmpegCaps
from montage_ray.errors import EncoderError
from montage_ray.ffmpeg.tool import file_url
from montage_ray.util.params import records

#: Global options that name hardware devices: they may repeat (QSV derives one device from another), which
#: ffmpeg-python's keyword arguments cannot hold, so they stay in the global part of the command.
_GLOBAL_DEVICE_OPTIONS = frozenset({"-vaapi_device", "-init_hw_device", "-filter_hw_device", "-qsv_device",
                                    "-hwaccel_device"})


def _globals(binary: str, *, loglevel: str = "error", progress: str | None = None,
             extra: Sequence[str] = ()) -> list[str]:
    """The binary and its global options. (ffmpeg-python's ``global_args`` would put them after the
    outputs, and ``overwrite_output`` appends ``-y`` last; ffmpeg reads them anywhere, but a reader of the
    command and the probe's ``--verbose`` expect them first.)"""
    args = [binary, "-hide_banner", "-nostdin", "-nostats", "-v", loglevel, "-y"]
    if progress:
        args += ["-progress", file_url(progress)]
    return args + list(extra)


def option_kwargs(args: Sequence[str]) -> dict[str, Any]:
    """``["-c:v", "libx264", "-an"]`` -> ``{"c:v": "libx264", "an": None}`` for ffmpeg-python.

    A value may start with ``-`` only when it is a number (``-enc_time_base -1``); an option named twice
    is an error (ffmpeg-python keeps one value per name).
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(args):
        key = str(args[i])
        if not key.startswith("-") or len(key) < 2:
            raise EncoderError(f"encoder option {key!r} is not an option (options start with '-')")
        value: str | None = None
        if i + 1 < len(args) and not _is_option(str(args[i + 1])):
            value = str(args[i + 1])
            i += 1
        i += 1
        name = key[1:]
        if name in out:
            raise EncoderError(f"encoder option {key} is given twice")
        out[name] = value
    return out


def _is_option(text: str) -> bool:
    if not text.startswith("-") or len(text) < 2:
        return False
    try:
        float(text)
        return False
    except ValueError:
        return True


def _split_input_args(input_args: Sequence[str]) -> tuple[list[str], dict[str, Any]]:
    """(global device options, kwargs for the input) from an :class:`EncoderSpec`'s ``input_args``."""
    glob: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(input_args):
        target = glob if input_args[i] in _GLOBAL_DEVICE_OPTIONS else rest
        target += list(input_args[i:i + 2])
        i += 2
    return glob, option_kwargs(rest)


def _compile(head: list[str], stream: Any) -> list[str]:
    return head + list(stream.get_args())


# ------------------------------------------------------------------------------------------------------
# Encode one segment (and the probe's test encode, the same command)
# ------------------------------------------------------------------------------------------------------

def encode_command(spec: Any, src: str, dst: str, *, caps: FFmpegCaps, video_args: Sequence[str] = (),
                   sar: str | None = None, progress: str | None = None, loglevel: str = "error",
                   frame_filter: str | None = None, keep: tuple[float, float] | None = None) -> list[str]:
    """Encode file ``src`` (NUT) into ``dst`` (MP4) with ``spec`` (an EncoderSpec) on ``caps``'s ffmpeg.

    ``keep`` (a segment cut between keyframes: :attr:`montage_ray.media.plan.Segment.keep`) encodes only the frames
    shown within it (:func:`keep_filter`), before any other filter.

    ``frame_filter`` comes first in the filter chain: the job's frame fit (:func:`montage_ray.media.plan.fit_frame`
    pads an odd size to what 4:2:0 can hold), decided once per job before any encoder starts.

    The output keeps every frame's presentation time (``-fps_mode passthrough``, ``-vsync passthrough``
    before 5.1) in the source's time base (``-enc_time_base -1``, ``demux`` from 9.0); MP4 keeps every
    packet's DTS exactly (NUT re-derives DTS, which breaks joins of encoders with different reorder
    depths); ``dump_extra`` repeats the parameter sets at every keyframe so that segments from differently
    configured encoders decode after one another.
    """
    problem = caps.unusable
    if problem:
        raise EncoderError(problem)
    device_globals, input_kwargs = _split_input_args(spec.input_args)
    if "readrate" in input_kwargs and not caps.readrate:
        raise EncoderError(caps.missing("readrate", "throttled stand-ins (readrate in the encoders file)"))
    if progress and not caps.progress:
        progress = None
    copies = getattr(spec, "copies", False)  # the pass-through stand-in: the packets as they are
    if copies and keep:
        raise EncoderError("the pass-through stand-in copies packets and cannot drop the frames before a cut "
                           "between keyframes: benchmark it with a source cut at clean keyframes")
    filters = [] if copies else [f for f in (keep_filter(keep) if keep else None, frame_filter,
                                             f"setsar={sar}" if sar else None, spec.video_filter) if f]
    # -noautorotate is an input option without a value: ffmpeg-python writes a None-valued keyword as a bare
    # flag before -i, which is what ffmpeg needs (the pixels are never rotated; the join sets the matrix).
    source = ffmpeg_python.input(file_url(src), noautorotate=None, **input_kwargs)
    output: dict[str, Any] = {}
    if filters:
        # -vf, not a filter graph node: ffmpeg-python would turn .filter() into -filter_complex with labels,
        # and the hardware backends' upload filters expect the simple form
        output["vf"] = ",".join(filters)
    output.update(option_kwargs(spec.codec_args))
    if not copies:
        output.update(option_kwargs(video_args))
    mode_option, mode = caps.passthrough
    # +faststart: the sample tables before the samples, so that the join can read the piece from a pipe
    # while later segments are still encoding (montage_ray.media.join.StreamingJoin)
    output.update({mode_option[1:]: mode, "enc_time_base": caps.enc_time_base,
                   "an": None, "sn": None, "dn": None, "map_metadata": "-1", "f": "mp4", "movflags": "+faststart"})
    if not copies:  # copied packets keep their own framing (dump_extra would put Annex B into AVCC)
        output["bsf:v"] = "dump_extra"
    stream = ffmpeg_python.output(source["v:0"], file_url(dst), **output)
    return _compile(_globals(caps.path, loglevel=loglevel, progress=progress, extra=device_globals), stream)


def keep_filter(keep: tuple[float, float]) -> str:
    """Frames shown from ``keep[0]`` up to ``keep[1]`` seconds after the first keyframe decoded, starting at 0.

    Frame-exact on every ffmpeg from 4.2 on whatever the decoder does with the pictures before that
    keyframe: a segment's packets start at a keyframe, but an open-GOP keyframe's leading pictures come
    after it in decode order, and decoders differ on them (H.264 shows them damaged, HEVC and MPEG-2 drop
    them), so neither a frame count (``trim=start_frame``) nor the file's start time (which ffmpeg subtracts)
    is a sure origin. ``select`` keeps nothing until the first keyframe arrives and stores its time
    (``st``/``ld``: the expression's variables live as long as the filter), then keeps the frames within the
    window; ``setpts`` starts the kept frames at 0, as a segment cut at a clean keyframe starts.
    """
    lo, hi = keep
    gate = "if(key*not(ld(0)),st(1,t)+st(0,1))*0"
    return f"select='{gate}+ld(0)*gte(t-ld(1),{lo:.9f})*lt(t-ld(1),{hi:.9f})',setpts=PTS-STARTPTS"


def probe_encode_command(spec: Any, src: str, dst: str, *, caps: FFmpegCaps, video_args: Sequence[str],
                         loglevel: str = "error") -> list[str]:
    """The probe's test encode: exactly :func:`encode_command` (production's command) on the probed ffmpeg."""
    return encode_command(spec, src, dst, caps=caps, video_args=video_args, loglevel=loglevel)


# ------------------------------------------------------------------------------------------------------
# Cut the source into segments (stream copy)
# ------------------------------------------------------------------------------------------------------

def cut_command(source: str, stream_index: int, first_packets: Sequence[int], pattern: str, *,
                caps: FFmpegCaps, segment_list: str | None = None) -> list[str]:
    """Stream-copy video stream ``stream_index`` of ``source`` into NUT files named by ``pattern``
    (``%06d``), cutting before each of ``first_packets`` (a single file at ``pattern % 0`` when empty).

    ``pattern`` is a bare file name, and the command runs in the folder the pieces go to
    (``ffmpeg_cli.run(..., cwd=folder)``): the segment muxer reads its whole output name as a printf
    pattern, and a folder's name (a user's, say ``100%``) must never be one. With ``segment_list`` (any
    path: it is no pattern) the segment muxer appends each piece to that CSV file (name, start, end) as it closes it,
    flushed at once: how the pipeline learns that a piece is ready while the cut goes on.
    """
    return cut_lanes_command(source, stream_index, [CutLane(first_packets, pattern, segment_list)], caps=caps)


@dataclass(frozen=True)
class CutLane:
    """One output of a cut: pieces cut before each of ``first_packets`` into ``pattern`` (see
    :func:`cut_command`), listed in ``segment_list``; ``anywhere`` cuts before packets that are no keyframe;
    with ``packets`` the output stops after that many (the rest of the stream is no piece of this lane)."""

    first_packets: Sequence[int]
    pattern: str
    segment_list: str | None = None
    anywhere: bool = False
    packets: int | None = None


def cut_lanes_command(source: str, stream_index: int, lanes: Sequence[CutLane], *, caps: FFmpegCaps) -> list[str]:
    """One stream-copy pass of ``source``'s video into several outputs, each cut as :func:`cut_command` cuts
    (whose command is this one with one lane). Segments cut between keyframes overlap (each carries the
    packets from the keyframe it needs), and one segment muxer writes pieces that follow each other: pieces
    that overlap go to different lanes (:func:`montage_ray.media.cut.cut_lanes`)."""
    src = ffmpeg_python.input(file_url(source), fflags="+genpts", noautorotate=None)
    outputs = []
    for lane in lanes:
        pattern = lane.pattern
        if os.path.basename(pattern) != pattern or not pattern or pattern.startswith("-"):
            raise ValueError(f"cut_command wants a bare file name as its pattern, not {pattern!r}")
        out: dict[str, Any] = {"c": "copy", "map_metadata": "-1"}
        if lane.packets is not None:
            out["frames:v"] = str(lane.packets)
        if lane.first_packets:
            out.update({"f": "segment", "segment_format": "nut", "reset_timestamps": "0",
                        "segment_frames": ",".join(str(p) for p in lane.first_packets)})
            if lane.anywhere:
                out["break_non_keyframes"] = "1"
            if lane.segment_list:
                out.update({"segment_list": file_url(lane.segment_list), "segment_list_type": "csv"})
            target = pattern
        else:
            out["f"] = "nut"
            target = pattern % 0
        # "file:" + the relative name (file_url would make it absolute, folder and all)
        outputs.append(ffmpeg_python.output(src[str(stream_index)], "file:" + target, **out))
    graph = outputs[0] if len(outputs) == 1 else ffmpeg_python.merge_outputs(*outputs)
    # -copytb 1: every piece in the source's own time base, whichever muxer writes it. Left to choose, 4.2
    # to 7.x give a segment muxer's pieces a time base from the frame rate (1/960 for 30 fps, where the
    # plain NUT lane keeps Matroska's 1/1000): millisecond times no longer fit it, and joins came out a
    # frame off (a 10-bit HEVC MKV in 2 s segments failed verification on 4.2.2 and 7.0.2)
    return _compile(_globals(caps.path, extra=["-copytb", "1"]), graph)


# ------------------------------------------------------------------------------------------------------
# Join and mux
# ------------------------------------------------------------------------------------------------------

def align_command(src: str, dst: str, shift: int, *, caps: FFmpegCaps) -> list[str]:
    """Remux ``src`` with its DTS moved ``shift`` ticks earlier (PTS unchanged), by the ``setts`` filter."""
    if not caps.has_bsf("setts"):
        raise EncoderError(caps.missing("setts", "joining segments of differently configured encoders"))
    stream = ffmpeg_python.output(ffmpeg_python.input(file_url(src))["v:0"], file_url(dst), c="copy",
                                  **{"bsf:v": f"setts=dts=DTS-{shift}"}, f="mp4")
    return _compile(_globals(caps.path), stream)


def faststart_command(src: str, dst: str, *, caps: FFmpegCaps) -> list[str]:
    """Copy the MP4 ``src`` to ``dst`` with its sample tables (``moov``) before its samples, so that it can
    be read from a pipe (a segment encoded before the encoders wrote them so, taken from the cache)."""
    stream = ffmpeg_python.output(ffmpeg_python.input(file_url(src))["v:0"], file_url(dst), c="copy",
                                  map_metadata="-1", movflags="+faststart", f="mp4")
    return _compile(_globals(caps.path), stream)


@dataclass(frozen=True)
class Attachment:
    """A file attached to a Matroska output (``-attach``): the source's cover art, copied out to ``path``."""

    path: str
    number: int         # its output stream number among the attachments (t:N), after the mapped ones
    mimetype: str
    filename: str


def cover_picture_command(source: str, stream_index: int, dst: str, *, caps: FFmpegCaps) -> list[str]:
    """Copy the attached picture (cover art) stream ``stream_index`` of ``source`` out to the image ``dst``."""
    src = ffmpeg_python.input(file_url(source))
    stream = ffmpeg_python.output(src[str(stream_index)], file_url(dst), c="copy", **{"frames:v": "1"},
                                  f="image2", update="1")
    return _compile(_globals(caps.path), stream)


#: What ffmpeg says when the sample tables did not fit the space ``-moov_size`` kept for them (the file has
#: none then, yet ffmpeg before 9.0 exits 0).
MOOV_TOO_SMALL = "reserved_moov_size is too small"


@dataclass(frozen=True)
class JoinVideo:
    """The joined video's place in the output: shifted by ``offset`` seconds (the source's first frame relative
    to its start), its metadata from the source's stream ``video_index``, shown turned by ``rotation``."""

    offset: float = 0.0
    video_index: int = 0
    rotation: int = 0


@dataclass(frozen=True)
class JoinStreams:
    """What else goes into the output: the source's ``streams`` by index (audio, subtitles, attachments,
    cover art) with ``stream_options`` for them, and the files of ``attach`` as attachments."""

    streams: tuple[int, ...] = ()
    stream_options: Mapping[str, Any] = field(default_factory=dict)
    attach: tuple[Attachment, ...] = ()


@dataclass(frozen=True)
class JoinContainer:
    """The output's container: ffmpeg's ``muxer``, whether it is an MP4 (then ``tag``, the video's codec tag,
    and ``moov_size``, the bytes kept free at the start for the sample tables, apply)."""

    muxer: str
    mp4: bool
    tag: str | None = None
    moov_size: int | None = None


def join_command(concat_list: str, source: str, dst: str, *, caps: FFmpegCaps, video: JoinVideo | None = None,
                 others: JoinStreams | None = None, container: JoinContainer | None = None,
                 **fields: Any) -> list[str]:
    """Concatenate the encoded segments listed in ``concat_list`` and mux the source's other streams
    (``others``) from ``source`` into ``dst``, the video placed as ``video`` says, in ``container``. The
    records' fields may also come as keywords (``offset=``, ``streams=``, ``muxer=``, ...).

    An MP4 output has its sample tables first: in ``moov_size`` bytes kept free for them at the start (then
    ffmpeg 4.2 to 8.x still exit 0 when they did not fit: see :data:`MOOV_TOO_SMALL`), else by moving every
    byte up once the file is written (``+faststart``, a second pass over the whole file).

    The video is shifted by ``offset`` and gets the source's display ``rotation``: with ``-display_rotation``
    on the concat input (7.0+), else with the ``rotate`` stream tag, which 4.2 to 6.x turn into a display
    matrix on stream copy.
    """
    video, others, container = records(fields, (video, JoinVideo), (others or JoinStreams(), JoinStreams),
                                       (container, JoinContainer))
    offset, video_index, rotation = video.offset, video.video_index, video.rotation
    streams, stream_options, attach = others.streams, others.stream_options, others.attach
    muxer, mp4, tag, moov_size = container.muxer, container.mp4, container.tag, container.moov_size
    concat_kwargs: dict[str, Any] = {"f": "concat", "safe": "0", "itsoffset": f"{offset:.9f}"}
    out: dict[str, Any] = {"c:v": "copy", "map_metadata": "1", "map_chapters": "1",
                           "map_metadata:s:v:0": f"1:s:{video_index}"}
    if rotation:
        if caps.display_rotation:
            concat_kwargs["display_rotation:v:0"] = str(rotation)
        else:
            out["metadata:s:v:0"] = f"rotate={rotation % 360}"
    out.update(stream_options)
    if mp4:
        # the sample tables (moov) before the samples, for playback while downloading: written into
        # ``moov_size`` bytes kept free at the start when given, else by moving the whole file up at the end
        if moov_size:
            out["moov_size"] = str(moov_size)
        else:
            out["movflags"] = "+faststart"
        if tag:
            out["tag:v"] = tag
    out["f"] = muxer
    segments = ffmpeg_python.input(file_url(concat_list), **concat_kwargs)
    # -noautorotate before the source: nothing of it is decoded, but ffmpeg 4.2 to 6.x would otherwise
    # drop its display matrix when the rotate tag is written.
    src = ffmpeg_python.input(file_url(source), noautorotate=None)
    mapped = [segments["v:0"], *(src[str(i)] for i in streams)]
    args = _compile(_globals(caps.path), ffmpeg_python.output(*mapped, file_url(dst), **out))
    if not streams:
        # ffmpeg-python writes only the inputs some mapped stream comes from; a video-only source still has
        # to be input 1 for -map_metadata 1 / -map_chapters 1, so it is inserted by hand after the concat
        # input (ffmpeg-python puts every input before the first -map).
        at = args.index("-map")
        args[at:at] = ["-noautorotate", "-i", file_url(source)]
    if attach:
        # -attach repeats, and each attachment takes two -metadata:s:t:N values: more than ffmpeg-python's
        # one value per option name holds, so they go in by hand, before the output's name
        at = len(args) - 1 - args[::-1].index(file_url(dst))
        for a in attach:
            args[at:at] = ["-attach", file_url(a.path), f"-metadata:s:t:{a.number}", f"mimetype={a.mimetype}",
                           f"-metadata:s:t:{a.number}", f"filename={a.filename}"]
            at += 6
    return args


# ------------------------------------------------------------------------------------------------------
# Verify (ffprobe) and the probe's own runs
# ------------------------------------------------------------------------------------------------------

def verify_command(ffprobe: str, path: str, *, decode: bool) -> list[str]:
    """ffprobe counting the video frames (``decode``) or packets of ``path``, with duration and streams.

    (ffprobe is not ffmpeg: ffmpeg-python's graph builds ffmpeg commands only, and its ``probe()`` runs the
    process itself without our timeouts, so this list is written out.)
    """
    count, field_name = ("-count_frames", "nb_read_frames") if decode else ("-count_packets", "nb_read_packets")
    return [ffprobe, "-v", "error", "-threads", str(os.cpu_count() or 1), "-of", "json", "-select_streams",
            "v:0", count, "-show_entries", f"stream={field_name},duration,start_time:format=nb_streams",
            file_url(path)]


def segment_check_command(ffprobe: str, path: str, *, decode: bool, threads: int = 1) -> list[str]:
    """ffprobe listing an encoded segment's video packets (pts, dts, flags) and counting them, and with
    ``decode`` decoding every frame (the encoder actor's own check of its output)."""
    entries = "packet=pts,dts,flags:stream=nb_read_packets" + (",nb_read_frames" if decode else "")
    # -ignore_editlist: every packet decodes to a frame, whatever edit list the encoding ffmpeg wrote (4.2
    # trims the first or last frame of some segments by one there; the join uses the packets, not the list).
    # -skip_loop_filter all: every picture is still parsed and reconstructed, so a damaged or truncated
    # stream still reports; only the deblocking (and HEVC's SAO) that smooths the reconstructed pixels is
    # left out, and it has no way to fail (it saved ~12 % of an H.264 check's CPU time here, 2 cores)
    return [ffprobe, "-v", "error", "-threads", str(max(1, threads)), "-of", "json", "-select_streams", "v:0",
            "-count_packets", *(["-count_frames", "-skip_loop_filter", "all"] if decode else []),
            "-show_entries", entries, "-ignore_editlist", "1", file_url(path)]


def structure_command(ffprobe: str, path: str) -> list[str]:
    """ffprobe listing every packet's stream, pts, dts, duration and flags (key, discard) and every stream's
    kind and time base, as CSV, in one demux pass without decoding (the driver's structure check of the joined
    file)."""
    return [ffprobe, "-v", "error", "-show_entries",
            "packet=stream_index,pts,dts,duration,flags:stream=index,codec_type,time_base", "-of", "csv=p=1",
            file_url(path)]


def shown_frames_command(ffprobe: str, path: str, stream: int) -> list[str]:
    """ffprobe listing stream ``stream``'s time base and its packets' pts, dts and flags (discard among them)
    as CSV, in one demux pass without decoding, timestamps generated where the file has none (as the source's
    inspection reads them): the source's own count of the frames it shows, for the final verification."""
    return [ffprobe, "-v", "error", "-fflags", "+genpts", "-select_streams", str(stream), "-show_entries",
            "packet=pts,dts,flags:stream=time_base", "-of", "csv=p=1", file_url(path)]


def join_windows_command(ffprobe: str, path: str, windows: Sequence[tuple[float, int]], *,
                         threads: int | None = None) -> list[str]:
    """ffprobe decoding the video of ``path`` only within ``windows`` ((start, packets): the file's clock,
    each decode from the keyframe before ``start`` for that many packets) in one run, counting the frames,
    with ``threads`` decoder threads (default: one per CPU)."""
    intervals = ",".join(f"{max(0.0, start):.6f}%+#{int(packets)}" for start, packets in windows)
    return [ffprobe, "-v", "error", "-threads", str(threads or os.cpu_count() or 1), "-of", "json", "-select_streams",
            "v:0", "-read_intervals", intervals, "-count_frames", "-show_entries", "stream=nb_read_frames",
            file_url(path)]


def quality_command(encoded: str, reference: str, *, caps: FFmpegCaps, metric_filter: str, pix_fmt: str,
                    reference_filter: str | None = None, threads: int = 1) -> list[str]:
    """Measure ``encoded`` against ``reference`` (an actor's segment against its source piece) with the
    metric filter ``metric_filter`` (psnr, ssim, xpsnr, libvmaf); the score is in the summary line it prints
    at level info (see :func:`montage_ray.encoders.quality.parse_score`).

    Both start at time 0 and are converted to ``pix_fmt`` (the metric filters need one format on both
    inputs); ``reference_filter`` (the job's frame fit) gives the reference the encoded size. A two-input
    filter with a filter chain string on one input is written out as a ``-lavfi`` graph: ffmpeg-python would
    need the chain taken apart into nodes.
    """
    fit = f"{reference_filter}," if reference_filter else ""
    graph = (f"[0:v:0]setpts=PTS-STARTPTS,format={pix_fmt}[encoded];"
             f"[1:v:0]{fit}setpts=PTS-STARTPTS,format={pix_fmt}[reference];"
             f"[encoded][reference]{metric_filter}")
    per_input = ["-noautorotate", "-threads", str(max(1, threads))]
    return [*_globals(caps.path, loglevel="info"), *per_input, "-i", file_url(encoded), *per_input, "-i",
            file_url(reference), "-lavfi", graph, "-f", "null", "-"]


def test_clip_command(binary: str, path: str, *, size: str, frames: int) -> list[str]:
    """A few frames of testsrc2 as raw yuv420p in NUT (the probe's source; no encoder needed)."""
    src = ffmpeg_python.input(f"testsrc2=size={size}:rate=25", f="lavfi")
    stream = ffmpeg_python.output(src, file_url(path), **{"frames:v": str(frames)}, pix_fmt="yuv420p",
                                  **{"c:v": "rawvideo"}, f="nut")
    return _compile(_globals(binary), stream)




def stream_options(pairs: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Per-stream options as keywords, refusing a name given twice."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise EncoderError(f"option -{key} is given twice")
        out[key] = value
    return out
