"""Who encodes what: encoder actors on Ray, and a pull-based pool that feeds them segments.

Each :class:`EncoderActor` holds one :class:`~montage_ray.backends.EncoderSpec` and is pinned to the Ray
resource that spec needs (plain CPUs, or a label such as ``vaapi``). :class:`EncoderPool` hands an actor
its next segment when it has room (at most ``depth`` in flight each, so the object store never holds more
than a few segments), retries a failed segment on another actor, and takes an actor out of rotation after
repeated failures or when it dies. The driver owns every retry: Ray's own task retries are off, because
they are spent in seconds when a node dies::

    import ray
    from montage_ray.backends import cpu_spec
    from montage_ray.dispatch import EncoderPool, start_actors

    workers = start_actors(cpu_spec("h264"), count=2)
    pool = EncoderPool(workers)
    for segment, result, data in pool.run(segments, load=lambda s: open(paths[s.index], "rb").read(),
                                          call_options=lambda s: {"timeout": 600}):
        open(f"enc-{segment.index}.nut", "wb").write(data)
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Sequence

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from montage_ray.backends import EncoderSpec
from montage_ray.encode import EncodeResult, SegmentEncodeError, encode_segment
from montage_ray.errors import ClusterError, EncoderError
from montage_ray.plan import Segment
from montage_ray.report import Attempt

log = logging.getLogger(__name__)

try:  # present in recent Ray; an actor that is restarting or unreachable
    from ray.exceptions import ActorUnavailableError
except ImportError:  # pragma: no cover
    ActorUnavailableError = RayActorError  # type: ignore[misc,assignment]


@ray.remote(max_restarts=0, max_task_retries=0)
class EncoderActor:
    """A Ray actor that encodes segments with one spec. Its name says what it is on the dashboard."""

    def __init__(self, spec: EncoderSpec, name: str) -> None:
        self._spec = spec
        self._name = name

    def describe(self) -> dict[str, Any]:
        """Where this actor runs and what it encodes with."""
        import os

        ctx = ray.get_runtime_context()
        return {"name": self._name, "label": self._spec.label, "node_id": ctx.get_node_id(),
                "hostname": socket.gethostname(), "pid": os.getpid(), "standin": self._spec.is_standin}

    def encode(self, segment: Segment, data: bytes, **options: Any) -> tuple[EncodeResult, bytes]:
        """Encode one segment; ``options`` are :func:`~montage_ray.encode.encode_segment` keywords."""
        threads = options.pop("threads", 0)
        spec = self._spec.with_threads(threads) if threads else self._spec
        return encode_segment(spec, segment, data, actor=self._name, **options)


@dataclass
class Worker:
    """One encoder actor as the pool sees it."""

    actor: Any
    name: str
    spec: EncoderSpec
    in_flight: int = 0
    failures: int = 0
    alive: bool = True
    done: int = 0


def start_actors(spec: EncoderSpec, count: int, *, prefix: str = "encoder") -> list[Worker]:
    """Start ``count`` encoder actors for ``spec``, each asking for one unit of the spec's resource.

    CPU specs take ``num_cpus=1`` each; labelled specs take ``resources={label: 1}`` (and no CPU), so that
    a node offering ``{"vaapi": 1}`` runs exactly one VAAPI actor.
    """
    workers = []
    for i in range(count):
        name = f"{prefix}:{spec.resource or 'cpu'}:{i}"
        if spec.resource:
            options: dict[str, Any] = {"num_cpus": 0, "resources": {spec.resource: 1}}
        else:
            options = {"num_cpus": 1}
        actor = EncoderActor.options(name=name, **options).remote(spec, name)
        workers.append(Worker(actor=actor, name=name, spec=spec))
    return workers


def stop_actors(workers: Iterable[Worker]) -> None:
    """Kill the actors (their ffmpeg children die with them)."""
    for w in workers:
        try:
            ray.kill(w.actor, no_restart=True)
        except Exception:  # noqa: BLE001 - already gone is fine
            pass


class EncoderPool:
    """Feed segments to workers, pull-based, with driver-owned retries.

    ``depth`` bounds the segments in flight per actor (one encoding, one waiting in its object store);
    a segment that fails is retried on another worker up to ``max_attempts`` times; a worker that fails
    ``max_worker_failures`` segments, or dies, leaves the rotation for this job.
    """

    def __init__(self, workers: Sequence[Worker], *, depth: int = 2, max_attempts: int = 3,
                 max_worker_failures: int = 2) -> None:
        if not workers:
            raise ClusterError("no encoder actors to run the job on")
        self.workers = list(workers)
        self.depth = depth
        self.max_attempts = max_attempts
        self.max_worker_failures = max_worker_failures
        self.failures: list[Attempt] = []

    def _pick(self, queue: deque, worker: Worker, failed_on: dict[int, set[str]]) -> tuple[Segment, int] | None:
        """The first queued segment this worker has not already failed, if another worker could take it."""
        others_alive = sum(1 for w in self.workers if w.alive and w is not worker)
        for i, (seg, attempt) in enumerate(queue):
            if worker.name not in failed_on.get(seg.index, set()) or not others_alive:
                del queue[i]
                return seg, attempt
        return None

    def run(self, segments: Iterable[Segment], *, load: Callable[[Segment], bytes],
            call_options: Callable[[Segment], dict[str, Any]],
            stall_timeout: float = 3600.0) -> Iterator[tuple[Segment, EncodeResult, bytes]]:
        """Encode every segment; yield ``(segment, result, encoded bytes)`` in completion order."""
        queue: deque[tuple[Segment, int]] = deque((s, 1) for s in segments)
        in_flight: dict[Any, tuple[Worker, Segment, int]] = {}
        failed_on: dict[int, set[str]] = {}
        while queue or in_flight:
            for worker in sorted(self.workers, key=lambda w: w.in_flight):
                while worker.alive and worker.in_flight < self.depth and queue:
                    picked = self._pick(queue, worker, failed_on)
                    if picked is None:
                        break
                    seg, attempt = picked
                    ref = worker.actor.encode.remote(seg, ray.put(load(seg)), attempt=attempt,
                                                     **call_options(seg))
                    in_flight[ref] = (worker, seg, attempt)
                    worker.in_flight += 1
            if not in_flight:
                reasons = "; ".join(f"{f.encoder}: {f.message}" for f in self.failures[-3:])
                raise EncoderError(f"no encoder is left to finish the job ({reasons or 'all actors died'})")
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=stall_timeout)
            if not ready:
                raise ClusterError(f"no segment finished in {stall_timeout:.0f} s; is an encoder stuck or "
                                   "waiting for a resource no node offers?")
            ref = ready[0]
            worker, seg, attempt = in_flight.pop(ref)
            worker.in_flight -= 1
            try:
                result, data = ray.get(ref, timeout=stall_timeout)
            except (RayActorError, ActorUnavailableError, GetTimeoutError) as err:
                worker.alive = False
                self._failed(queue, failed_on, worker, seg, attempt, "actor-died", str(err).splitlines()[0])
                continue
            except RayTaskError as err:
                cause = err.cause if isinstance(err.cause, BaseException) else err
                reason = getattr(cause, "reason", "error")
                stderr = getattr(cause, "stderr", "")
                self._failed(queue, failed_on, worker, seg, attempt, reason, str(cause).splitlines()[0],
                             stderr)
                continue
            worker.done += 1
            yield seg, result, data

    def _failed(self, queue: deque, failed_on: dict[int, set[str]], worker: Worker, seg: Segment,
                attempt: int, reason: str, message: str, stderr: str = "") -> None:
        log.warning("segment %d attempt %d failed on %s: %s", seg.index, attempt, worker.name, message)
        self.failures.append(Attempt(segment=seg.index, attempt=attempt, encoder=worker.spec.label,
                                     actor=worker.name, reason=reason, message=message,
                                     stderr=stderr[-2000:]))
        failed_on.setdefault(seg.index, set()).add(worker.name)
        worker.failures += 1
        if worker.failures >= self.max_worker_failures:
            worker.alive = False
        if attempt >= self.max_attempts:
            raise EncoderError(f"segment {seg.index} failed {attempt} times; last on {worker.spec.label}: "
                               f"{message}")
        queue.appendleft((seg, attempt + 1))

