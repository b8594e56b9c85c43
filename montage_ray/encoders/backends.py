"""Encoder backends are data: one table, one row per way of encoding, looked up by name.

A :class:`Backend` says which Ray resource a node must offer to run it, which ffmpeg encoder serves each
codec, which device arguments and upload filter it needs, how the common CRF-like ``quality`` maps to
the encoder's own knob, and how to probe it. Nothing else in montage-ray branches on a backend's name::

    from montage_ray.encoders.backends import BACKENDS

    cpu = BACKENDS["cpu"]
    spec = cpu.spec("h264", quality=23, preset="medium", threads=2)
    spec.output_args()   # ['-c:v', 'libx264', '-preset', 'medium', '-crf', '23', '-threads', '2', ...]

An :class:`EncoderSpec` is what an encoder actor receives: everything it needs to run one ffmpeg encode,
already resolved for its node (device path, VA driver). A *stand-in* spec serves a hardware label with a
CPU encoder, for tests and simulations; it says so in its ``label`` wherever it is shown.

How many encodes one device takes at once is :attr:`Backend.sessions`; a node can change it without
editing this table through ``MONTAGE_<NAME>_SESSIONS`` (``MONTAGE_NVENC_SESSIONS=8`` on a driver that
allows eight NVENC sessions, ``MONTAGE_VAAPI_SESSIONS=2`` on a GPU with two encode engines)::

    BACKENDS["nvenc"].session_count()            # 3, or $MONTAGE_NVENC_SESSIONS

How each encoder carries HDR10 static metadata (mastering display, content light level) is a column too,
:attr:`Backend.hdr`: codec -> :class:`HdrCarry`; an encoder without an entry cannot carry it (see
:mod:`montage_ray.encoders.hdr`, which applies it and checks every encoded segment)::

    BACKENDS["cpu"].hdr["hevc"].params(mastering, light)   # ['-x265-params', 'master-display=G(13250,...']
    "hevc" in BACKENDS["nvenc"].hdr                        # False: hevc_nvenc writes no HDR10 SEI
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:  # the metadata types, from the module that reads them (no import at run time)
    from montage_ray.media.info import ContentLight, MasteringDisplay

#: Codecs a user can ask for, with their encoded name in ffprobe's ``codec_name``.
CODECS = ("h264", "hevc", "av1")

#: Other names users give a codec (``--codec h265``), and the name montage-ray knows it by.
CODEC_ALIASES = {"h265": "hevc", "h.265": "hevc", "h.264": "h264", "avc": "h264"}


def codec_name(text: str) -> str:
    """The codec ``text`` names: one of :data:`CODECS` for itself or an alias (any case); else ``text``."""
    lowered = text.lower() if isinstance(text, str) else text
    return CODEC_ALIASES.get(lowered, lowered) if lowered in CODEC_ALIASES or lowered in CODECS else text

#: x264-style preset names accepted everywhere; each backend maps them to its own.
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


def _crf(q: int) -> list[str]:
    return ["-crf", str(q)]


def _svt_crf(q: int) -> list[str]:
    # SVT-AV1's CRF runs 0..63. Measured by PSNR against x264 on lavfi mandelbrot and testsrc2 (320x240,
    # preset medium/7): CRF 38 matches x264's 23 within about 1 dB (tests/test_encode.py checks parity).
    return ["-crf", str(max(0, min(63, round(q * 1.5 + 3))))]


def _qp(q: int) -> list[str]:
    return ["-rc_mode", "CQP", "-qp", str(q)]


def _global_quality(q: int) -> list[str]:
    return ["-global_quality", str(q)]


def _nvenc_cq(q: int) -> list[str]:
    return ["-rc", "vbr", "-cq", str(q), "-b:v", "0"]


def _nvmpi_q(q: int) -> list[str]:
    # ffmpeg-nvmpi has no constant-quality mode; map quality to a bitrate ladder for 1080p.
    kbps = int(8000 * 2 ** ((23 - q) / 6))
    return ["-b:v", f"{kbps}k"]


def _v4l2_q(q: int) -> list[str]:
    kbps = int(6000 * 2 ** ((23 - q) / 6))
    return ["-b:v", f"{kbps}k"]


def _hdr_params(option: str, display: str, light: str, xy: Callable[[Any], str],
                luminance: Callable[[Any], str]) -> Callable[..., list[str]]:
    """The builder of an encoder's HDR10 params (``option``, e.g. ``-x265-params``): the mastering display
    as ``display=G(x,y)B(x,y)R(x,y)WP(x,y)L(max,min)`` in the encoder's own units (``xy``, ``luminance``)
    and the content light level as ``light=MaxCLL,MaxFALL``."""
    def build(mastering: "MasteringDisplay | None", content: "ContentLight | None") -> list[str]:
        params = []
        if mastering is not None:
            m = mastering
            params.append(f"{display}=G{xy(m.green)}B{xy(m.blue)}R{xy(m.red)}WP{xy(m.white)}"
                          f"L({luminance(m.max_luminance)},{luminance(m.min_luminance)})")
        if content is not None:
            params.append(f"{light}={content.max_content},{content.max_average}")
        return [option, ":".join(params)] if params else []

    return build


# x265's own units (as its CLI and ffmpeg's HEVC SEI): chromaticity in 1/50000, luminance in 1/10000 cd/m2
_x265_hdr = _hdr_params("-x265-params", "master-display", "max-cll",
                        lambda p: f"({round(p[0] * 50000)},{round(p[1] * 50000)})", lambda v: f"{round(v * 10000)}")
# SVT-AV1 (1.0+) takes the same G/B/R/WP/L form in plain numbers: xy as 0..1, luminance in cd/m2
_svt_hdr = _hdr_params("-svtav1-params", "mastering-display", "content-light",
                       lambda p: f"({float(p[0]):.5f},{float(p[1]):.5f})", lambda v: f"{float(v):.4f}")


@dataclass(frozen=True)
class HdrCarry:
    """How one encoder keeps an HDR source HDR: 10 bits and the HDR10 static metadata.

    ``how`` is "params" (montage-ray passes the metadata as the encoder's own options, ``params(mastering,
    light)``, which needs this ffmpeg to have ``option``) or "frames" (the encoder writes it from each
    frame's side data by itself, which the decoder attaches). ``video_filter`` replaces the backend's
    upload filter for HDR sources (a 10-bit surface). Every encoded segment is checked either way."""

    how: str
    params: Callable[["MasteringDisplay | None", "ContentLight | None"], list[str]] | None = None
    option: str | None = None               # the ffmpeg option ``params`` uses (asked of each ffmpeg)
    video_filter: str | None = None
    note: str = ""


@dataclass(frozen=True)
class Knob:
    """The one setting of an encoder family that a quality target turns (``--target-quality``, see
    :mod:`montage_ray.encoders.quality`): its option, its range, which way is better, its step, and how the job's
    CRF-like ``quality`` maps onto it (the parity guess the search starts from)::

        knob = BACKENDS["cpu"].knobs["h264"]
        knob.start(23), knob.args(24.5), knob.shown(24.5)    # 23.0, ['-crf', '24.5'], '-crf 24.5'
    """

    option: str                             # "-crf", "-cq", "-qp", "-global_quality", "-b:v"
    low: float                              # the range the search stays in
    high: float
    lower_is_better: bool = True            # False for a bitrate: more bits, more quality
    step: float = 1.0                       # the finest value the encoder takes (x264's CRF takes 0.25)
    log_scale: bool = False                 # search in log space (bitrates; quality is ~linear in log rate)
    from_quality: Callable[[int], float] = float   # the parity mapping of ``quality`` (its start)
    to_args: Callable[[float], list[str]] | None = None   # value -> arguments (default: option, value)
    unit: str = ""

    def clamp(self, value: float) -> float:
        """``value`` rounded to :attr:`step` and kept in the range."""
        value = round(value / self.step) * self.step
        return min(self.high, max(self.low, round(value, 6)))

    def start(self, quality: int) -> float:
        return self.clamp(self.from_quality(quality))

    def text(self, value: float) -> str:
        return f"{value:g}{self.unit}"

    def args(self, value: float) -> list[str]:
        value = self.clamp(value)
        return self.to_args(value) if self.to_args else [self.option, self.text(value)]

    def shown(self, value: float) -> str:
        """How the report names the value: ``-crf 24.5``, ``-b:v 5039k``."""
        return f"{self.option} {self.text(self.clamp(value))}"


def _ladder(kbps_at_23: int) -> Callable[[int], float]:
    return lambda q: int(kbps_at_23 * 2 ** ((23 - q) / 6))


#: The knob of each encoder family (the arguments its ``quality`` function writes, as a searchable range).
_CRF_KNOB = Knob("-crf", 0, 51, step=0.25)                       # x264 and x265 take fractional CRF
_SVT_KNOB = Knob("-crf", 0, 63, from_quality=lambda q: q * 1.5 + 3)
_QP_KNOB = Knob("-qp", 0, 51, to_args=lambda v: ["-rc_mode", "CQP", "-qp", f"{v:g}"])
_GLOBAL_QUALITY_KNOB = Knob("-global_quality", 1, 51)
_NVENC_KNOB = Knob("-cq", 0, 51, step=0.25, to_args=lambda v: ["-rc", "vbr", "-cq", f"{v:g}", "-b:v", "0"])
_NVMPI_KNOB = Knob("-b:v", 200, 100000, lower_is_better=False, step=1, log_scale=True, unit="k",
                   from_quality=_ladder(8000))
_V4L2_KNOB = Knob("-b:v", 200, 100000, lower_is_better=False, step=1, log_scale=True, unit="k",
                  from_quality=_ladder(6000))


_X264_PRESETS = {p: p for p in PRESETS}
_SVT_PRESETS = dict(zip(PRESETS, ("12", "11", "10", "9", "8", "7", "5", "4", "3")))
_NVENC_PRESETS = dict(zip(PRESETS, ("p1", "p1", "p2", "p3", "p3", "p4", "p5", "p6", "p7")))
_QSV_PRESETS = dict(zip(PRESETS, ("veryfast", "veryfast", "veryfast", "faster", "fast", "medium", "slow",
                                  "slower", "veryslow")))
_VAAPI_LEVELS = dict(zip(PRESETS, ("7", "7", "6", "5", "4", "4", "2", "1", "1")))


@dataclass(frozen=True)
class ProbeRecipe:
    """How to find out whether a backend works on a node (used by :mod:`montage_ray.probe`)."""

    devices: tuple[str, ...] = ()           # globs of device nodes, e.g. /dev/dri/renderD*
    devices_required: bool = True           # False: a missing node is reported, the encode still tried
    device_arg: bool = False                # the production command names the device ("{device}")
    vendors: tuple[str, ...] = ()           # PCI vendor ids a render node must have (QSV: Intel only)
    driver_env: str | None = None           # environment variable naming the user-space driver
    drivers: tuple[str, ...] = ()           # values to try for it, in order
    marker_files: tuple[str, ...] = ()      # files whose presence identifies the platform (Jetson)
    libraries: tuple[str, ...] = ()         # shared libraries the encoder loads at run time
    no_device_fix: str = ""                 # what to tell a user whose node has none of ``devices``


@dataclass(frozen=True)
class Backend:
    """One way of encoding: a row of :data:`BACKENDS`."""

    name: str
    resource: str | None                    # Ray custom resource; None = plain CPUs (num_cpus)
    encoders: Mapping[str, str]             # codec -> ffmpeg encoder
    quality: Mapping[str, Callable[[int], list[str]]]  # codec -> quality args
    presets: Mapping[str, tuple[str, Mapping[str, str]]] = field(default_factory=dict)  # codec -> (option, map)
    input_args: tuple[str, ...] = ()        # before -i; "{device}" is filled from the probe
    video_filter: str | None = None         # e.g. "format=nv12,hwupload"
    extra_args: tuple[str, ...] = ()        # after the encoder, for every codec
    hardware: bool = True
    sessions: int = 1                       # concurrent encodes one device should take
    probe: ProbeRecipe = ProbeRecipe()
    notes: str = ""
    alternatives: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # codec -> other encoders
    #                                         taking the same options, used where the build lacks the first
    h264_high: str = "high"                 # how this encoder's -profile:v spells H.264 High (segments of
    #                                         different encoders must share profile and level to join)
    default_fps: float = 60.0               # first guess of one session's frames/s at 1080p, before measuring
    # What one segment costs beyond its frames (the planner prices it: montage_ray.media.plan.choose_plan):
    # the part that grows with the encoder's cost per frame (start-up, lookahead, the extra keyframe), in
    # frames of its own encode per codec, and the part that does not (processes, device sessions), seconds
    overhead_frames: Mapping[str, float] = field(default_factory=dict)
    overhead_seconds: float = 0.3
    colour: str = "#8c8c8c"                 # its bars on the timeline
    hdr: Mapping[str, HdrCarry] = field(default_factory=dict)  # codec -> how HDR10 survives (absent: dropped)
    hdr_gap: str = ""                       # why the codecs without an entry cannot carry HDR10


    knobs: Mapping[str, Knob] = field(default_factory=dict)  # codec -> the knob a quality target turns

    def encoder_names(self, codec: str) -> tuple[str, ...]:
        """Every ffmpeg encoder that can serve ``codec`` on this backend, preferred first."""
        if codec not in self.encoders:
            return ()
        return (self.encoders[codec], *self.alternatives.get(codec, ()))

    def session_count(self, environ: Mapping[str, str] | None = None) -> int:
        """Concurrent encodes one device takes: ``$MONTAGE_<NAME>_SESSIONS``, else :attr:`sessions`."""
        environ = os.environ if environ is None else environ
        key = f"MONTAGE_{self.name.upper()}_SESSIONS"
        raw = environ.get(key, "").strip()
        if not raw:
            return self.sessions
        try:
            value = int(raw)
        except ValueError:
            raise ValueError(f"{key}={raw!r} is not a whole number of sessions") from None
        if value < 1:
            raise ValueError(f"{key}={raw!r}: a backend needs at least one session")
        return value

    def spec(self, codec: str, *, quality: int = 23, preset: str = "medium", threads: int = 0,
             device: str | None = None, env: Mapping[str, str] | None = None,
             label: str | None = None, standin_for: str | None = None,
             encoder: str | None = None) -> "EncoderSpec":
        """Resolve this backend for one job and node into an :class:`EncoderSpec`.

        ``encoder`` picks one of :meth:`encoder_names` (the probe passes the one this node's build has).
        """
        if codec not in self.encoders:
            raise KeyError(f"backend {self.name!r} has no encoder for codec {codec!r}")
        encoder = encoder or self.encoders[codec]
        if encoder not in self.encoder_names(codec):
            raise KeyError(f"backend {self.name!r} does not use encoder {encoder!r} for {codec!r}")
        args: list[str] = ["-c:v", encoder]
        if codec in self.presets:
            option, table = self.presets[codec]
            args += [option, table.get(preset, table["medium"])]
        quality_args = self.quality[codec](quality)
        args += quality_args
        if not self.hardware and threads:
            args += ["-threads", str(threads)]
        args += list(self.extra_args)
        input_args = tuple(a.replace("{device}", device or "") for a in self.input_args)
        resource = self.resource
        if standin_for is not None:
            resource = standin_for
        return EncoderSpec(
            backend=self.name, codec=codec, encoder=encoder, resource=resource,
            input_args=input_args, video_filter=self.video_filter, codec_args=tuple(args),
            env=dict(env or {}), threads=threads, device=device, standin_for=standin_for,
            h264_high=self.h264_high, quality_args=tuple(quality_args),
            label=label or (f"{standin_for} (stand-in: {encoder} on CPU)" if standin_for
                            else f"{self.name}:{encoder}"))


@dataclass(frozen=True)
class EncoderSpec:
    """Everything an encoder actor needs to encode segments: one backend, resolved for one job and node."""

    backend: str
    codec: str
    encoder: str
    resource: str | None
    input_args: tuple[str, ...]
    video_filter: str | None
    codec_args: tuple[str, ...]
    env: Mapping[str, str]
    threads: int
    device: str | None
    standin_for: str | None
    label: str
    h264_high: str = "high"
    copies: bool = False       # the pass-through stand-in: stream copy, no encode (see PASSTHROUGH)
    quality_args: tuple[str, ...] = ()  # the part of codec_args that sets the quality (a target replaces it)

    @property
    def is_standin(self) -> bool:
        """True when a CPU encoder serves a hardware label (tests, simulations)."""
        return self.standin_for is not None


BACKENDS: dict[str, Backend] = {b.name: b for b in (
    Backend(
        name="cpu", default_fps=25.0, colour="#4c72b0", resource=None, hardware=False,
        # scripts/bench_overhead.py, one thread, 16 side by side, 1080p: x264 veryfast 0.22 s at 26.6 fps,
        # x265 fast 1.36 s at 5.8 fps, SVT-AV1 preset 8 0.76 s at 13.1 fps; 720p x264 on 2 cores 0.12 s at
        # 100 fps: about 0.05 s of process starts plus 5, 8 and 9 frames' worth
        overhead_frames={"h264": 5.0, "hevc": 8.0, "av1": 9.0}, overhead_seconds=0.05,
        encoders={"h264": "libx264", "hevc": "libx265", "av1": "libsvtav1"},
        quality={"h264": _crf, "hevc": _crf, "av1": _svt_crf},
        knobs={"h264": _CRF_KNOB, "hevc": _CRF_KNOB, "av1": _SVT_KNOB},
        presets={"h264": ("-preset", _X264_PRESETS), "hevc": ("-preset", _X264_PRESETS),
                 "av1": ("-preset", _SVT_PRESETS)},
        hdr={"hevc": HdrCarry("params", _x265_hdr, "x265-params",
                              note="libx265: -x265-params master-display/max-cll (ffmpeg before 7.0 passes "
                                   "no side data to x265; later ones would, the explicit values agree)"),
             "av1": HdrCarry("params", _svt_hdr, "svtav1-params",
                             note="libsvtav1: -svtav1-params mastering-display/content-light (SVT-AV1 1.0+, "
                                  "ffmpeg 5.1+)")},
        hdr_gap="libx264 writes no mastering display or light level SEI",
        notes="Software encoders; always available where ffmpeg was built with them."),
    Backend(
        name="vaapi", default_fps=200.0, colour="#dd8452", resource="vaapi",
        encoders={"h264": "h264_vaapi", "hevc": "hevc_vaapi", "av1": "av1_vaapi"},
        quality={"h264": _qp, "hevc": _qp, "av1": _qp},
        knobs={"h264": _QP_KNOB, "hevc": _QP_KNOB, "av1": _QP_KNOB},
        presets={c: ("-compression_level", _VAAPI_LEVELS) for c in ("h264", "hevc", "av1")},
        input_args=("-vaapi_device", "{device}"), video_filter="format=nv12,hwupload",
        hdr={"hevc": HdrCarry("frames", video_filter="format=p010,hwupload",
                              note="hevc_vaapi writes mastering display and light level SEI from the frames' "
                                   "side data (its -sei option, hdr on by default); Main 10 from a p010 upload")},
        hdr_gap="h264_vaapi and av1_vaapi write no HDR10 metadata from FFmpeg (not verified on hardware)",
        probe=ProbeRecipe(devices=("/dev/dri/renderD*",), device_arg=True, driver_env="LIBVA_DRIVER_NAME",
                          drivers=("radeonsi", "iHD", "i965"), libraries=("libva.so.2", "libva-drm.so.2"),
                          no_device_fix="No render node (/dev/dri/renderD*): this machine has no GPU with a "
                                        "DRM driver (amdgpu, i915, xe), or the container was not given "
                                        "--device /dev/dri."),
        notes="AMD (radeonsi) and Intel (iHD/i965) GPUs through libva."),
    Backend(
        name="qsv", default_fps=200.0, colour="#8172b3", resource="qsv",
        encoders={"h264": "h264_qsv", "hevc": "hevc_qsv", "av1": "av1_qsv"},
        quality={"h264": _global_quality, "hevc": _global_quality, "av1": _global_quality},
        knobs={c: _GLOBAL_QUALITY_KNOB for c in ("h264", "hevc", "av1")},
        presets={c: ("-preset", _QSV_PRESETS) for c in ("h264", "hevc", "av1")},
        input_args=("-init_hw_device", "vaapi=va:{device}", "-init_hw_device", "qsv=qs@va",
                    "-filter_hw_device", "qs"),
        video_filter="format=nv12,hwupload=extra_hw_frames=64",
        hdr={"hevc": HdrCarry("frames", video_filter="format=p010,hwupload=extra_hw_frames=64",
                              note="hevc_qsv passes the frames' mastering display and light level side data "
                                   "to the runtime (QSV runtime 1.25+); Main 10 from a p010 upload")},
        hdr_gap="h264_qsv and av1_qsv write no HDR10 metadata from FFmpeg (not verified on hardware)",
        probe=ProbeRecipe(devices=("/dev/dri/renderD*",), device_arg=True, vendors=("0x8086",),
                          driver_env="LIBVA_DRIVER_NAME", drivers=("iHD", "i965"),
                          libraries=("libvpl.so.2", "libmfx.so.1", "libmfx-gen.so.1.2", "libmfxhw64.so.1"),
                          no_device_fix="No Intel render node: QSV needs an Intel GPU with the i915 or xe "
                                        "kernel driver (AMD and NVIDIA nodes serve VAAPI or NVENC); in Docker "
                                        "pass the Intel node with --device /dev/dri/renderDN."),
        notes="Intel Quick Sync, derived from the Intel render node's VAAPI device."),
    Backend(
        name="nvenc", default_fps=300.0, colour="#55a868", resource="nvenc",
        encoders={"h264": "h264_nvenc", "hevc": "hevc_nvenc", "av1": "av1_nvenc"},
        quality={"h264": _nvenc_cq, "hevc": _nvenc_cq, "av1": _nvenc_cq},
        knobs={c: _NVENC_KNOB for c in ("h264", "hevc", "av1")},
        presets={c: ("-preset", _NVENC_PRESETS) for c in ("h264", "hevc", "av1")},
        sessions=3,
        hdr_gap="hevc_nvenc and av1_nvenc write mastering display and light level only with NVENC SDK 13 "
                "headers (FFmpeg 7.1+) and only when the metadata is stream side data, which a segment "
                "(NUT, in-band SEI) never has: dropped",
        # WSL2 reaches the GPU through /dev/dxg with no /dev/nvidia*: a missing node is not decisive.
        probe=ProbeRecipe(devices=("/dev/nvidia[0-9]*", "/dev/dxg"), devices_required=False,
                          libraries=("libcuda.so.1", "libnvidia-encode.so.1"),
                          no_device_fix="No NVIDIA GPU is visible (no /dev/nvidia*, no /dev/dxg) and its "
                                        "driver is not loaded: run on a machine with an NVENC-capable GPU; in "
                                        "Docker use --gpus all with NVIDIA_DRIVER_CAPABILITIES=video,compute,"
                                        "utility."),
        notes="NVIDIA NVENC; GeForce drivers cap concurrent sessions (3, 5 or 8 by driver version), "
              "Tesla/datacenter cards take more: set MONTAGE_NVENC_SESSIONS."),
    Backend(
        name="nvmpi", default_fps=120.0, colour="#937860", resource="nvmpi",
        encoders={"h264": "h264_nvmpi", "hevc": "hevc_nvmpi"},
        alternatives={"h264": ("h264_nvv4l2",), "hevc": ("hevc_nvv4l2",)},
        quality={"h264": _nvmpi_q, "hevc": _nvmpi_q},
        knobs={"h264": _NVMPI_KNOB, "hevc": _NVMPI_KNOB},
        video_filter="format=yuv420p",      # both encoders take 8-bit yuv420p only
        hdr_gap="8-bit only: HDR cannot survive",
        probe=ProbeRecipe(devices=("/dev/nvhost-msenc", "/dev/v4l2-nvenc"),
                          marker_files=("/etc/nv_tegra_release",), libraries=("libnvmpi.so.1.0.0",),
                          no_device_fix="No Jetson encoder node (/dev/nvhost-msenc): nvmpi runs only on a "
                                        "Jetson with an encoder (the Orin Nano has none); in Docker use "
                                        "--runtime nvidia."),
        notes="Jetson multimedia encoder through the ffmpeg-nvmpi patches (or the nvv4l2 encoders of "
              "builds configured with --enable-nvv4l2)."),
    Backend(
        name="v4l2m2m", default_fps=60.0, colour="#da8bc3", resource="v4l2m2m",
        encoders={"h264": "h264_v4l2m2m"},
        quality={"h264": _v4l2_q},
        knobs={"h264": _V4L2_KNOB},
        h264_high="100",                     # no named profiles: the generic option takes the number
        video_filter="format=yuv420p",
        hdr_gap="H.264 at 8 bits only: HDR cannot survive",
        probe=ProbeRecipe(devices=("/dev/video*",),
                          no_device_fix="No V4L2 device (/dev/video*): on a Raspberry Pi 4 load bcm2835-codec "
                                        "(/dev/video11); the Raspberry Pi 5 has no hardware encoder: use the "
                                        "CPU backend."),
        notes="V4L2 mem2mem encoders (Raspberry Pi 4; the Pi 5 has no hardware encoder)."),
)}

#: Resource labels a node can offer for hardware encoders (every backend but the CPU one).
#: A STAND-IN that encodes nothing: it stream-copies each segment's packets, so that a benchmark measures
#: only what the driver does (cut, ship through the object store, join, verify) at any feed rate
#: (``scripts/bench_driver.py``). Not in :data:`BACKENDS`: never probed, never offered; only an encoders
#: config names it (``passthrough: true`` on a stand-in label), and its label says so everywhere.
PASSTHROUGH = Backend(
    name="passthrough", resource=None, hardware=False, default_fps=3000.0, colour="#c0c0c0", overhead_seconds=0.05,
    encoders={"h264": "copy", "hevc": "copy", "av1": "copy"},
    quality={"h264": lambda q: [], "hevc": lambda q: [], "av1": lambda q: []},
    notes="PASS-THROUGH stand-in (stream copy, no encode) for driver benchmarks; output keeps the source codec.")

#: How the pass-through stand-in names itself in logs, actor labels and reports.
PASSTHROUGH_LABEL = "{label} (PASS-THROUGH stand-in: stream copy, no encode)"

HARDWARE_LABELS = tuple(name for name, b in BACKENDS.items() if b.hardware)

#: The software backend, the one row that is not hardware: it runs on a node's CPU slots (whose label is its
#: name) and is what stands in for a hardware label in tests and simulations.
SOFTWARE = next(name for name, b in BACKENDS.items() if not b.hardware)


def backend_of(label: str, backend: str | None = None) -> str:
    """The backend that serves ``label``: the one its config names, else the backend of that name, else the
    software one."""
    return backend or (label if label in BACKENDS else SOFTWARE)


def is_hardware(backend: str) -> bool:
    """Whether ``backend`` (a :data:`BACKENDS` name) encodes on a device; a name not in the table counts as
    one (its segments are then checked in full: see :mod:`montage_ray.encoders.checks`)."""
    return BACKENDS[backend].hardware if backend in BACKENDS else backend != PASSTHROUGH.name


def segment_overhead(backend: str, codec: str) -> tuple[float, float]:
    """What one segment of ``codec`` costs on ``backend`` beyond its frames: (frames of its own encode,
    seconds); the hardware rows are first guesses (no device was measured), the CPU row is measured."""
    row = BACKENDS.get(backend) or (PASSTHROUGH if backend == PASSTHROUGH.name else None)
    return (0.0, Backend.overhead_seconds) if row is None else (row.overhead_frames.get(codec, 0.0), row.overhead_seconds)


def default_fps(label: str) -> float:
    """First guess of one session's frames/s at 1080p for a resource label (60 for a label not in the table)."""
    return BACKENDS[label].default_fps if label in BACKENDS else Backend.default_fps


def cpu_spec(codec: str = "h264", *, quality: int = 23, preset: str = "medium", threads: int = 1,
             standin_for: str | None = None) -> EncoderSpec:
    """The CPU backend resolved for a job; with ``standin_for`` it serves that hardware label."""
    return BACKENDS[SOFTWARE].spec(codec, quality=quality, preset=preset, threads=threads,
                                standin_for=standin_for)


#: Encoder options an encoders YAML may add (``extra_args``), besides :data:`COMMON_TUNING`: each
#: encoder's own tuning knobs, vetted from ``ffmpeg -h encoder=NAME``. Left out on purpose: options that
#: name files (``-stats``, ``-passlogfile``), load code (``-load_plugin``), or that montage-ray sets itself
#: so that segments join (``-profile``, ``-level``, ``-preset``, the quality knobs).
ENCODER_TUNING: dict[str, frozenset[str]] = {
    "libx264": frozenset({"-tune", "-x264-params", "-rc-lookahead", "-aq-mode", "-aq-strength", "-psy",
                          "-psy-rd", "-weightb", "-weightp", "-b-pyramid", "-mixed-refs", "-fast-pskip",
                          "-mbtree", "-deblock", "-partitions", "-direct-pred", "-me_method", "-motion-est",
                          "-coder", "-b_strategy", "-chromaoffset", "-noise_reduction", "-b-bias",
                          "-intra-refresh", "-forced-idr", "-aud", "-nal-hrd", "-cplxblur", "-crf_max"}),
    "libx265": frozenset({"-tune", "-x265-params", "-forced-idr"}),
    "libsvtav1": frozenset({"-svtav1-params", "-la_depth", "-hielevel", "-tier", "-sc_detection",
                            "-tile_columns", "-tile_rows"}),
    **{name: frozenset({"-low_power", "-idr_interval", "-b_depth", "-async_depth", "-max_frame_size",
                        "-rc_mode", "-aud", "-sei", "-coder", "-tier", "-tiles", "-quality"})
       for name in ("h264_vaapi", "hevc_vaapi", "av1_vaapi")},
    **{name: frozenset({"-async_depth", "-avbr_accuracy", "-avbr_convergence", "-forced_idr", "-low_power",
                        "-rdo", "-max_frame_size", "-max_slice_size", "-mbbrc", "-extbrc", "-adaptive_i",
                        "-adaptive_b", "-p_strategy", "-b_strategy", "-dblk_idc", "-look_ahead",
                        "-look_ahead_depth", "-idr_interval", "-gpb", "-tile_cols", "-tile_rows", "-aud"})
       for name in ("h264_qsv", "hevc_qsv", "av1_qsv")},
    **{name: frozenset({"-tune", "-rc", "-rc-lookahead", "-surfaces", "-gpu", "-delay", "-no-scenecut",
                        "-forced-idr", "-b_adapt", "-spatial-aq", "-spatial_aq", "-temporal-aq", "-temporal_aq",
                        "-zerolatency", "-nonref_p", "-strict_gop", "-aq-strength", "-weighted_pred",
                        "-b_ref_mode", "-multipass", "-dpb_size", "-tier", "-coder", "-aud"})
       for name in ("h264_nvenc", "hevc_nvenc", "av1_nvenc")},
    **{name: frozenset() for name in ("h264_nvmpi", "hevc_nvmpi", "h264_nvv4l2", "hevc_nvv4l2")},
    "h264_v4l2m2m": frozenset({"-num_output_buffers", "-num_capture_buffers"}),
}

#: Generic encoder options every backend takes (GOP and rate control), each with one value.
COMMON_TUNING = frozenset({"-g", "-bf", "-refs", "-keyint_min", "-sc_threshold", "-b:v", "-maxrate",
                           "-bufsize", "-qmin", "-qmax", "-qcomp"})

#: Keys inside ``-x264-params``/``-x265-params``/``-svtav1-params`` that read or write files.
FILE_PARAMS = frozenset({"stats", "qpfile", "cqmfile", "dump-yuv", "csv", "analysis-save", "analysis-load",
                         "analysis-reuse-file", "lambda-file", "scaling-list", "zonefile", "zones-file",
                         "dolby-vision-rpu", "recon", "fgs-table", "stat-file", "output-stat", "input",
                         "output", "passlogfile", "roi-map-file", "log-file", "pass", "slow-firstpass"})


def tuning_options(backend: str, codec: str | None = None) -> frozenset[str]:
    """Options an encoders YAML may pass to ``backend`` (for ``codec``, or for any codec it encodes)."""
    row = BACKENDS[backend]
    codecs = [codec] if codec else list(row.encoders)
    names = [n for c in codecs if c in row.encoders for n in row.encoder_names(c)]
    return COMMON_TUNING.union(*(ENCODER_TUNING.get(n, frozenset()) for n in names))
