"""The staged probe of one node: build (``-encoders``), devices, function (a real tiny encode through the
production command), for every backend of :data:`~montage_ray.encoders.backends.BACKENDS`; and what this node's
ffmpeg can do (:class:`~montage_ray.ffmpeg.caps.FFmpegCaps`), which travels with the :class:`NodeProbe`::

    from montage_ray.probe.node import probe_node

    node = probe_node()
    node.caps.version, node.backends["cpu"].available   # '5.1.6', True
"""

from __future__ import annotations

import itertools
import os
import shlex
import shutil
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any, Iterable, Mapping, Sequence
import re

from montage_ray.ffmpeg import commands
from montage_ray.ffmpeg import tool
from montage_ray.encoders.backends import BACKENDS, Backend, EncoderSpec
from montage_ray.encoders.quality import support as metric_support
from montage_ray.ffmpeg.caps import OLDEST_SUPPORTED, FFmpegCaps, ffmpeg_caps
from montage_ray.errors import EncoderError, FFmpegError, FFmpegNotFound
from montage_ray.media.info import VideoInfo
from montage_ray.probe.devices import (VA_DRIVER_PACKAGE, VA_DRIVER_VENDOR, VENDORS, DeviceNode, permission_fix,
                                       read_text, under, device_nodes, find_library, find_va_driver)
from montage_ray.probe.diagnose import Diagnosis, explain

#: Seconds one probe ffmpeg run may take before it is killed (a hung driver counts as ``timeout``).
DEFAULT_TIMEOUT = 10.0

#: The test clip: small enough to cost nothing on a CPU, large enough for every hardware encoder's minimum.
TEST_SIZE = "256x144"
TEST_FRAMES = 5

#: The Ray node label key naming a node's backends (``montage.ai/encoder=vaapi-qsv``).
NODE_LABEL_KEY = "montage.ai/encoder"


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
    caps: FFmpegCaps | None = None      # what this node's ffmpeg can do; its actors spell commands with it

    def ffmpeg_diagnoses(self) -> list[Diagnosis]:
        """What this ffmpeg's version changes, as ``ffmpeg-version`` diagnoses: each adaptation montage-ray
        made ("this ffmpeg (4.2.2) lacks -fps_mode; montage-ray uses -vsync passthrough instead") and each
        missing feature it cannot work around, with the oldest version that has it."""
        if self.caps is None:
            return []
        found = [Diagnosis("ffmpeg-version", "nothing to do: montage-ray adapted", "cpu", note)
                 for note in self.caps.adaptations]
        found += [Diagnosis("ffmpeg-version", "install a newer ffmpeg on this node to use it", None, note)
                  for note in self.caps.limits]
        return found

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
                "ffmpeg_caps": {**self.caps.to_json(), "metrics": metric_support(self.caps)} if self.caps else None,
                "ffmpeg_version": [d.to_json() for d in self.ffmpeg_diagnoses()],
                "backends": {name: status.to_json() for name, status in self.backends.items()},
                "hdr": self.hdr_support()}

    def hdr_support(self) -> dict[str, dict[str, str]]:
        """Per available backend and codec, whether an HDR source keeps its HDR10 metadata ("kept: how") or
        loses it ("lost: why"); see :mod:`montage_ray.encoders.hdr`."""
        from montage_ray.encoders.hdr import support

        return {name: support(name, status.encoders, self.caps) for name, status in self.backends.items()
                if status.available}


# ---------------------------------------------------------------------------------------------------
# Stage 1: build
# ---------------------------------------------------------------------------------------------------

_ENCODER_LINE = re.compile(r"^\s*V[A-Z.]{5}\s+(\S+)", re.MULTILINE)


def build_encoders(ffmpeg: str, *, timeout: float = DEFAULT_TIMEOUT) -> frozenset[str]:
    """The video encoders ``ffmpeg -encoders`` lists (raises :class:`FFmpegError` when it cannot say)."""
    done = tool.run([ffmpeg, "-hide_banner", "-encoders"], timeout=timeout)
    return frozenset(m.group(1) for m in _ENCODER_LINE.finditer(done.stdout) if m.group(1) != "=")


# ---------------------------------------------------------------------------------------------------
# Stage 3: function (one real encode through the production command)
# ---------------------------------------------------------------------------------------------------

#: The probe clip as production would see it: an 8-bit BT.709 source of the test size.
TEST_VIDEO = VideoInfo(index=0, codec="rawvideo", width=int(TEST_SIZE.split("x")[0]),
                       height=int(TEST_SIZE.split("x")[1]), pix_fmt="yuv420p", time_base=Fraction(1, 25),
                       frame_rate=Fraction(25), sar=None, rotation=0, color_range="tv", color_space="bt709",
                       color_transfer="bt709", color_primaries="bt709", frames=TEST_FRAMES, start=0.0)


def production_command(spec: EncoderSpec, ffmpeg: str, src: str, dst: str, *, loglevel: str = "error",
                       caps: FFmpegCaps | None = None) -> list[str]:
    """The exact argument list production runs for ``spec`` (:func:`montage_ray.ffmpeg.commands.encode_command`)
    with the output options production adds (profile, level, pixel format, colours), spelt for ``ffmpeg``."""
    from montage_ray.encoders.segment import video_output_args  # the output options of a production encode

    return commands.probe_encode_command(spec, src, dst, caps=caps or ffmpeg_caps(ffmpeg),
                                         video_args=video_output_args(TEST_VIDEO, spec), loglevel=loglevel)


def make_test_clip(ffmpeg: str, path: str, *, timeout: float = DEFAULT_TIMEOUT) -> None:
    """Write the probe's source clip: a few frames of testsrc2 as raw yuv420p in NUT (no encoder needed)."""
    tool.run(commands.test_clip_command(ffmpeg, path, size=TEST_SIZE, frames=TEST_FRAMES), timeout=timeout)


def try_encode(spec: EncoderSpec, *, ffmpeg: str, src: str, workdir: str, timeout: float,
               loglevel: str | None = None) -> Attempt:
    """Run one test encode of ``src`` with ``spec`` and say whether it worked and, if not, why."""
    dst = os.path.join(workdir, f"{spec.backend}-{spec.encoder}-{next(_serial)}.out")
    started = time.monotonic()
    try:
        cmd = production_command(spec, ffmpeg, src, dst, loglevel=loglevel or "error")
    except EncoderError as err:  # this ffmpeg lacks an option every encode needs (FFmpegCaps.unusable)
        return Attempt(codec=spec.codec, encoder=spec.encoder, device=spec.device, env=dict(spec.env), ok=False,
                       seconds=0.0, command=(ffmpeg,), cause="ffmpeg-version", line=str(err),
                       fix=f"Install ffmpeg {OLDEST_SUPPORTED} or newer (or point MONTAGE_FFMPEG at one).")
    base = dict(codec=spec.codec, encoder=spec.encoder, device=spec.device, env=dict(spec.env),
                command=tuple(cmd))
    try:
        done = tool.run(cmd, timeout=timeout, check=False, env=spec.env or None)
    except FFmpegError as err:  # timed out
        diag = explain(err.stderr, timed_out=err.timed_out, returncode=err.returncode, backend=spec.backend)
        return Attempt(ok=False, seconds=time.monotonic() - started, cause=diag.cause, fix=diag.fix,
                       line=str(err), stderr=err.stderr, **base)
    finally:
        size = os.path.getsize(dst) if os.path.exists(dst) else 0
        if os.path.exists(dst):
            os.unlink(dst)
    stderr = tool.tail(done.stderr)
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
            diag = Diagnosis(diag.cause, diag.fix, diag.backend, tool.describe_failure(done))
    return Attempt(ok=False, seconds=done.seconds, cause=diag.cause, fix=diag.fix,
                   line=diag.line or tool.describe_failure(done), stderr=stderr, **base)


# ---------------------------------------------------------------------------------------------------
# One backend, all stages
# ---------------------------------------------------------------------------------------------------

#: When no candidate works, the attempt whose cause says the most is reported (earlier = more telling).
_serial = itertools.count()

_CAUSE_RANK = ("permission-denied", "ffmpeg-version", "driver-too-old", "session-limit", "unsupported-hardware",
               "crash",
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
        text = read_text(under(root, marker))
        notes.append(f"{marker}: " + ("absent" if text is None else f"present ({text.splitlines()[0][:80]})"
                                      if text else "present"))
    for lib in recipe.libraries:
        found = find_library(lib, root=root)
        notes.append(f"library {lib}: {found or 'not found'}")
    if recipe.driver_env:
        for driver in recipe.drivers:
            found = find_va_driver(driver, root=root)
            notes.append(f"VA driver {driver}: {found or 'not installed'}"
                         + ("" if found else f" (package {VA_DRIVER_PACKAGE.get(driver, '?')})"))

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
            notes.append(f"skipping {node.path}: {VENDORS.get(node.vendor or '', node.vendor)} GPU, "
                         f"{backend.name} needs {', '.join(VENDORS.get(v, v) for v in recipe.vendors)}")
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
                             detail=f"{nodes[0].path}: {nodes[0].error}", fix=permission_fix(nodes))
        return plan

    if recipe.driver_env:
        for node in usable:
            drivers = sorted(recipe.drivers, key=lambda d: VA_DRIVER_VENDOR.get(d) != node.vendor)
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
    ffmpeg = ffmpeg or tool.ffmpeg()
    names = list(backends) if backends is not None else list(BACKENDS)
    unknown = [n for n in names if n not in BACKENDS]
    if unknown:
        raise KeyError(f"unknown backend(s) {unknown} (known: {', '.join(BACKENDS)})")
    selected = [BACKENDS[n] for n in names]
    try:
        encoders = build_encoders(ffmpeg, timeout=timeout)
        caps = ffmpeg_caps(ffmpeg)
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
    return NodeProbe(ordered, ffmpeg, socket.gethostname(), time.monotonic() - started, caps)


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
    path = ffmpeg or tool.ffmpeg()
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

