"""Does HDR survive the encode? HDR10/HLG metadata carried into every segment, checked on every segment.

The source's HDR facts come from :mod:`montage_ray.media.info` (``info.video.hdr``: PQ or HLG, the mastering
display and content light level of its first frame, any Dolby Vision layer). How an encoder carries them is
a column of the backend table (:attr:`montage_ray.encoders.backends.Backend.hdr`): x265 and SVT-AV1 take them as
their own options, the VAAPI and QSV HEVC encoders from each frame's side data; an encoder without an entry
drops them. Every segment is encoded separately, so the metadata goes into each piece, and each piece's
first frame is read back to tell whether it did::

    from montage_ray.encoders import hdr
    from montage_ray.encoders.backends import cpu_spec

    spec, lost = hdr.for_encoder(cpu_spec("hevc"), info.video.hdr, caps)   # (spec with -x265-params ..., "")
    hdr.check_output("seg.mp4", info.video.hdr)      # "" when frame 0 carries the same metadata, else what differs
    hdr.refuse_dolby_vision(info, allow_loss=False)  # InputError: re-encoding drops the Dolby Vision RPU

A re-encode never keeps a Dolby Vision RPU: a job refuses such a source unless ``allow_dv_loss`` (the
CLI's ``--allow-dv-loss``); the base layer's HDR10 or HLG metadata is then kept like any other.
"""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from typing import Any, Iterable, Mapping, Sequence

from montage_ray.ffmpeg import tool
from montage_ray.encoders.backends import BACKENDS, EncoderSpec, HdrCarry
from montage_ray.ffmpeg.caps import FFmpegCaps
from montage_ray.errors import FFmpegError, InputError
from montage_ray.media.info import HdrInfo, MasteringDisplay, hdr_info

#: What a stream copy carries (the pass-through stand-in): everything.
COPY = HdrCarry("copy", note="stream copy keeps the source's bitstream")

#: How far two mastering display values may differ and still be the same: HEVC stores chromaticity in
#: 1/50000 and luminance in 1/10000 cd/m2, AV1 in 1/65536 (xy), 1/256 (max) and 1/16384 (min) cd/m2.
XY_TOLERANCE = Fraction(1, 50000) + Fraction(1, 65536)
MAX_LUMINANCE_TOLERANCE = Fraction(1, 256)
MIN_LUMINANCE_TOLERANCE = Fraction(1, 10000)

#: The prefix of an :class:`~montage_ray.encoders.records.EncodeResult`'s ``hdr`` when the metadata was lost.
LOST = "lost: "


def carry(backend: str, codec: str, *, copies: bool = False) -> HdrCarry | None:
    """How ``backend``'s encoder for ``codec`` carries HDR10 metadata (None: it cannot)."""
    if copies:
        return COPY
    row = BACKENDS.get(backend)
    return row.hdr.get(codec) if row else None


def gap(backend: str, codec: str) -> str:
    """Why ``backend`` cannot carry HDR10 metadata in ``codec`` (the backend table's words)."""
    row = BACKENDS.get(backend)
    encoder = row.encoders.get(codec, f"{backend} {codec}") if row else backend
    why = row.hdr_gap if row and row.hdr_gap else "no known way to pass it"
    return f"{encoder} cannot carry HDR10 metadata ({why})"


def for_encoder(spec: EncoderSpec, info: HdrInfo | None, caps: FFmpegCaps) -> tuple[EncoderSpec, str]:
    """``spec`` made to carry the HDR of a source with ``info``, and "" (or why the metadata will be lost).

    "params" encoders get the metadata as their own options, merged into any the encoders config gave
    (``-x265-params a=1`` becomes ``-x265-params a=1:master-display=...``); hardware encoders get their
    10-bit upload filter. An SDR source (``info`` None) leaves ``spec`` as it is."""
    if info is None:
        return spec, ""
    how = carry(spec.backend, spec.codec, copies=spec.copies)
    if how is None:
        return spec, gap(spec.backend, spec.codec)
    if how.how == "copy":
        return spec, ""
    if how.option and how.option not in caps.options:
        return spec, (f"this ffmpeg ({caps.version}) has no -{how.option} (the {spec.encoder} wrapper or its "
                      f"option is missing), so the metadata cannot be passed")
    args = list(spec.codec_args)
    if how.params is not None and info.static_metadata:
        args = merge_params(args, how.params(info.mastering, info.light))
    video_filter = how.video_filter if how.video_filter and spec.video_filter else spec.video_filter
    return replace(spec, codec_args=tuple(args), video_filter=video_filter), ""


def merge_params(args: Sequence[str], extra: Sequence[str]) -> list[str]:
    """``args`` with the ``-NAME value`` pairs of ``extra`` added; a ``-x265-params``-like option already in
    ``args`` gets the new ``key=value`` list appended to its own (later keys win in x265 and SVT-AV1)."""
    out = list(args)
    for i in range(0, len(extra), 2):
        option, value = extra[i], extra[i + 1]
        if option in out and out.index(option) + 1 < len(out):
            at = out.index(option) + 1
            out[at] = f"{out[at]}:{value}" if out[at] else value
        else:
            out += [option, value]
    return out


def read_output(path: str, *, frame: int = 0, timeout: float = 60.0) -> HdrInfo | None:
    """The HDR facts of ``path``'s video: its stream and its frame number ``frame`` (decode order from the
    start; one ffprobe, which decodes up to that frame)."""
    try:
        data = tool.probe_json(
            ["-select_streams", "v:0", "-read_intervals", f"%+#{frame + 1}", "-show_streams", "-show_frames",
             "-show_entries", "stream=color_transfer,codec_tag_string,side_data_list:"
                              "frame=color_transfer,side_data_list", tool.file_url(path)],
            timeout=timeout)
    except FFmpegError:
        return None
    streams, frames = data.get("streams") or [{}], data.get("frames") or []
    return hdr_info(streams[0], frames[frame] if len(frames) > frame else (frames[-1] if frames else None))


def differences(expected: HdrInfo, got: HdrInfo | None) -> list[str]:
    """What of ``expected`` (the source's HDR) ``got`` (an output's) lacks or changed; empty when kept.
    Dolby Vision is not compared (a re-encode never keeps it; see :func:`refuse_dolby_vision`)."""
    if got is None:
        got = HdrInfo(kind=None)
    out = []
    if expected.kind and got.kind != expected.kind:
        out.append(f"transfer {got.kind or 'SDR'} instead of {expected.kind}")
    if expected.mastering is not None:
        if got.mastering is None:
            out.append("no mastering display metadata")
        elif not same_mastering(expected.mastering, got.mastering):
            out.append("a different mastering display")
    if expected.light is not None:
        if got.light is None:
            out.append("no content light level metadata")
        elif got.light != expected.light:
            out.append(f"content light {got.light.max_content}/{got.light.max_average} instead of "
                       f"{expected.light.max_content}/{expected.light.max_average}")
    return out


def same_mastering(a: MasteringDisplay, b: MasteringDisplay) -> bool:
    """Equal within what HEVC's and AV1's fixed-point fields can hold (see :data:`XY_TOLERANCE`)."""
    for pa, pb in ((a.red, b.red), (a.green, b.green), (a.blue, b.blue), (a.white, b.white)):
        if abs(pa[0] - pb[0]) > XY_TOLERANCE or abs(pa[1] - pb[1]) > XY_TOLERANCE:
            return False
    return (abs(a.max_luminance - b.max_luminance) <= MAX_LUMINANCE_TOLERANCE
            and abs(a.min_luminance - b.min_luminance) <= MIN_LUMINANCE_TOLERANCE)


def check_output(path: str, expected: HdrInfo, *, frame: int = 0) -> str:
    """"" when frame ``frame`` of ``path`` carries ``expected``'s HDR, else what is missing (one phrase)."""
    return "; ".join(differences(expected, read_output(path, frame=frame)))


def refuse_dolby_vision(info: Any, *, allow_loss: bool) -> str | None:
    """InputError for a Dolby Vision source unless ``allow_loss``; with it, the report's line (None: no DV).

    ``info`` is a :class:`~montage_ray.media.info.MediaInfo`."""
    hdr = info.video.hdr
    if hdr is None or not hdr.dolby_vision:
        return None
    base = {"hdr10": "HDR10", "hlg": "HLG"}.get(hdr.kind or "", "SDR")
    if not allow_loss:
        raise InputError(f"input {info.path!r} has Dolby Vision ({hdr.dolby_vision}): re-encoding drops its "
                         f"RPU and keeps only the {base} base layer; pass --allow-dv-loss to encode it anyway")
    return f"Dolby Vision ({hdr.dolby_vision}) dropped as allowed (--allow-dv-loss); the {base} base layer is kept"




def report_lines(info: HdrInfo | None, results: Iterable[Any], *, output: str = "") -> list[str]:
    """The report's ``hdr`` lines: the source's HDR, each segment that lost it (and why), and ``output``
    (the check of the joined file's first frame)."""
    if info is None:
        return []
    results = list(results)
    lines = [f"source: {info.describe()}"]
    lost = [r for r in results if str(getattr(r, "hdr", "")).startswith(LOST)]
    for r in lost:
        lines.append(f"segment {r.segment} on {r.encoder}: HDR metadata {r.hdr}")
    if results and not lost:
        lines.append(f"kept on all {len(results)} segments")
    if output:
        lines.append(output)
    return lines


def support(backend: str, encoders: Mapping[str, str], caps: FFmpegCaps | None) -> dict[str, str]:
    """For the probe: per codec a backend encodes on this node (``encoders``: codec -> encoder), whether an
    HDR source keeps its HDR10 metadata there ("kept: how") or not ("lost: why")."""
    out = {}
    for codec, encoder in encoders.items():
        how = carry(backend, codec)
        if how is None:
            out[codec] = LOST + gap(backend, codec)
        elif how.option and caps is not None and how.option not in caps.options:
            out[codec] = LOST + f"this ffmpeg ({caps.version}) has no -{how.option}"
        else:
            out[codec] = "kept: " + (how.note or encoder)
    return out
