"""What is this file? Streams, timing and the keyframe index of a source, read without decoding.

:func:`inspect` runs ffprobe twice: once for streams, format and chapters, once for the video stream's
packet table (timestamps and key flags, demuxing only). The packet table is what the planner needs to cut
exactly: a cut is *clean* at a keyframe when every frame before it in decode order is shown before it and
no frame after it is shown before it (no open-GOP leading pictures)::

    from montage_ray.media.info import inspect

    info = inspect("talk.mp4")
    info.video.codec, info.video.frames, info.duration
    info.clean_cuts()            # packet indices where a segment may start
    info.video.hdr               # HdrInfo (HDR10 / HLG / Dolby Vision, read from frame 0) or None for SDR

Bad inputs raise :class:`~montage_ray.errors.InputError` with one line a user can act on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from montage_ray.ffmpeg import tool
from montage_ray.errors import FFmpegError, InputError

#: Seconds allowed for each ffprobe run (the packet scan of a two-hour file takes a few seconds).
PROBE_TIMEOUT = 300.0

#: Subtitle codecs that are text, and so can be converted to MP4's mov_text.
TEXT_SUBTITLES = frozenset({"subrip", "ass", "ssa", "webvtt", "mov_text", "text"})


def _fraction(text: str | None) -> Fraction | None:
    if not text or text in ("0/0", "N/A"):
        return None
    try:
        value = Fraction(text.replace(":", "/"))
    except (ValueError, ZeroDivisionError):
        return None
    return value if value > 0 else None


def _float(text: Any, default: float = 0.0) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return default


@dataclass(frozen=True)
class StreamInfo:
    """One non-primary stream (audio, subtitle, data) of the source, as ffprobe sees it."""

    index: int
    kind: str                   # "audio", "subtitle", "data", "attachment", "video"
    codec: str
    language: str | None = None


@dataclass(frozen=True)
class MasteringDisplay:
    """SMPTE ST 2086 mastering display colour volume: chromaticities (CIE 1931 xy) of the red, green and blue
    primaries and the white point, and the luminance range in cd/m2, as exact fractions."""

    red: tuple[Fraction, Fraction]
    green: tuple[Fraction, Fraction]
    blue: tuple[Fraction, Fraction]
    white: tuple[Fraction, Fraction]
    max_luminance: Fraction
    min_luminance: Fraction


@dataclass(frozen=True)
class ContentLight:
    """CTA-861.3 content light level: MaxCLL and MaxFALL in cd/m2."""

    max_content: int
    max_average: int


#: Transfer characteristics (ffprobe's ``color_transfer``) of HDR video: PQ (HDR10) and HLG.
HDR_TRANSFERS = {"smpte2084": "hdr10", "arib-std-b67": "hlg"}

#: Codec tags of Dolby Vision streams (MP4 sample entries dvh1/dvhe for HEVC, dav1 for AV1, dvav/dva1 AVC).
DOLBY_VISION_TAGS = frozenset({"dvh1", "dvhe", "dav1", "dva1", "dvav"})


@dataclass(frozen=True)
class HdrInfo:
    """What makes a source HDR: its transfer (``kind`` "hdr10" for PQ, "hlg"), the static metadata of its
    first frame (or of the stream, where the container holds it) and any Dolby Vision layer."""

    kind: str | None                          # "hdr10", "hlg", or None (SDR transfer, e.g. DV profile 5)
    mastering: MasteringDisplay | None = None
    light: ContentLight | None = None
    dolby_vision: str | None = None           # e.g. "profile 8.1" (or "codec tag dvh1"); None without DV

    @property
    def static_metadata(self) -> bool:
        """Whether there is HDR10 static metadata to carry (mastering display and/or content light)."""
        return self.mastering is not None or self.light is not None

    def describe(self) -> str:
        """One phrase for reports: ``HDR10 (PQ, BT.2020) with mastering display 1000 cd/m2, MaxCLL 1000``."""
        parts = [{"hdr10": "HDR10 (PQ)", "hlg": "HLG"}.get(self.kind or "", "SDR transfer")]
        if self.mastering:
            parts.append(f"mastering display {float(self.mastering.max_luminance):g}-"
                         f"{float(self.mastering.min_luminance):g} cd/m2")
        if self.light:
            parts.append(f"MaxCLL {self.light.max_content}, MaxFALL {self.light.max_average}")
        if self.dolby_vision:
            parts.append(f"Dolby Vision {self.dolby_vision}")
        return ", ".join(parts)


def _ratio(value: Any) -> Fraction:
    """``"34000/50000"`` (or a number) as a Fraction; 0 when missing or unreadable (0 is a valid value here)."""
    try:
        return Fraction(str(value).replace(":", "/"))
    except (ValueError, ZeroDivisionError):
        return Fraction(0)


def _xy(side: dict[str, Any], name: str) -> tuple[Fraction, Fraction]:
    return _ratio(side.get(f"{name}_x")), _ratio(side.get(f"{name}_y"))


def parse_hdr_side_data(entries: Any) -> tuple[MasteringDisplay | None, ContentLight | None, str | None]:
    """(mastering display, content light, Dolby Vision) from ffprobe ``side_data_list`` entries of a frame or
    a stream. ffprobe names them by ``side_data_type`` ("Mastering display metadata", "Content light level
    metadata", "DOVI configuration record"); values are fractions such as ``34000/50000``."""
    mastering = light = dovi = None
    for side in entries or []:
        kind = str(side.get("side_data_type", ""))
        if kind == "Mastering display metadata" and "red_x" in side:
            mastering = MasteringDisplay(
                red=_xy(side, "red"), green=_xy(side, "green"), blue=_xy(side, "blue"),
                white=_xy(side, "white_point"),
                max_luminance=_ratio(side.get("max_luminance")), min_luminance=_ratio(side.get("min_luminance")))
        elif kind == "Content light level metadata":
            light = ContentLight(int(_float(side.get("max_content"))), int(_float(side.get("max_average"))))
        elif kind == "DOVI configuration record":
            dovi = f"profile {side.get('dv_profile', '?')}"
            if side.get("dv_bl_signal_compatibility_id") not in (None, 0, "0"):
                dovi += f".{side.get('dv_bl_signal_compatibility_id')}"
        elif kind.startswith("Dolby Vision") and dovi is None:   # RPU / metadata on frames (ffmpeg 6+)
            dovi = "RPU on frames"
    return mastering, light, dovi


def hdr_info(stream: dict[str, Any], frame: dict[str, Any] | None = None) -> HdrInfo | None:
    """The HDR facts of one ffprobe stream entry and (optionally) its first frame's entry; None for SDR.

    The frame's side data wins over the stream's (HEVC and AV1 carry it in the bitstream; MP4's mdcv/clli
    boxes and Matroska's Colour element are read as stream side data)."""
    kind = HDR_TRANSFERS.get(str(stream.get("color_transfer") or (frame or {}).get("color_transfer") or ""))
    mastering, light, dovi = parse_hdr_side_data(stream.get("side_data_list"))
    if frame is not None:
        f_mastering, f_light, f_dovi = parse_hdr_side_data(frame.get("side_data_list"))
        mastering, light, dovi = f_mastering or mastering, f_light or light, dovi or f_dovi
    tag = str(stream.get("codec_tag_string") or "").lower()
    if dovi is None and tag in DOLBY_VISION_TAGS:
        dovi = f"codec tag {tag}"
    if kind is None and mastering is None and light is None and dovi is None:
        return None
    return HdrInfo(kind=kind, mastering=mastering, light=light, dolby_vision=dovi)


def might_be_hdr(stream: dict[str, Any]) -> bool:
    """Whether a stream is worth reading its first frame for HDR metadata (PQ/HLG, 10 bits or more, or HDR
    side data or a Dolby Vision tag on the stream): an SDR 8-bit source costs nothing more."""
    pix = str(stream.get("pix_fmt") or "")
    return (str(stream.get("color_transfer")) in HDR_TRANSFERS or "10" in pix or "12" in pix
            or bool(stream.get("side_data_list") and hdr_info(stream))
            or str(stream.get("codec_tag_string") or "").lower() in DOLBY_VISION_TAGS)


def read_first_frame(url: str, index: int, *, timeout: float = PROBE_TIMEOUT) -> dict[str, Any] | None:
    """ffprobe's entry for the first decoded frame of stream ``index`` (its side data, colours), or None.

    This decodes one frame (and what it depends on): the only place :mod:`montage_ray.media.info` decodes."""
    try:
        data = tool.probe_json(["-select_streams", str(index), "-read_intervals", "%+#1", "-show_frames",
                                      "-show_entries", "frame=color_transfer,color_primaries,color_space,"
                                      "side_data_list", url], timeout=timeout)
    except FFmpegError:
        return None
    frames = data.get("frames") or []
    return frames[0] if frames else None


@dataclass(frozen=True)
class VideoInfo:
    """The video stream that montage-ray encodes (the first one that is not cover art)."""

    index: int
    codec: str
    width: int
    height: int
    pix_fmt: str | None
    time_base: Fraction
    frame_rate: Fraction | None        # average frame rate
    sar: Fraction | None               # sample aspect ratio, None when unknown or 1:1
    rotation: int                      # display rotation in degrees as ffprobe reports it (e.g. -90)
    color_range: str | None
    color_space: str | None
    color_transfer: str | None
    color_primaries: str | None
    frames: int                        # packets in the stream
    start: float                       # first presentation time, seconds
    hdr: HdrInfo | None = None         # HDR10/HLG/Dolby Vision facts (None: SDR)


@dataclass(frozen=True)
class PacketIndex:
    """The video packet table in decode order: presentation times (in time-base ticks) and key flags."""

    pts: np.ndarray          # int64, decode order
    key: np.ndarray          # bool, decode order
    last_duration: int = 0   # how long the last-shown frame lasts, in ticks, as the source says (0: unknown)

    def __len__(self) -> int:
        return int(self.pts.shape[0])

    def clean_cuts(self) -> np.ndarray:
        """Packet indices (ascending, always including 0) where a segment can start frame-exactly."""
        n = len(self)
        if n == 0:
            return np.zeros(1, dtype=np.int64)
        prefix_max = np.maximum.accumulate(self.pts)              # max pts of packets [0..i]
        suffix_min = np.minimum.accumulate(self.pts[::-1])[::-1]  # min pts of packets [i..n)
        ok = self.key.copy()
        ok[0] = True
        # Everything before i is shown before packet i, and nothing from i on is shown before it.
        ok[1:] &= prefix_max[:-1] < self.pts[1:]
        ok[1:] &= suffix_min[1:] >= self.pts[1:]
        return np.flatnonzero(ok).astype(np.int64)


@dataclass(frozen=True)
class MediaInfo:
    """Everything montage-ray needs to know about a source before planning."""

    path: str
    size: int
    format_name: str
    duration: float
    start_time: float
    video: VideoInfo
    audio: tuple[StreamInfo, ...]
    subtitles: tuple[StreamInfo, ...]
    attachments: tuple[StreamInfo, ...]
    chapters: int
    packets: PacketIndex = field(repr=False)
    cover_art: tuple[StreamInfo, ...] = ()    # attached pictures (kind "video", disposition attached_pic)
    other_video: tuple[StreamInfo, ...] = ()  # video streams after the one encoded (not cover art)
    data: tuple[StreamInfo, ...] = ()         # data streams (timecode, GPS, ...): not carried over

    def clean_cuts(self) -> np.ndarray:
        """See :meth:`PacketIndex.clean_cuts`."""
        return self.packets.clean_cuts()


#: The packet fields read for the packet table, in ffprobe's CSV order.
#: The packet fields read, in ffprobe's own output order (it writes them in this order whatever was asked).
PACKET_FIELDS = ("pts", "dts", "duration", "flags")


def parse_packet_csv(text: str) -> PacketIndex:
    """The packet table from ffprobe's ``packet=pts,dts,duration,flags`` CSV, parsed column-wise with numpy (no
    loop per packet): a missing pts falls back to the dts; with neither, decode order is taken as display
    order. ``last_duration`` is the last-shown frame's own duration where the source gives one."""
    rows = text.split()
    if not rows:
        return PacketIndex(pts=np.zeros(0, dtype=np.int64), key=np.zeros(0, dtype=bool))
    width = len(PACKET_FIELDS)
    cells = np.array(",".join(rows).split(","), dtype=object)
    if cells.size != len(rows) * width:  # a row with a missing field: pad row by row (never seen in practice)
        cells = np.array([(r.split(",") + ["N/A"] * width)[:width] for r in rows], dtype=object).ravel()
    table = cells.reshape(len(rows), width)
    col = {name: table[:, i] for i, name in enumerate(PACKET_FIELDS)}
    pts_text = np.where(col["pts"] == "N/A", col["dts"], col["pts"])
    missing = pts_text == "N/A"
    pts = np.where(missing, "0", pts_text).astype(np.int64)
    if missing.any():  # no timestamps at all: one tick after the previous packet
        for i in np.flatnonzero(missing):
            pts[i] = pts[i - 1] + 1 if i else 0
    key = np.char.startswith(col["flags"].astype(str), "K")
    durations = col["duration"].astype(str)
    last = durations[int(np.argmax(pts))]
    return PacketIndex(pts=pts, key=key, last_duration=int(last) if last.isdigit() else 0)


def stream_rotation(stream: dict[str, Any]) -> int:
    """Display rotation in degrees of one ffprobe stream entry, however this ffprobe reports it.

    ffprobe 5.0 and newer report a display matrix as side data (``side_data_list[].rotation``, e.g. -90);
    4.x reports the MP4/MOV ``rotate`` tag (``tags.rotate``, clockwise, e.g. 270 for -90) and also the
    matrix where present. The side data wins; the tag is turned into the same signed counter-clockwise angle.
    """
    for side in stream.get("side_data_list", []) or []:
        if "rotation" in side:
            return int(round(_float(side["rotation"])))
    tag = (stream.get("tags") or {}).get("rotate")
    if tag is None:
        return 0
    degrees = -int(round(_float(tag))) % 360     # clockwise tag -> counter-clockwise matrix angle
    return degrees - 360 if degrees > 180 else degrees


def _read_packets(url: str, index: int) -> tuple[PacketIndex, str]:
    done = tool.run(
        [tool.ffprobe(), "-v", "error", "-fflags", "+genpts", "-select_streams", str(index),
         "-show_entries", "packet=" + ",".join(PACKET_FIELDS), "-of", "csv=p=0", url],
        timeout=PROBE_TIMEOUT)
    return parse_packet_csv(done.stdout), done.stderr


@dataclass(frozen=True)
class Header:
    """What ffprobe's first, quick look at a source says (streams, format, chapters), its video stream checked
    to be there and readable: every bad input but a truncated or damaged packet table fails here."""

    path: str                       # as the user gave it (for messages)
    data: dict[str, Any]            # ffprobe's JSON
    video_streams: list[dict[str, Any]]


def read_header(path: str | os.PathLike[str]) -> Header:
    """The first half of :func:`inspect`: one ffprobe of the streams and format (tens of milliseconds, no
    packet scan), so that a job can refuse a bad input before it starts anything. Raises InputError."""
    shown = os.fspath(path)
    url = tool.file_url(os.path.abspath(shown))
    try:
        data = tool.probe_json(["-show_format", "-show_streams", "-show_chapters", url],
                                     timeout=PROBE_TIMEOUT)
    except FFmpegError as err:
        why = tool.last_error_line(err.stderr) or "ffprobe failed"
        if "Invalid data found" in why:
            why = "not a media file ffmpeg can read"
        elif why.startswith(url):
            why = why[len(url):].lstrip(": ")
        raise InputError(f"input {shown!r} cannot be read as video: {why}") from None
    streams = data.get("streams", [])
    video_streams = [s for s in streams if s.get("codec_type") == "video"
                     and not s.get("disposition", {}).get("attached_pic")]
    if not video_streams:
        raise InputError(f"input {shown!r} has no video stream")
    v = video_streams[0]
    if not v.get("codec_name") or v.get("codec_name") == "none":
        raise InputError(f"input {shown!r}: the video codec is unknown to this ffmpeg "
                         f"(codec tag {v.get('codec_tag_string', '?')})")
    if not v.get("width") or not v.get("height"):
        raise InputError(f"input {shown!r}: the video stream has no picture size (is the file truncated?)")
    return Header(shown, data, video_streams)


def inspect(path: str | os.PathLike[str], header: Header | None = None) -> MediaInfo:
    """Read a source's streams, timing and packet table (no decoding). Raises InputError on bad input.

    ``path`` is taken as a local file name (see :func:`montage_ray.job.options.check_source`, which a job runs
    first); it is never read as a protocol. ``header`` is :func:`read_header`'s answer for it when already read.
    """
    header = header or read_header(path)
    shown = header.path
    absolute = os.path.abspath(shown)
    url = tool.file_url(absolute)
    data, video_streams = header.data, header.video_streams
    streams = data.get("streams", [])
    v = video_streams[0]
    packets, packet_errors = _read_packets(url, int(v["index"]))
    if len(packets) == 0:
        raise InputError(f"input {shown!r}: the video stream has no frames (is the file truncated?)")
    listed = int(v.get("nb_frames") or 0)
    if "partial file" in packet_errors or listed > len(packets):
        raise InputError(f"input {shown!r} is truncated or damaged: "
                         + (f"it lists {listed} video frames but only {len(packets)} can be read" if listed
                            > len(packets) else tool.last_error_line(packet_errors)))
    time_base = _fraction(v.get("time_base")) or Fraction(1, 90000)
    rotation = stream_rotation(v)
    sar = _fraction(v.get("sample_aspect_ratio"))
    video = VideoInfo(
        index=int(v["index"]), codec=v["codec_name"], width=int(v["width"]), height=int(v["height"]),
        pix_fmt=v.get("pix_fmt"), time_base=time_base,
        frame_rate=_fraction(v.get("avg_frame_rate")) or _fraction(v.get("r_frame_rate")),
        sar=None if sar in (None, Fraction(1)) else sar, rotation=rotation,
        color_range=_known(v.get("color_range")), color_space=_known(v.get("color_space")),
        color_transfer=_known(v.get("color_transfer")), color_primaries=_known(v.get("color_primaries")),
        frames=len(packets), start=float(int(packets.pts.min()) * time_base),
        hdr=hdr_info(v, read_first_frame(url, int(v["index"]))) if might_be_hdr(v) else None)

    def others(kind: str) -> tuple[StreamInfo, ...]:
        return tuple(StreamInfo(int(s["index"]), kind, s.get("codec_name") or "unknown",
                                s.get("tags", {}).get("language")) for s in streams
                     if s.get("codec_type") == kind)

    fmt = data.get("format", {})
    return MediaInfo(
        path=absolute, size=int(fmt.get("size") or os.path.getsize(absolute)),
        format_name=fmt.get("format_name", "?"), duration=_float(fmt.get("duration")),
        start_time=_float(fmt.get("start_time")), video=video, audio=others("audio"),
        subtitles=others("subtitle"), attachments=others("attachment"),
        chapters=len(data.get("chapters", [])), packets=packets,
        cover_art=tuple(StreamInfo(int(s["index"]), "video", s.get("codec_name") or "unknown") for s in streams
                        if s.get("codec_type") == "video" and s.get("disposition", {}).get("attached_pic")),
        other_video=tuple(StreamInfo(int(s["index"]), "video", s.get("codec_name") or "unknown")
                          for s in video_streams[1:]),
        data=others("data"))


def _known(value: str | None) -> str | None:
    return None if value in (None, "unknown", "reserved", "unspecified") else value
