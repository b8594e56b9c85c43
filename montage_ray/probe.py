"""What can this node encode with, honestly, and why not the rest.

A node's probe runs three stages for every backend of :data:`~montage_ray.backends.BACKENDS`, each ffmpeg
run under a hard timeout (a hung driver never hangs the node):

1. **build**: is the backend's encoder in ``ffmpeg -encoders``?
2. **device**: render nodes (``/dev/dri/renderD*``: present, openable by this user, whose GPU vendor),
   NVIDIA nodes, the Jetson markers, V4L2 mem2mem nodes.
3. **function**: a real tiny encode (a few 256x144 frames) through *exactly* the command production runs
   (:func:`montage_ray.segment_encode.build_command` with the backend's :class:`~montage_ray.backends.EncoderSpec`).
   VAAPI tries every render node x ``LIBVA_DRIVER_NAME`` pair and remembers the working pair *in the
   backend's status* (the process environment is never touched); QSV is derived from the Intel node.

Every unavailable backend carries a ``cause`` from :data:`CAUSES` and a ``fix`` sentence::

    from montage_ray.probe import probe_node

    node = probe_node()                   # cached for the life of the process; refresh=True probes again
    node.backends["vaapi"].available      # False
    node.backends["vaapi"].cause          # 'no-device'
    node.ray_resources()                  # {'vaapi': 1} where VAAPI works; {} on a CPU-only node
    spec = node.spec("cpu", "h264", quality=23, preset="fast", threads=2)

:func:`explain` is the diagnosis alone, a pure function of an ffmpeg stderr (the table is
:data:`DIAGNOSES`)::

    from montage_ray.probe import explain

    explain("[h264_nvenc @ 0x5586] Cannot load libcuda.so.1").cause    # 'driver-missing'
"""

from __future__ import annotations

import glob
import itertools
import grp
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any, Iterable, Mapping, Sequence

from montage_ray import ffmpeg_cli
from montage_ray.backends import BACKENDS, Backend, EncoderSpec
from montage_ray.errors import EncoderError, FFmpegError, FFmpegNotFound
from montage_ray.media import VideoInfo

#: The fixed vocabulary of reasons a backend is unavailable.
CAUSES = ("not-in-build", "no-device", "permission-denied", "driver-missing", "driver-too-old",
          "unsupported-hardware", "session-limit", "timeout", "crash", "unknown")

#: Seconds one probe ffmpeg run may take before it is killed (a hung driver counts as ``timeout``).
DEFAULT_TIMEOUT = 10.0

#: The test clip: small enough to cost nothing on a CPU, large enough for every hardware encoder's minimum.
TEST_SIZE = "256x144"
TEST_FRAMES = 5

#: The Ray node label key naming a node's backends (``montage.ai/encoder=vaapi-qsv``).
NODE_LABEL_KEY = "montage.ai/encoder"

#: PCI vendor ids of render nodes, and the VA drivers that serve each.
_VENDORS = {"0x1002": "AMD", "0x8086": "Intel", "0x10de": "NVIDIA"}
_VA_DRIVER_VENDOR = {"radeonsi": "0x1002", "iHD": "0x8086", "i965": "0x8086", "nvidia": "0x10de"}
_VA_DRIVER_PACKAGE = {"radeonsi": "mesa-va-drivers", "iHD": "intel-media-va-driver-non-free",
                      "i965": "i965-va-driver"}

#: Where shared libraries and VA drivers are looked for (plus $LD_LIBRARY_PATH and $LIBVA_DRIVERS_PATH).
_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu/tegra",
             "/usr/lib64", "/usr/lib", "/lib/x86_64-linux-gnu", "/lib64", "/lib", "/usr/local/lib",
             "/usr/lib/wsl/lib", "/usr/local/cuda/lib64", "/opt/intel/media/lib64", "/opt/ffmpeg/lib")


# ---------------------------------------------------------------------------------------------------
# Diagnosis: stderr -> cause, fix
# ---------------------------------------------------------------------------------------------------

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

    def search(self, text: str) -> re.Match[str] | None:
        return re.search(self.regex, text, re.IGNORECASE | re.MULTILINE)


_GROUP_FIX = ("add this user to the device's group (usually 'render', or 'video'): "
              "sudo usermod -aG render $USER and log in again; in Docker pass --device and --group-add "
              "with the group's id, in Kubernetes supplementalGroups")

#: The diagnosis table, most specific first: the first row that matches decides.
DIAGNOSES: tuple[Pattern, ...] = (
    # --- anything: permissions and missing encoders ---------------------------------------------------
    Pattern(r"/dev/\S+.*permission denied|permission denied.*/dev/\S+|"
            r"Could not open device '?/dev/\S+'? for reading and writing.*\n.*Permission denied",
            "permission-denied", "This user may not open the device node: " + _GROUP_FIX + "."),
    Pattern(r"Unknown encoder '([^']+)'|Encoder ([\w-]+) not found",
            "not-in-build", "This ffmpeg was built without the encoder: install a build that has it "
            "(VAAPI/QSV/NVENC: --enable-vaapi/--enable-libvpl/--enable-nvenc; Jetson: ffmpeg-nvmpi) "
            "or point MONTAGE_FFMPEG at one."),
    Pattern(r"Unrecognized option '(vaapi_device|init_hw_device|filter_hw_device|hwaccel_device)'",
            "not-in-build", "This ffmpeg has no hardware device support: install a build configured with "
            "--enable-vaapi (and --enable-libvpl for QSV) or point MONTAGE_FFMPEG at one."),

    # --- QSV (Intel Media SDK / oneVPL) ------------------------------------------------------------
    Pattern(r"Error creating a MFX session: -9|MFX_ERR_NOT_FOUND",
            "driver-missing", "The oneVPL loader found no QSV runtime for this GPU: install the GPU runtime "
            "(Debian/Ubuntu: libmfx-gen1.2 for Tiger Lake and newer, libmfx1 for older GPUs) and "
            "intel-media-va-driver-non-free, and derive QSV from the Intel render node.", "qsv"),
    Pattern(r"(?:Error (?:initializing|creating) an? (?:internal )?MFX session|"
            r"Error initializing an MFX session)[^\n]*(?:unsupported|-3\b)",
            "unsupported-hardware", "The QSV runtime found no Intel GPU it can use: QSV needs an Intel GPU "
            "(its render node passed to the container), Media SDK (libmfx1) for GPUs up to Ice Lake, "
            "oneVPL (libmfx-gen1.2) for Tiger Lake and newer.", "qsv"),
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
    Pattern(r"libva error: .*(?:init failed|failed to open|not found)|va_openDriver\(\) returns -?[1-9]|"
            r"Failed to initiali[sz]e VAAPI connection|vaInitialize failed",
            "driver-missing", "libva could not load a driver for this GPU: install mesa-va-drivers (AMD, "
            "radeonsi), intel-media-va-driver-non-free (Intel Broadwell and newer, iHD) or i965-va-driver "
            "(older Intel), and check `vainfo --display drm --device /dev/dri/renderD128`.", "vaapi"),
    Pattern(r"No VA display found for device|Failed to set value '\S*/dev/dri/\S*' for option|"
            r"Cannot open (?:the )?DRM (?:render )?(?:device|node)",
            "no-device", "The render node could not be opened: check it exists (ls -l /dev/dri); in Docker "
            "pass --device /dev/dri, and " + _GROUP_FIX + ".", "vaapi"),

    # --- V4L2 mem2mem (Raspberry Pi) and Jetson ------------------------------------------------------
    Pattern(r"\[\w+_v4l2m2m @ [^\]]*\] Could not find a valid device|v4l2m2m.*Could not find a valid device",
            "unsupported-hardware", "No V4L2 mem2mem device encodes this codec: the Raspberry Pi 5 has no "
            "hardware encoder (use the CPU backend); on a Pi 4 check /dev/video11 exists (bcm2835-codec) "
            "and that this user is in the 'video' group.", "v4l2m2m"),
    Pattern(r"Encoder requires yuv420p pixel format",
            "unsupported-hardware", "The V4L2 encoder only takes yuv420p: convert with format=yuv420p "
            "(montage-ray's v4l2m2m filter does).", "v4l2m2m"),
    Pattern(r"Could not open device '?/dev/nvhost-msenc|/dev/nvhost-msenc.*No such file|"
            r"/dev/v4l2-nvenc.*No such file|Cannot identify device '/dev/v4l2-nvenc'",
            "no-device", "The Jetson encoder node is missing: run on the Jetson itself (Orin Nano has no "
            "hardware encoder) and in Docker use --runtime nvidia with /dev/nvhost-msenc passed.", "nvmpi"),

    # --- generic -----------------------------------------------------------------------------------
    Pattern(r"Assertion .* failed at|Segmentation fault|core dumped|Aborted",
            "crash", "ffmpeg or the driver crashed: update the driver and ffmpeg; report the command shown "
            "by `montage-ray probe --verbose` upstream if it persists."),
    Pattern(r"Device creation failed|No device available for (?:en|de)coder|"
            r"A hardware (?:device|frames) reference is required",
            "no-device", "ffmpeg could not open the hardware device: check the device nodes and drivers "
            "with `montage-ray probe --verbose`."),
)

_ENCODER_BACKEND = {"vaapi": "vaapi", "qsv": "qsv", "nvenc": "nvenc", "nvmpi": "nvmpi", "nvv4l2": "nvmpi",
                    "v4l2m2m": "v4l2m2m"}
_CPU_ENCODERS = {enc for enc in BACKENDS["cpu"].encoders.values()}
_KEYWORD_BACKEND = ((r"vaapi|libva|VA display|/dev/dri", "vaapi"), (r"\bMFX\b|\bqsv\b|oneVPL", "qsv"),
                    (r"nvenc|libcuda|CUDA", "nvenc"), (r"nvmpi|nvhost|tegra|nvv4l2", "nvmpi"),
                    (r"v4l2", "v4l2m2m"))


def guess_backend(text: str) -> str | None:
    """The backend an ffmpeg log is about, from encoder names in it (``[h264_qsv @ ...]``) or keywords."""
    found = re.search(r"\b(?:h264|hevc|h265|av1|mjpeg|mpeg2|vp8|vp9)_(vaapi|qsv|nvenc|nvmpi|nvv4l2|v4l2m2m)\b",
                      text)
    if found:
        return _ENCODER_BACKEND[found.group(1)]
    if any(re.search(rf"\b{re.escape(enc)}\b", text) for enc in _CPU_ENCODERS):
        return "cpu"
    for regex, backend in _KEYWORD_BACKEND:
        if re.search(regex, text, re.IGNORECASE):
            return backend
    return None


def _line_of(text: str, match: re.Match[str]) -> str:
    start = text.rfind("\n", 0, match.start()) + 1
    end = text.find("\n", match.end())
    return ffmpeg_cli._CONTEXT_PREFIX.sub("", text[start:end if end >= 0 else len(text)].strip())


def explain(stderr: str, *, returncode: int | None = None, timed_out: bool = False,
            backend: str | None = None) -> Diagnosis:
    """Diagnose an ffmpeg failure from its stderr (and, when known, its exit status).

    A timeout is ``timeout`` and a death by signal is ``crash`` whatever was printed; otherwise the first
    row of :data:`DIAGNOSES` that matches decides, and ``unknown`` (with ffmpeg's last line) when none does.
    """
    backend = backend or guess_backend(stderr)
    last = ffmpeg_cli.last_error_line(stderr)
    if timed_out:
        return Diagnosis("timeout", "ffmpeg did not finish the test encode in time: a hung driver or GPU. "
                         "Check dmesg for GPU resets, update the driver, and probe again.", backend, last)
    if returncode is not None and returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return Diagnosis("crash", f"ffmpeg was killed by {name} during the test encode (a driver or encoder "
                         "bug, often an assertion): update the driver and ffmpeg, and report the command "
                         "from `montage-ray probe --verbose` upstream.", backend, last)
    for pattern in DIAGNOSES:
        match = pattern.search(stderr)
        if match:
            hinted = pattern.backend
            if pattern.cause == "not-in-build" and match.lastindex:
                hinted = guess_backend(match.group(match.lastindex)) or hinted
            return Diagnosis(pattern.cause, pattern.fix, hinted or backend, _line_of(stderr, match))
    return Diagnosis("unknown", "ffmpeg failed for a reason montage-ray does not recognise: read the line "
                     "shown and run `montage-ray probe --verbose` for the whole story.", backend, last)


# ---------------------------------------------------------------------------------------------------
# What the probe found
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DeviceNode:
    """A device node the device stage looked at."""

    path: str
    openable: bool                  # this user could open it read-write
    error: str = ""                 # why not (strerror)
    group: str | None = None        # its owning group
    vendor: str | None = None       # PCI vendor id of a render node (0x8086 = Intel)
    kernel_driver: str | None = None  # i915, xe, amdgpu, bcm2835-codec, ...
    name: str | None = None         # V4L2 card name, e.g. bcm2835-codec-encode

    def describe(self) -> str:
        bits = [self.path]
        if self.vendor:
            bits.append(f"{_VENDORS.get(self.vendor, self.vendor)} ({self.vendor})")
        if self.kernel_driver:
            bits.append(f"kernel driver {self.kernel_driver}")
        if self.name:
            bits.append(self.name)
        if self.group:
            bits.append(f"group {self.group}")
        bits.append("openable" if self.openable else f"NOT openable: {self.error}")
        return ", ".join(bits)


@dataclass(frozen=True)
class Attempt:
    """One function-stage test encode."""

    codec: str
    encoder: str
    device: str | None
    env: Mapping[str, str]
    ok: bool
    seconds: float
    command: tuple[str, ...]
    cause: str | None = None
    fix: str | None = None
    line: str = ""
    stderr: str = ""

    def shell(self) -> str:
        """The command as a user can paste it into a shell."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items())
        return (env + " " if env else "") + shlex.join(self.command)


@dataclass(frozen=True)
class BackendStatus:
    """What the probe found for one backend on this node."""

    name: str
    available: bool
    encoders: Mapping[str, str] = field(default_factory=dict)  # codec -> encoder that works (when available)
    device: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)        # e.g. {"LIBVA_DRIVER_NAME": "iHD"}
    cause: str | None = None
    fix: str | None = None
    detail: str = ""                                            # the line that decided it
    stderr: str = ""                                            # tail of the deciding run's stderr
    seconds: float = 0.0
    resource: str | None = None
    sessions: int = 0
    in_build: tuple[str, ...] = ()                              # this backend's encoders in the build
    devices: tuple[DeviceNode, ...] = ()
    attempts: tuple[Attempt, ...] = ()
    notes: tuple[str, ...] = ()                                 # facts for --verbose (drivers, libraries)

    @property
    def encoder(self) -> str | None:
        """The encoder to name in one word: the first that works, else the first in the build."""
        if self.encoders:
            return next(iter(self.encoders.values()))
        return self.in_build[0] if self.in_build else None

    def to_json(self) -> dict[str, Any]:
        return {"available": self.available, "encoder": self.encoder, "encoders": dict(self.encoders),
                "device": self.device, "env": dict(self.env), "cause": self.cause, "fix": self.fix,
                "detail": self.detail, "resource": self.resource,
                "sessions": self.sessions if self.available else 0, "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class NodeProbe:
    """Everything one node can encode with: a :class:`BackendStatus` per backend."""

    backends: Mapping[str, BackendStatus]
    ffmpeg: str
    hostname: str
    seconds: float = 0.0

    def ray_resources(self) -> dict[str, int]:
        """Ray custom resources for ``ray start --resources``: hardware label -> concurrent sessions."""
        return {status.resource: status.sessions for status in self.backends.values()
                if status.available and status.resource}

    def node_label(self) -> str:
        """The value of the ``montage.ai/encoder`` node label: hardware backends joined by '-', or 'cpu'."""
        hardware = [s.resource for s in self.backends.values() if s.available and s.resource]
        return "-".join(hardware) or "cpu"

    def spec(self, backend: str, codec: str, *, quality: int = 23, preset: str = "medium",
             threads: int = 0) -> EncoderSpec:
        """The :class:`EncoderSpec` for ``backend`` on this node, with the device and driver that worked."""
        status = self.backends.get(backend)
        if status is None:
            raise EncoderError(f"backend {backend!r} was not probed on {self.hostname} "
                               f"(known: {', '.join(BACKENDS)})")
        if not status.available:
            raise EncoderError(f"{backend} is not available on {self.hostname}: {status.cause}: {status.fix}")
        encoder = status.encoders.get(codec)
        if encoder is None:
            works = ", ".join(f"{c} ({e})" for c, e in status.encoders.items())
            raise EncoderError(f"{backend} on {self.hostname} cannot encode {codec}; it encodes {works}")
        return BACKENDS[backend].spec(codec, quality=quality, preset=preset, threads=threads,
                                      device=status.device, env=status.env, encoder=encoder)

    def to_json(self) -> dict[str, Any]:
        return {"hostname": self.hostname, "ffmpeg": self.ffmpeg, "seconds": round(self.seconds, 3),
                "ray_resources": self.ray_resources(), "node_label": self.node_label(),
                "backends": {name: status.to_json() for name, status in self.backends.items()}}


# ---------------------------------------------------------------------------------------------------
# Stage 1: build
# ---------------------------------------------------------------------------------------------------

_ENCODER_LINE = re.compile(r"^\s*V[A-Z.]{5}\s+(\S+)", re.MULTILINE)


def build_encoders(ffmpeg: str, *, timeout: float = DEFAULT_TIMEOUT) -> frozenset[str]:
    """The video encoders ``ffmpeg -encoders`` lists (raises :class:`FFmpegError` when it cannot say)."""
    done = ffmpeg_cli.run([ffmpeg, "-hide_banner", "-encoders"], timeout=timeout)
    return frozenset(m.group(1) for m in _ENCODER_LINE.finditer(done.stdout) if m.group(1) != "=")


# ---------------------------------------------------------------------------------------------------
# Stage 2: devices, drivers, libraries (the file system only: nothing runs)
# ---------------------------------------------------------------------------------------------------

def _under(root: str, path: str) -> str:
    return path if root in ("", "/") else os.path.join(root, path.lstrip("/"))


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _open_check(path: str) -> tuple[bool, str]:
    """Can this user open ``path`` read-write? (What libva and V4L2 do; opening a node is harmless.)"""
    try:
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    except OSError as err:
        return False, err.strerror or str(err)
    os.close(fd)
    return True, ""


def _group_of(path: str) -> str | None:
    try:
        gid = os.stat(path).st_gid
    except OSError:
        return None
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def device_nodes(patterns: Iterable[str], *, root: str = "/", open_check: bool = True) -> list[DeviceNode]:
    """Device nodes matching the glob ``patterns`` (under ``root``), with who may open them and what they are."""
    seen: list[str] = []
    for pattern in patterns:
        for path in sorted(glob.glob(_under(root, pattern))):
            if path not in seen:
                seen.append(path)
    nodes = []
    for path in seen:
        base = os.path.basename(path)
        vendor = kernel_driver = name = None
        if base.startswith("renderD") or base.startswith("card"):
            sys_dev = _under(root, f"/sys/class/drm/{base}/device")
            vendor = _read(os.path.join(sys_dev, "vendor"))
            link = os.path.join(sys_dev, "driver")
            kernel_driver = os.path.basename(os.readlink(link)) if os.path.islink(link) else None
        elif base.startswith("video"):
            name = _read(_under(root, f"/sys/class/video4linux/{base}/name"))
        ok, error = _open_check(path) if open_check else (os.access(path, os.R_OK | os.W_OK), "")
        if not ok and not error:
            error = "permission denied"
        nodes.append(DeviceNode(path, ok, error, _group_of(path), vendor, kernel_driver, name))
    return nodes


def _lib_dirs(root: str) -> list[str]:
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    for conf in sorted(glob.glob(_under(root, "/etc/ld.so.conf.d/*.conf"))):
        for line in (_read(conf) or "").splitlines():
            line = line.strip()
            if line.startswith("/"):
                dirs.append(_under(root, line))
    dirs += [_under(root, d) for d in _LIB_DIRS]
    return list(dict.fromkeys(dirs))


def find_library(name: str, *, root: str = "/") -> str | None:
    """Path of shared library ``name`` (e.g. ``libcuda.so.1``) in the usual places, or None."""
    for directory in _lib_dirs(root):
        candidate = os.path.join(directory, name)
        if os.path.exists(candidate):
            return candidate
    return None


def find_va_driver(driver: str, *, root: str = "/") -> str | None:
    """Path of the VA driver ``driver`` (``iHD`` -> ``.../dri/iHD_drv_video.so``), or None."""
    dirs = [d for d in os.environ.get("LIBVA_DRIVERS_PATH", "").split(":") if d]
    dirs += [os.path.join(d, "dri") for d in _lib_dirs(root)]
    for directory in dict.fromkeys(dirs):
        candidate = os.path.join(directory, f"{driver}_drv_video.so")
        if os.path.exists(candidate):
            return candidate
    return None


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _permission_fix(nodes: Sequence[DeviceNode]) -> str:
    node = nodes[0]
    if node.group and node.group != "root":
        return (f"{node.path} belongs to group '{node.group}' and user '{_user()}' cannot open it "
                f"({node.error}): sudo usermod -aG {node.group} {_user()} and log in again; in Docker add "
                f"--group-add $(getent group {node.group} | cut -d: -f3), in Kubernetes supplementalGroups.")
    return (f"user '{_user()}' cannot open {node.path} ({node.error}): give the node a group this user is "
            "in (a udev rule, or the container's --device / device plugin) and probe again.")


# ---------------------------------------------------------------------------------------------------
# Stage 3: function (one real encode through the production command)
# ---------------------------------------------------------------------------------------------------

#: The probe clip as production would see it: an 8-bit BT.709 source of the test size.
TEST_VIDEO = VideoInfo(index=0, codec="rawvideo", width=int(TEST_SIZE.split("x")[0]),
                       height=int(TEST_SIZE.split("x")[1]), pix_fmt="yuv420p", time_base=Fraction(1, 25),
                       frame_rate=Fraction(25), sar=None, rotation=0, color_range="tv", color_space="bt709",
                       color_transfer="bt709", color_primaries="bt709", frames=TEST_FRAMES, start=0.0)


def production_command(spec: EncoderSpec, ffmpeg: str, src: str, dst: str) -> list[str]:
    """The exact argument list production runs for ``spec`` (see :func:`montage_ray.segment_encode.build_command`)
    with the output options production adds (profile, level, pixel format, colours), on this probe's
    ffmpeg."""
    from montage_ray.segment_encode import build_command, video_output_args  # the one definition of an encode

    cmd = build_command(spec, src, dst, video_output_args(TEST_VIDEO, spec))
    cmd[0] = ffmpeg
    return cmd


def make_test_clip(ffmpeg: str, path: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Write the probe's source clip: a few frames of testsrc2 as raw yuv420p in NUT (no encoder needed)."""
    ffmpeg_cli.run([ffmpeg, "-hide_banner", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size={TEST_SIZE}:rate=25", "-frames:v", str(TEST_FRAMES), "-pix_fmt", "yuv420p",
                    "-c:v", "rawvideo", "-f", "nut", ffmpeg_cli.file_url(path)], timeout=timeout)


def try_encode(spec: EncoderSpec, *, ffmpeg: str, src: str, workdir: str, timeout: float,
               loglevel: str | None = None) -> Attempt:
    """Run one test encode of ``src`` with ``spec`` and say whether it worked and, if not, why."""
    dst = os.path.join(workdir, f"{spec.backend}-{spec.encoder}-{next(_serial)}.out")
    cmd = production_command(spec, ffmpeg, src, dst)
    if loglevel and "-v" in cmd:
        cmd[cmd.index("-v") + 1] = loglevel
    started = time.monotonic()
    base = dict(codec=spec.codec, encoder=spec.encoder, device=spec.device, env=dict(spec.env),
                command=tuple(cmd))
    try:
        done = ffmpeg_cli.run(cmd, timeout=timeout, check=False, env=spec.env or None)
    except FFmpegError as err:  # timed out
        diag = explain(err.stderr, timed_out=err.timed_out, returncode=err.returncode, backend=spec.backend)
        return Attempt(ok=False, seconds=time.monotonic() - started, cause=diag.cause, fix=diag.fix,
                       line=str(err), stderr=err.stderr, **base)
    finally:
        size = os.path.getsize(dst) if os.path.exists(dst) else 0
        if os.path.exists(dst):
            os.unlink(dst)
    stderr = ffmpeg_cli.tail(done.stderr)
    if done.returncode == 0 and size > 0:
        return Attempt(ok=True, seconds=done.seconds, stderr=stderr, **base)
    if done.returncode == 0:
        diag = explain(done.stderr, backend=spec.backend)
        if diag.cause == "unknown":
            diag = Diagnosis("unknown", "ffmpeg reported success but wrote no output: the encoder produced "
                             "no packets; run `montage-ray probe --verbose` and check the driver.",
                             spec.backend, "exited 0 with an empty output file")
    else:
        diag = explain(done.stderr, returncode=done.returncode, backend=spec.backend)
        if diag.cause == "crash" and not diag.line:
            diag = Diagnosis(diag.cause, diag.fix, diag.backend, ffmpeg_cli.describe_failure(done))
    return Attempt(ok=False, seconds=done.seconds, cause=diag.cause, fix=diag.fix,
                   line=diag.line or ffmpeg_cli.describe_failure(done), stderr=stderr, **base)


# ---------------------------------------------------------------------------------------------------
# One backend, all stages
# ---------------------------------------------------------------------------------------------------

#: When no candidate works, the attempt whose cause says the most is reported (earlier = more telling).
_serial = itertools.count()

_CAUSE_RANK = ("permission-denied", "driver-too-old", "session-limit", "unsupported-hardware", "crash",
               "timeout", "driver-missing", "no-device", "not-in-build", "unknown")


@dataclass
class _Plan:
    """Stage 1 and 2 results for one backend: either a final status or candidates to try."""

    backend: Backend
    codecs: list[tuple[str, str]]                       # (codec, encoder in build)
    candidates: list[tuple[str | None, dict[str, str]]]  # (device, env) to try, in order
    nodes: list[DeviceNode]
    notes: list[str]
    final: BackendStatus | None = None


def _status(backend: Backend, *, available: bool, in_build: Sequence[str] = (), nodes: Sequence[DeviceNode] = (),
            notes: Sequence[str] = (), **kw: Any) -> BackendStatus:
    return BackendStatus(name=backend.name, available=available, resource=backend.resource,
                         sessions=_sessions(backend), in_build=tuple(in_build), devices=tuple(nodes),
                         notes=tuple(notes), **kw)


def _sessions(backend: Backend) -> int:
    try:
        return backend.session_count()
    except ValueError:
        return backend.sessions


def _plan(backend: Backend, encoders: frozenset[str], *, root: str) -> _Plan:
    """Stages 1 and 2 for ``backend``: which encoders the build has, which devices and drivers to try."""
    recipe = backend.probe
    codecs = []
    for codec in backend.encoders:
        present = [e for e in backend.encoder_names(codec) if e in encoders]
        if present:
            codecs.append((codec, present[0]))
    in_build = [enc for _, enc in codecs]
    notes: list[str] = []
    plan = _Plan(backend, codecs, [], [], notes)
    if not codecs:
        names = ", ".join(e for c in backend.encoders for e in backend.encoder_names(c))
        plan.final = _status(backend, available=False, cause="not-in-build",
                             detail=f"`ffmpeg -encoders` lists none of {names}",
                             fix=f"This ffmpeg was built without {names}: install a build that has "
                                 f"{'it' if ',' not in names else 'one'} or point MONTAGE_FFMPEG at one.")
        return plan
    notes.append("in the build: " + ", ".join(in_build))

    for marker in recipe.marker_files:
        text = _read(_under(root, marker))
        notes.append(f"{marker}: " + ("absent" if text is None else f"present ({text.splitlines()[0][:80]})"
                                      if text else "present"))
    for lib in recipe.libraries:
        found = find_library(lib, root=root)
        notes.append(f"library {lib}: {found or 'not found'}")
    if recipe.driver_env:
        for driver in recipe.drivers:
            found = find_va_driver(driver, root=root)
            notes.append(f"VA driver {driver}: {found or 'not installed'}"
                         + ("" if found else f" (package {_VA_DRIVER_PACKAGE.get(driver, '?')})"))

    if not backend.hardware:
        plan.candidates = [(None, {})]
        return plan

    nodes = device_nodes(recipe.devices, root=root)
    plan.nodes = nodes
    for node in nodes:
        notes.append("device " + node.describe())
    if recipe.vendors:
        wrong = [n for n in nodes if n.vendor and n.vendor not in recipe.vendors]
        for node in wrong:
            notes.append(f"skipping {node.path}: {_VENDORS.get(node.vendor or '', node.vendor)} GPU, "
                         f"{backend.name} needs {', '.join(_VENDORS.get(v, v) for v in recipe.vendors)}")
        nodes = [n for n in nodes if n not in wrong]
    usable = [n for n in nodes if n.openable]
    if recipe.devices_required and not nodes:
        found = f" (only {', '.join(n.path for n in plan.nodes)})" if plan.nodes else ""
        plan.final = _status(backend, available=False, cause="no-device", in_build=in_build, nodes=plan.nodes,
                             notes=notes, detail=f"no {' or '.join(recipe.devices)}{found}",
                             fix=recipe.no_device_fix or f"No device node for {backend.name}.")
        return plan
    if recipe.devices_required and not usable:
        plan.final = _status(backend, available=False, cause="permission-denied", in_build=in_build,
                             nodes=plan.nodes, notes=notes, device=nodes[0].path,
                             detail=f"{nodes[0].path}: {nodes[0].error}", fix=_permission_fix(nodes))
        return plan

    if recipe.driver_env:
        for node in usable:
            drivers = sorted(recipe.drivers, key=lambda d: _VA_DRIVER_VENDOR.get(d) != node.vendor)
            plan.candidates += [(node.path, {recipe.driver_env: d}) for d in drivers]
    elif usable:  # the encoder finds its device itself; name the likeliest (a V4L2 "...-encode" node)
        preferred = sorted(usable, key=lambda n: not (n.name and "enc" in n.name.lower()))
        plan.candidates = [(preferred[0].path, {})]
    else:
        plan.candidates = [(None, {})]
    return plan


def _function_stage(plan: _Plan, *, ffmpeg: str, src: str, workdir: str, timeout: float,
                    loglevel: str | None, started: float) -> BackendStatus:
    backend = plan.backend
    attempts: list[Attempt] = []
    deadline = started + max(3 * timeout, 20.0)
    working: tuple[str | None, dict[str, str]] | None = None
    works: dict[str, str] = {}
    skipped = 0
    for device, env in plan.candidates:
        if time.monotonic() > deadline:
            skipped += 1
            continue
        found: dict[str, str] = {}
        for codec, encoder in plan.codecs:
            spec = backend.spec(codec, device=device, env=env, encoder=encoder, threads=1)
            attempt = try_encode(spec, ffmpeg=ffmpeg, src=src, workdir=workdir, timeout=timeout,
                                 loglevel=loglevel)
            attempts.append(attempt)
            if attempt.ok:
                found[codec] = encoder
            elif backend.hardware and not found and attempt.cause != "unsupported-hardware":
                break  # the device or driver fails as a whole: the next pair, not the next codec
        if found:
            working, works = (device, env), found
            break
    notes = list(plan.notes)
    if skipped:
        notes.append(f"{skipped} device/driver pair(s) not tried: the backend's probe ran past "
                     f"{max(3 * timeout, 20.0):g} s")
    seconds = time.monotonic() - started
    if working is not None:
        failed = [a for a in attempts if not a.ok and a.device == working[0] and dict(a.env) == working[1]]
        for a in failed:
            notes.append(f"{a.encoder} does not work with {a.device or 'this node'}: {a.cause}: {a.line}")
        return _status(backend, available=True, in_build=[e for _, e in plan.codecs], nodes=plan.nodes,
                       notes=notes, encoders=works, device=working[0], env=working[1], seconds=seconds,
                       attempts=tuple(attempts))
    best = min(attempts, key=lambda a: _CAUSE_RANK.index(a.cause or "unknown"))
    cause, fix = best.cause or "unknown", best.fix or ""
    # A missing driver on a machine without any of the backend's device nodes is first of all no device
    # (NVENC: "Cannot load libcuda.so.1" with no /dev/nvidia*): installing a driver would not help.
    if cause == "driver-missing" and not plan.nodes and backend.probe.devices and backend.probe.no_device_fix:
        cause, fix = "no-device", backend.probe.no_device_fix
    return _status(backend, available=False, in_build=[e for _, e in plan.codecs], nodes=plan.nodes,
                   notes=notes, cause=cause, fix=fix, detail=best.line, stderr=best.stderr,
                   device=best.device, env=best.env, seconds=seconds, attempts=tuple(attempts))


_DEVICE_CAUSES = ("no-device", "permission-denied")


def _reference_attempt(plan: _Plan, *, ffmpeg: str, src: str, workdir: str, timeout: float) -> Attempt:
    """The production command against the first node there would be (for --verbose only; decides nothing)."""
    codec, encoder = plan.codecs[0]
    device = plan.nodes[0].path if plan.nodes else plan.backend.probe.devices[0].replace("*", "128")
    env = {plan.backend.probe.driver_env: plan.backend.probe.drivers[0]} if plan.backend.probe.driver_env else {}
    spec = plan.backend.spec(codec, device=device, env=env, encoder=encoder, threads=1)
    return try_encode(spec, ffmpeg=ffmpeg, src=src, workdir=workdir, timeout=timeout, loglevel="verbose")


# ---------------------------------------------------------------------------------------------------
# The whole node
# ---------------------------------------------------------------------------------------------------

def run_probe(ffmpeg: str | None = None, *, timeout: float = DEFAULT_TIMEOUT,
              backends: Iterable[str] | None = None, root: str = "/", verbose: bool = False) -> NodeProbe:
    """Probe this node now (no cache): every stage for ``backends`` (default: all of them).

    ``root`` prefixes every device, /sys and library path (tests point it at a fake tree); ``verbose`` runs
    the test encodes with ``-v verbose`` so failures carry ffmpeg's whole account.
    """
    started = time.monotonic()
    ffmpeg = ffmpeg or ffmpeg_cli.ffmpeg()
    names = list(backends) if backends is not None else list(BACKENDS)
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise KeyError(f"unknown backend(s) {unknown} (known: {', '.join(BACKENDS)})")
    selected = [BACKENDS[n] for n in names]
    try:
        encoders = build_encoders(ffmpeg, timeout=timeout)
    except FFmpegNotFound:
        raise
    except FFmpegError as err:  # ffmpeg itself hangs or crashes: nothing on this node can encode
        diag = explain(err.stderr, returncode=err.returncode, timed_out=err.timed_out)
        statuses = {b.name: _status(b, available=False, cause=diag.cause, fix=diag.fix,
                                    detail=f"`{ffmpeg} -encoders` failed: {err}", stderr=err.stderr)
                    for b in selected}
        return NodeProbe(statuses, ffmpeg, socket.gethostname(), time.monotonic() - started)

    plans = [_plan(b, encoders, root=root) for b in selected]
    statuses: dict[str, BackendStatus] = {p.backend.name: p.final for p in plans if p.final is not None}
    pending = [p for p in plans if p.final is None]
    # --verbose: where no usable node stopped a backend before its test encode, still run the production
    # command once against the conventional first node, so the user sees ffmpeg's own words.
    shown = [p for p in plans if verbose and p.final is not None and p.final.cause in _DEVICE_CAUSES
             and p.backend.probe.device_arg and p.codecs] if verbose else []
    if pending or shown:
        with tempfile.TemporaryDirectory(prefix="montage-probe-") as workdir:
            src = os.path.join(workdir, "src.nut")
            try:
                make_test_clip(ffmpeg, src, timeout=timeout)
            except FFmpegError as err:
                diag = explain(err.stderr, returncode=err.returncode, timed_out=err.timed_out)
                for p in pending:
                    statuses[p.backend.name] = _status(
                        p.backend, available=False, cause=diag.cause, fix=diag.fix, notes=p.notes,
                        detail=f"could not make the test clip with lavfi: {err}", stderr=err.stderr)
                pending = []
            loglevel = "verbose" if verbose else None
            with ThreadPoolExecutor(max_workers=max(1, len(pending) + len(shown)),
                                    thread_name_prefix="probe") as pool:
                futures = {p.backend.name: pool.submit(_function_stage, p, ffmpeg=ffmpeg, src=src, workdir=workdir,
                                                       timeout=timeout, loglevel=loglevel,
                                                       started=time.monotonic())
                           for p in pending}
                references = {p.backend.name: pool.submit(_reference_attempt, p, ffmpeg=ffmpeg, src=src,
                                                          workdir=workdir, timeout=timeout) for p in shown}
                for name, future in futures.items():
                    statuses[name] = future.result()
                for name, future in references.items():
                    statuses[name] = replace(statuses[name], attempts=(future.result(),))
    ordered = {b.name: statuses[b.name] for b in selected}
    return NodeProbe(ordered, ffmpeg, socket.gethostname(), time.monotonic() - started)


_cache: dict[tuple[Any, ...], NodeProbe] = {}
_cache_locks: dict[tuple[Any, ...], threading.Lock] = {}
_cache_guard = threading.Lock()


def probe_node(ffmpeg: str | None = None, *, timeout: float = DEFAULT_TIMEOUT,
               backends: Iterable[str] | None = None, refresh: bool = False, root: str = "/",
               verbose: bool = False) -> NodeProbe:
    """This node's probe, run once per process and ffmpeg (``refresh=True`` probes again).

    Concurrent callers (encoder actors sharing a worker process) wait for one probe instead of each
    running their own. See :func:`run_probe` for the arguments.
    """
    path = ffmpeg or ffmpeg_cli.ffmpeg()
    key = (os.path.realpath(shutil.which(path) or path), tuple(backends) if backends is not None else None,
           root, verbose)
    with _cache_guard:
        lock = _cache_locks.setdefault(key, threading.Lock())
    with lock:
        if refresh or key not in _cache:
            _cache[key] = run_probe(path, timeout=timeout, backends=backends, root=root, verbose=verbose)
        return _cache[key]


def clear_cache() -> None:
    """Forget every cached probe (the next :func:`probe_node` probes again)."""
    with _cache_guard:
        _cache.clear()


# ---------------------------------------------------------------------------------------------------
# The story for a human (--verbose, scripts/diagnose-qsv.sh)
# ---------------------------------------------------------------------------------------------------

def vainfo_report(node: str, driver: str, *, timeout: float = DEFAULT_TIMEOUT) -> str:
    """What ``vainfo`` says of ``node`` with ``LIBVA_DRIVER_NAME=driver`` (empty when vainfo is missing)."""
    vainfo = shutil.which("vainfo")
    if vainfo is None:
        return ""
    try:
        done = ffmpeg_cli.run([vainfo, "--display", "drm", "--device", node], timeout=timeout, check=False,
                              env={"LIBVA_DRIVER_NAME": driver})
    except FFmpegError as err:
        return f"vainfo did not finish: {err}"
    text = (done.stdout + done.stderr).strip().splitlines()
    keep = [line for line in text if re.search(r"driver version|vainfo:|error|Enc|failed|returns", line, re.I)]
    return "\n".join(keep[:24]) + (f"\n(vainfo exit status {done.returncode})" if done.returncode else "")


def story(status: BackendStatus, *, vainfo: bool = True, timeout: float = DEFAULT_TIMEOUT) -> str:
    """Everything the probe knows about one backend, as text a user can read top to bottom."""
    lines = [f"== {status.name}: {'AVAILABLE' if status.available else 'unavailable'}"
             + (f" ({status.cause})" if status.cause else "")]
    if status.available:
        lines.append(f"   encoders: {', '.join(f'{c}={e}' for c, e in status.encoders.items())}")
        if status.device:
            lines.append(f"   device: {status.device}")
        if status.env:
            lines.append(f"   environment: {' '.join(f'{k}={v}' for k, v in status.env.items())}")
        if status.resource:
            lines.append(f"   Ray resource: {status.resource}={status.sessions}")
    for note in status.notes:
        lines.append(f"   - {note}")
    if vainfo and status.name in ("vaapi", "qsv"):
        for node in status.devices:
            if not node.openable:
                continue
            for driver in BACKENDS[status.name].probe.drivers:
                report = vainfo_report(node.path, driver, timeout=timeout)
                if report:
                    lines.append(f"   vainfo {node.path} LIBVA_DRIVER_NAME={driver}:")
                    lines += [f"     {line}" for line in report.splitlines()]
    for attempt in status.attempts:
        verdict = "ok" if attempt.ok else f"FAILED: {attempt.cause}"
        lines.append(f"   test {attempt.encoder} on {attempt.device or 'this node'}"
                     + (f" with {' '.join(f'{k}={v}' for k, v in attempt.env.items())}" if attempt.env else "")
                     + f" ({attempt.seconds:.2f} s): {verdict}")
        if not attempt.ok:
            lines.append(f"     $ {attempt.shell()}")
            for line in attempt.stderr.strip().splitlines()[-12:]:
                lines.append(f"     | {line}")
    if not status.available:
        if status.detail:
            lines.append(f"   cause: {status.cause}: {status.detail}")
        lines.append(f"   fix: {status.fix}")
    return "\n".join(lines)
