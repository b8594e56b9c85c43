"""The encoder actor: one Ray actor per encode session, pinned to a node and a resource label.

It resolves *on its node* how to run its label (the node's probe, or the encoders config, which may name
a CPU stand-in) and which ffmpeg runs it (:func:`~montage_ray.ffmpeg.caps.ffmpeg_caps`: the node's own build, spelt
its way), encodes one segment at a time with :func:`~montage_ray.encoders.segment.encode_segment`,
and answers :meth:`EncoderActor.progress` from its own thread while an encode runs. Actors are started,
reused and stopped by :class:`~montage_ray.cluster.workers.WorkerRegistry` (a job's own) or by the service
(:mod:`montage_ray.cluster.service`: one detached actor per slot for every job of the cluster; each call
then brings its job's label config, and the command is built per segment, so another job's codec, preset,
quality or config costs no restart). A pool sends them work::

    from montage_ray.cluster.actor import EncoderActor

    actor = EncoderActor.options(name="encoder:cpu:local:0", num_cpus=1).remote("cpu", None, "encoder:cpu:local:0")
    ray.get(actor.describe.remote(settings))       # {'name': ..., 'encoder': 'cpu:libx264', 'pid': ...}
    result, encoded = ray.get(actor.encode.remote(segment, data, settings))
    actor.drop.remote(settings.job_id)             # the service: that job's driver is gone, stop its work
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
from typing import Any

import ray

from montage_ray.util import metrics
from montage_ray.spending import quota
from montage_ray.ffmpeg.caps import ffmpeg_build, ffmpeg_caps
from montage_ray.encoders.config import LabelConfig
from montage_ray.probe.spec import resolve_spec
from montage_ray.cluster.nodes import node_tag
from montage_ray.media.plan import Segment
from montage_ray.encoders.segment import SegmentEncodeError, SegmentOutput, SegmentRun, encode_segment
from montage_ray.encoders.backends import is_hardware
from montage_ray.encoders.records import EncodeResult, JobSettings
from montage_ray.encoders.checks import Check, segment_check

log = logging.getLogger(__name__)

#: "The config this actor was started with" (a call of the service passes its job's config instead).
SAME = object()


@ray.remote(max_restarts=0, max_task_retries=0, concurrency_groups={"status": 1})
class EncoderActor:
    """A Ray actor that encodes segments for one resource label on one node.

    Encodes run one at a time (the default concurrency group); :meth:`progress` answers from its own
    thread while an encode runs, so the driver can show frames done inside a segment.
    """

    def __init__(self, label: str, config: LabelConfig | None, name: str) -> None:
        self._label = label
        self._config = config
        self._name = name
        self._specs: dict[tuple, Any] = {}
        self._progress: dict[int, int] = {}   # segment index -> frames encoded so far (the running one)
        self._node = ""
        self._served = 0  # segments a stand-in took (its quota knob counts them; see montage_ray.spending.quota)
        self._dropped: dict[str, float] = {}  # job id -> when its driver was found gone (the service)
        self._stopping = False                # the service is being stopped: every job's work ends
        self._running = 0                     # encodes in progress (one at most: encodes run one at a time)
        # Ask this node's ffmpeg what it can do now, beside the driver's planning and cutting, rather than in
        # front of the first segment (the answer is cached for the process).
        threading.Thread(target=_warm_caps, name="montage-caps", daemon=True).start()

    def _spec(self, settings: JobSettings, threads: int, config: Any = SAME):
        config = self._config if config is SAME else config
        key = (settings.codec, settings.quality, settings.preset, threads, config)
        if key not in self._specs:
            self._specs[key] = resolve_spec(self._label, config, codec=settings.codec,
                                            quality=settings.quality, preset=settings.preset, threads=threads)
        return self._specs[key]

    def _node_name(self) -> str:
        if not self._node:
            # the node's address, as Ray knows it (hosts may share a hostname), and its id
            self._node = node_tag(ray.util.get_node_ip_address(), ray.get_runtime_context().get_node_id())
        return self._node

    def describe(self, settings: JobSettings | None = None, config: Any = SAME) -> dict[str, Any]:
        """Where this actor runs and, for ``settings`` (and ``config``), what it would encode with (raises if it
        cannot)."""
        info = {"name": self._name, "label": self._label, "node_id": ray.get_runtime_context().get_node_id(),
                "hostname": socket.gethostname(), "node": self._node_name(), "pid": os.getpid()}
        if settings is not None:
            spec = self._spec(settings, 1, config)
            info.update(encoder=spec.label, standin=spec.is_standin, backend=spec.backend, copies=spec.copies,
                        hardware=is_hardware(spec.backend), ffmpeg_build=ffmpeg_build())
        return info

    @ray.method(concurrency_group="status")
    def progress(self) -> dict[int, int]:
        """Frames encoded so far of the segment running now ({} when idle)."""
        return dict(self._progress)

    @ray.method(concurrency_group="status")
    def drop(self, job_id: str) -> None:
        """Stop ``job_id``'s running segment and refuse its queued ones (its driver is gone)."""
        now = time.monotonic()
        self._dropped = {j: t for j, t in self._dropped.items() if now - t < 3600}
        self._dropped[job_id] = now

    @ray.method(concurrency_group="status")
    def quiesce(self, timeout: float = 10.0) -> bool:
        """Stop the running encode and refuse the rest, then wait until it has cleaned up (its scratch folder
        removed): the service is about to kill this actor. True when nothing runs any more."""
        self._stopping = True
        deadline = time.monotonic() + timeout
        while self._running and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self._running

    def encode(self, segment: Segment, data: bytes, settings: JobSettings, *, threads: int = 1,
               timeout: float = 600.0, attempt: int = 1, config: Any = SAME, name: str | None = None,
               lease: str = "", check: tuple[str, str] | None = None) -> tuple[EncodeResult, bytes]:
        """Encode one segment with this label's spec for the job's settings (and ``config``, the job's label
        config, when the service shares this actor between jobs; ``name`` is the name the job knows it by,
        ``lease`` its key at the service's scheduler, by which :meth:`drop` names it). ``check`` is the
        check the driver chose for it and why (:func:`montage_ray.encoders.checks.segment_check`); without
        one the actor applies the job's policy to what it knows of itself."""
        self._running += 1
        try:
            return self._encode(segment, data, settings, threads=threads, timeout=timeout, attempt=attempt,
                                config=config, name=name, lease=lease, check=check)
        finally:
            self._running -= 1

    def _encode(self, segment: Segment, data: bytes, settings: JobSettings, *, threads: int = 1,
                timeout: float = 600.0, attempt: int = 1, config: Any = SAME, name: str | None = None,
                lease: str = "", check: tuple[str, str] | None = None) -> tuple[EncodeResult, bytes]:
        lease = lease or settings.job_id
        if self._stopping:
            raise SegmentEncodeError(f"segment {segment.index}: the encoder service is stopping", reason="dropped")
        if lease and lease in self._dropped:
            raise SegmentEncodeError(f"segment {segment.index}: job {settings.job_id} was dropped (its driver "
                                     "is gone)", reason="dropped")
        spec = self._spec(settings, threads, config)
        if check is None:  # a caller that chose none: what this actor knows (not its node's distance, nor failures)
            check = segment_check(settings.verify, hardware=is_hardware(spec.backend), standin=spec.is_standin,
                                  remote=False, failed=attempt > 1)
        config = self._config if config is SAME else config
        name = name or self._name
        ctx = ray.get_runtime_context()
        node = self._node_name()
        log.info("job %s segment %d attempt %d: %d frames on %s (%s)", settings.job_id, segment.index, attempt,
                 segment.frames, name, spec.label)
        if spec.is_standin:  # TESTS/SIMULATION ONLY: a stand-in may refuse like a provider at its quota
            self._served += 1
            quota.standin_check(config, self._served)
        self._progress = {segment.index: 0}

        def on_progress(frames: int) -> None:
            self._progress = {segment.index: frames}

        def should_stop() -> bool:
            return ctx.is_canceled() or lease in self._dropped or self._stopping

        try:
            # the job's output (HDR carried and checked, --target-quality) on this node's ffmpeg (asked once)
            result, encoded = encode_segment(
                spec, segment, data, SegmentOutput.of(settings, spec),
                SegmentRun(timeout=timeout, threads=threads, caps=ffmpeg_caps(), actor=name, attempt=attempt,
                           should_stop=should_stop, on_progress=on_progress),
                decode=check[0] == Check.DECODE, check_why=check[1])
        except SegmentEncodeError as err:
            log.warning("job %s segment %d attempt %d failed on %s: %s", settings.job_id, segment.index, attempt,
                        name, err)
            if lease in self._dropped or self._stopping:
                raise SegmentEncodeError(str(err), reason="dropped") from None
            raise
        finally:
            self._progress = {}
        result = dataclasses.replace(result, node=node, resource=self._label)
        metrics.segment_encoded(label=self._label, node=node, encoder=spec.label, frames=result.frames,
                                seconds=result.seconds, bytes_in=result.bytes_in, bytes_out=result.bytes_out)
        log.info("job %s segment %d done on %s: %.1f fps", settings.job_id, segment.index, name, result.fps)
        return result, encoded


def _warm_caps() -> None:
    try:
        ffmpeg_caps()
    except Exception:  # noqa: BLE001 - the first encode asks again and reports what is wrong
        pass
