"""Diagnosis: an ffmpeg stderr -> a cause from :data:`CAUSES` and what to do. Pure functions and a table.

Each row of :data:`DIAGNOSES` is a regular expression over ffmpeg's stderr; the first row that matches
decides. :func:`explain` adds what the exit status says (a signal is ``crash``, a timeout ``timeout``)::

    from montage_ray.probe.diagnose import explain

    explain("[h264_nvenc @ 0x5586] Cannot load libcuda.so.1").cause    # 'driver-missing'
    explain("Unrecognized option 'fps_mode'.").cause                   # 'ffmpeg-version'

:func:`explain_log` diagnoses a log file of any size from a bounded tail of it (``probe --explain``).
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass
from typing import Any

from montage_ray.ffmpeg import tool
from montage_ray.encoders.backends import BACKENDS

#: The fixed vocabulary of reasons a backend is unavailable.
CAUSES = ("not-in-build", "no-device", "permission-denied", "driver-missing", "driver-too-old",
          "unsupported-hardware", "session-limit", "ffmpeg-version", "timeout", "crash", "unknown")


@dataclass(frozen=True)
class Diagnosis:
    """Why an encode failed: a cause from :data:`CAUSES`, what to do, and the line that told us."""

    cause: str
    fix: str
    backend: str | None = None
    line: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"cause": self.cause, "fix": self.fix, "backend": self.backend, "line": self.line}


@dataclass(frozen=True)
class Pattern:
    """One row of :data:`DIAGNOSES`: a regular expression over ffmpeg's stderr and what it means."""

    regex: str
    cause: str
    fix: str
    backend: str | None = None
    explain_fix: str | None = None    # "version": the fix names the option and the oldest ffmpeg having it

    def search(self, text: str) -> re.Match[str] | None:
        return re.search(self.regex, text, re.IGNORECASE | re.MULTILINE)


_GROUP_FIX = ("add this user to the device's group (usually 'render', or 'video'): "
              "sudo usermod -aG render $USER and log in again; in Docker pass --device and --group-add "
              "with the group's id, in Kubernetes supplementalGroups")

#: The diagnosis table, most specific first: the first row that matches decides.
DIAGNOSES: tuple[Pattern, ...] = (
    # --- anything: permissions and missing encoders ---------------------------------------------------
    Pattern(r"/dev/[^\s/]{1,64}(?:/[^\s/]{1,64}){0,4}[^\n]{0,200}?permission denied|"
            r"permission denied[^\n]{0,200}?/dev/\w|"
            r"Could not open device '?/dev/[^\s']{1,200}'? for reading and writing[^\n]{0,200}\n[^\n]{0,200}?"
            r"Permission denied",
            "permission-denied", "This user may not open the device node: " + _GROUP_FIX + "."),
    Pattern(r"Unknown encoder '([^']+)'|Encoder ([\w-]+) not found",
            "not-in-build", "This ffmpeg was built without the encoder: install a build that has it "
            "(VAAPI/QSV/NVENC: --enable-vaapi/--enable-libvpl/--enable-nvenc; Jetson: ffmpeg-nvmpi) "
            "or point MONTAGE_FFMPEG at one."),
    Pattern(r"Unrecognized option '(vaapi_device|init_hw_device|filter_hw_device|hwaccel_device)'",
            "not-in-build", "This ffmpeg has no hardware device support: install a build configured with "
            "--enable-vaapi (and --enable-libvpl for QSV) or point MONTAGE_FFMPEG at one."),

    # --- this ffmpeg spells an option differently (or lacks it) ---------------------------------------
    Pattern(r"Unrecognized option '([\w:-]{1,60})'|Option ([\w:-]{1,60}) not found|"
            r"Invalid time base: ?(\S{1,40})|Unknown bitstream filter (\w{1,40})|"
            r"Error splitting the argument list: Option not found",
            "ffmpeg-version", "This ffmpeg does not take an option montage-ray gave it.", explain_fix="version"),

    # --- QSV (Intel Media SDK / oneVPL) ------------------------------------------------------------
    Pattern(r"Error creating a MFX session: -9|MFX_ERR_NOT_FOUND",
            "driver-missing", "The oneVPL loader found no QSV runtime for this GPU: install the GPU runtime "
            "(Debian/Ubuntu: libmfx-gen1.2 for Tiger Lake and newer, libmfx1 for older GPUs) and "
            "intel-media-va-driver-non-free, and derive QSV from the Intel render node.", "qsv"),
    Pattern(r"(?:Error (?:initializing|creating) an? (?:internal )?MFX session|"
            r"Error initializing an MFX session)[^\n]{0,200}?(?:unsupported|-3\b)",
            "no-device", "The QSV runtime found no Intel GPU: QSV needs an Intel GPU with the i915 or xe "
            "kernel driver (its render node passed to the container). Where there is one, its generation needs "
            "the matching runtime: Media SDK (libmfx1) up to Ice Lake, oneVPL (libmfx-gen1.2) from Tiger Lake.",
            "qsv"),
    Pattern(r"Error (?:initializing|creating) an? (?:internal )?MFX session|Error loading MFX|"
            r"libmfx\S*\.so\S*: cannot open|libvpl\S*\.so\S*: cannot open|Failed to load the libmfx",
            "driver-missing", "The QSV runtime could not start: install libvpl2 with libmfx-gen1.2 (or "
            "libmfx1 on GPUs up to Ice Lake) and intel-media-va-driver-non-free.", "qsv"),
    Pattern(r"Error during set display handle|Failed to create a VAAPI device for QSV",
            "driver-missing", "QSV could not open its VAAPI display: install intel-media-va-driver-non-free "
            "(iHD) and check `vainfo --display drm --device /dev/dri/renderD128` on the Intel node.", "qsv"),
    Pattern(r"Current (?:profile|codec type|pixel format|frame rate|picture structure) is unsupported|"
            r"Selected ratecontrol mode is (?:unsupported|not supported)|Low power mode is unsupported",
            "unsupported-hardware", "This Intel GPU cannot encode with these settings (codec, profile or "
            "rate control): use another codec on QSV, or VAAPI/CPU for this one.", "qsv"),

    # --- NVENC -------------------------------------------------------------------------------------
    Pattern(r"Driver does not support the required nvenc API version|"
            r"minimum required Nvidia driver for nvenc|CUDA_ERROR_INSUFFICIENT_DRIVER|"
            r"cudaErrorInsufficientDriver|CUDA driver version is insufficient",
            "driver-too-old", "The NVIDIA driver is older than this ffmpeg's NVENC API: update the driver "
            "(the message names the minimum), or use an ffmpeg built with older nv-codec-headers.", "nvenc"),
    Pattern(r"OpenEncodeSessionEx failed: out of memory|incompatible client key|"
            r"NV_ENC_ERR_OUT_OF_MEMORY|too many (?:concurrent )?(?:encod\w* )?sessions",
            "session-limit", "The GPU refused another NVENC session (GeForce drivers cap concurrent "
            "sessions): lower MONTAGE_NVENC_SESSIONS to what the driver allows, stop other NVENC users, or "
            "use a datacenter card.", "nvenc"),
    Pattern(r"OpenEncodeSessionEx failed: unsupported device|No (?:NVENC )?capable devices found|"
            r"Provided device doesn't support required NVENC features|"
            r"NVENC (?:is )?not (?:available|supported)|Codec not supported",
            "unsupported-hardware", "This NVIDIA GPU has no NVENC engine for this codec (e.g. GT 1030, A100, "
            "AV1 before Ada): use another codec, another GPU, or the CPU backend.", "nvenc"),
    Pattern(r"CUDA_ERROR_NO_DEVICE|no CUDA-capable device is detected",
            "no-device", "No NVIDIA GPU is visible: check nvidia-smi; in Docker run with --gpus all "
            "(NVIDIA_DRIVER_CAPABILITIES must include video), in Kubernetes use the nvidia runtime class.",
            "nvenc"),
    Pattern(r"CUDA_ERROR_SYSTEM_DRIVER_MISMATCH|Driver/library version mismatch",
            "driver-too-old", "libcuda and the loaded NVIDIA kernel module differ: reboot (or reload the "
            "module) after a driver update.", "nvenc"),
    Pattern(r"Cannot load (libcuda\.so\S*|libnvidia-encode\.so\S*|nvcuda\.dll|nvEncodeAPI\S*)",
            "driver-missing", "The NVIDIA driver libraries are missing: install the driver (libcuda1, "
            "libnvidia-encode1); in Docker run with --gpus all and NVIDIA_DRIVER_CAPABILITIES=video,compute,"
            "utility.", "nvenc"),

    # --- VAAPI -------------------------------------------------------------------------------------
    Pattern(r"has no function __vaDriverInit_|VA-API version mismatch|incompatible VA-API version",
            "driver-too-old", "The VA driver does not match libva's version: update libva and the driver "
            "together (mesa-va-drivers / intel-media-va-driver-non-free).", "vaapi"),
    Pattern(r"No usable encoding (?:entrypoint|profile) found|Encoding entrypoint not found|"
            r"does not support (?:any )?(?:RC mode|rate control)|VA_STATUS_ERROR_UNSUPPORTED_PROFILE",
            "unsupported-hardware", "This GPU (with this VA driver) cannot encode this codec: check the "
            "EncSlice entries of `vainfo`, try the other Intel driver (iHD/i965), another codec, or the CPU "
            "backend.", "vaapi"),
    Pattern(r"libva error: [^\n]{0,300}?(?:init failed|failed to open|not found|cannot open shared object)|"
            r"libva error: dlopen of \S+ failed|va_openDriver\(\) returns -?[1-9]|"
            r"Failed to initiali[sz]e VAAPI connection|vaInitialize failed",
            "driver-missing", "libva could not load a driver for this GPU: install mesa-va-drivers (AMD, "
            "radeonsi), intel-media-va-driver-non-free (Intel Broadwell and newer, iHD) or i965-va-driver "
            "(older Intel), and check `vainfo --display drm --device /dev/dri/renderD128`.", "vaapi"),
    Pattern(r"No VA display found for device|Failed to set value '\S*/dev/dri/\S*' for option|"
            r"Cannot open (?:the )?DRM (?:render )?(?:device|node)",
            "no-device", "The render node could not be opened: check it exists (ls -l /dev/dri); in Docker "
            "pass --device /dev/dri, and " + _GROUP_FIX + ".", "vaapi"),

    # --- V4L2 mem2mem (Raspberry Pi) and Jetson ------------------------------------------------------
    Pattern(r"\[\w{1,40}_v4l2m2m @ [^\]\n]{0,40}\] Could not find a valid device|"
            r"v4l2m2m[^\n]{0,200}?Could not find a valid device",
            "no-device", "No V4L2 mem2mem device encodes this codec: the Raspberry Pi 5 has no "
            "hardware encoder (use the CPU backend); on a Pi 4 check /dev/video11 exists (bcm2835-codec) "
            "and that this user is in the 'video' group.", "v4l2m2m"),
    Pattern(r"Encoder requires yuv420p pixel format",
            "unsupported-hardware", "The V4L2 encoder only takes yuv420p: convert with format=yuv420p "
            "(montage-ray's v4l2m2m filter does).", "v4l2m2m"),
    Pattern(r"Could not open device '?/dev/nvhost-msenc|/dev/nvhost-msenc[^\n]{0,200}?No such file|"
            r"/dev/v4l2-nvenc[^\n]{0,200}?No such file|Cannot identify device '/dev/v4l2-nvenc'",
            "no-device", "The Jetson encoder node is missing: run on the Jetson itself (Orin Nano has no "
            "hardware encoder) and in Docker use --runtime nvidia with /dev/nvhost-msenc passed.", "nvmpi"),

    # --- generic -----------------------------------------------------------------------------------
    Pattern(r"Assertion [^\n]{0,300}? failed|Segmentation fault|core dumped|Aborted",
            "crash", "ffmpeg or the driver crashed: update the driver and ffmpeg; report the command shown "
            "by `montage-ray probe --verbose` upstream if it persists."),
    Pattern(r"Device creation failed|No device available for (?:en|de)coder|"
            r"A hardware (?:device|frames) reference is required",
            "no-device", "ffmpeg could not open the hardware device: check the device nodes and drivers "
            "with `montage-ray probe --verbose`."),
)

#: From the backend table: a hardware encoder's family (``h264_nvv4l2`` -> ``nvv4l2``) -> its backend, and
#: each software encoder (``libx265``) -> its backend.
_ENCODER_BACKEND = {enc.split("_", 1)[1]: b.name for b in BACKENDS.values() if b.hardware
                    for codec in b.encoders for enc in b.encoder_names(codec)}
_SOFTWARE_ENCODERS = {enc: b.name for b in BACKENDS.values() if not b.hardware for codec in b.encoders
                      for enc in b.encoder_names(codec)}
#: ``[h264_qsv @ 0x...]``: a hardware encoder of any codec ffmpeg has, named in a log
_HARDWARE_ENCODER = re.compile(r"\b(?:h264|hevc|h265|av1|mjpeg|mpeg2|vp8|vp9)_("
                               + "|".join(sorted(_ENCODER_BACKEND, key=len, reverse=True)) + r")\b")
_KEYWORD_BACKEND = ((r"vaapi|libva|VA display|/dev/dri", "vaapi"), (r"\bMFX\b|\bqsv\b|oneVPL", "qsv"),
                    (r"nvenc|libcuda|CUDA", "nvenc"), (r"nvmpi|nvhost|tegra|nvv4l2", "nvmpi"),
                    (r"v4l2", "v4l2m2m"))


def guess_backend(text: str) -> str | None:
    """The backend an ffmpeg log is about, from encoder names in it (``[h264_qsv @ ...]``) or keywords."""
    found = _HARDWARE_ENCODER.search(text)
    if found:
        return _ENCODER_BACKEND[found.group(1)]
    software = next((b for enc, b in _SOFTWARE_ENCODERS.items() if re.search(rf"\b{re.escape(enc)}\b", text)), None)
    if software:
        return software
    for regex, backend in _KEYWORD_BACKEND:
        if re.search(regex, text, re.IGNORECASE):
            return backend
    return None


def _line_of(text: str, match: re.Match[str]) -> str:
    start = text.rfind("\n", 0, match.start()) + 1
    end = text.find("\n", match.end())
    return tool.strip_context(text[start:end if end >= 0 else len(text)])


def _first_match(stderr: str) -> tuple[Pattern, re.Match[str]] | None:
    for pattern in DIAGNOSES:
        match = pattern.search(stderr)
        if match:
            return pattern, match
    return None


def version_fix(match: re.Match[str]) -> str:
    """The fix for an option this ffmpeg does not take: which feature, and the oldest ffmpeg that has it."""
    from montage_ray.ffmpeg.caps import OLDEST_SUPPORTED, SINCE

    option = next((g for g in match.groups() if g), "") if match.lastindex else ""
    name = option.split(":")[0].lstrip("-")
    if match.group(0).lower().startswith("invalid time base"):
        feature = (f"-enc_time_base {option}: ffmpeg 9.0 and newer take only 'demux' (7.0 and newer take it), "
                   "4.x to 8.x take -1")
    elif name in SINCE:
        feature = f"-{name}: ffmpeg {SINCE[name]} and newer have it"
    elif option:
        feature = f"{option}: an option this ffmpeg does not know"
    else:
        feature = "an option this ffmpeg does not know (the line before names it)"
    return (f"This ffmpeg does not take {feature}. montage-ray spells each option for the ffmpeg of the node "
            f"that runs it (oldest supported: {OLDEST_SUPPORTED}); if this came from montage-ray, probe the "
            "node again (`montage-ray probe`) or install a newer ffmpeg.")


def explain(stderr: str, *, returncode: int | None = None, timed_out: bool = False,
            backend: str | None = None) -> Diagnosis:
    """Diagnose an ffmpeg failure from its stderr (and, when known, its exit status).

    A timeout is ``timeout``; a death by signal is ``crash`` unless the log shows a missing driver library
    (libva aborting because its driver is not installed is ``driver-missing``); otherwise the first row of
    :data:`DIAGNOSES` that matches decides, and ``unknown`` (with ffmpeg's last line) when none does.
    """
    backend = backend or guess_backend(stderr)
    last = tool.last_error_line(stderr)
    if timed_out:
        return Diagnosis("timeout", "ffmpeg did not finish the test encode in time: a hung driver or GPU. "
                         "Check dmesg for GPU resets, update the driver, and probe again.", backend, last)
    found = _first_match(stderr)
    killed = returncode is not None and returncode < 0
    if killed and not (found and found[0].cause == "driver-missing"):
        try:
            name = signal.Signals(-returncode).name  # type: ignore[operator]
        except ValueError:
            name = f"signal {-returncode}"  # type: ignore[operator]
        return Diagnosis("crash", f"ffmpeg was killed by {name} during the test encode (a driver or encoder "
                         "bug, often an assertion): update the driver and ffmpeg, and report the command "
                         "from `montage-ray probe --verbose` upstream.", backend, last)
    if found:
        pattern, match = found
        hinted = pattern.backend
        if pattern.cause == "not-in-build" and match.lastindex:
            hinted = guess_backend(match.group(match.lastindex)) or hinted
        fix = version_fix(match) if pattern.explain_fix == "version" else pattern.fix
        return Diagnosis(pattern.cause, fix, hinted or backend, _line_of(stderr, match))
    return Diagnosis("unknown", "ffmpeg failed for a reason montage-ray does not recognise: read the line "
                     "shown and run `montage-ray probe --verbose` for the whole story.", backend, last)


#: How much of a log ``probe --explain`` reads: its end, where ffmpeg says what went wrong.
LOG_TAIL_BYTES = 256 * 1024
#: Longest line kept (the rest of a longer line is cut): no regular expression sees a longer one.
LOG_LINE_CHARS = 2000

# Terminal escape sequences (CSI, OSC, other ESC sequences) and control characters but tab and newline.
_ESCAPES = re.compile(r"\x1b\[[0-?]{0,64}[ -/]{0,8}[@-~]|\x1b\][^\x07\x1b]{0,4096}(?:\x07|\x1b\\)?|\x1b[@-_]?|"
                      r"\x9b[0-?]{0,64}[ -/]{0,8}[@-~]|[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean_log(text: str) -> str:
    """``text`` without terminal escape sequences or control characters, every line cut to
    :data:`LOG_LINE_CHARS` (so that printing it cannot drive a terminal and matching it stays linear)."""
    text = _ESCAPES.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return "\n".join(line[:LOG_LINE_CHARS] for line in text.split("\n"))


def read_log_tail(path: str | None, *, limit: int = LOG_TAIL_BYTES) -> str:
    """The last ``limit`` bytes of the log at ``path`` (``None`` = stdin), decoded and cleaned
    (:func:`clean_log`)."""
    import sys

    if path is None:
        data = b""
        while chunk := sys.stdin.buffer.read(1 << 20):  # a pipe cannot seek: keep only the last `limit` bytes
            data = (data + chunk)[-limit:]
    else:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - limit))
            data = fh.read(limit)
    return clean_log(data.decode("utf-8", errors="replace"))


def explain_log(path: str | None, **kwargs) -> Diagnosis:
    """:func:`explain` of a log file of any size, from its bounded, cleaned tail (:func:`read_log_tail`)."""
    return explain(read_log_tail(path), **kwargs)
