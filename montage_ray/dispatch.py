"""Who encodes what: encoder actors pinned to the cluster's resources, and a pool that feeds them.

:func:`plan_actors` reads the cluster's nodes and returns one :class:`Placement` per encode session a node
offers: ``{"vaapi": 1}`` on a node means one VAAPI actor there, ``CPU: 4`` four CPU actors. Each
:class:`EncoderActor` is pinned to its node and label, named for the dashboard
(``encoder:vaapi:<node>:0``), and resolves *on that node* how to run its label (the node's probe, or the
encoders config, which may name a CPU stand-in). Actors are reused across jobs of a session.

:class:`EncoderPool` is pull-based: an actor gets its next segment when it has room (``depth`` in flight,
so the object store holds a few segments, never the whole file). It keeps each actor's measured speed, gives
the largest remaining segment to the fastest free actor, re-issues the slowest in-flight segment to an idle
faster actor at the tail (first result wins, the loser is cancelled), retries failures on other actors and
takes an actor out of rotation after repeated failures or when it dies. The driver owns every retry: Ray's
own task retries are off, because they are spent in seconds when a node dies::

    from montage_ray.dispatch import EncoderPool, plan_actors, start_workers

    workers = start_workers(plan_actors(ray.nodes(), labels={"cpu", "vaapi"}), config={})
    pool = EncoderPool(workers)
    for segment, result, data in pool.run(segments, load=read_segment, settings=settings):
        save(segment, data)
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import ray
from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError, RayTaskError, TaskCancelledError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from montage_ray.config import HARDWARE_LABELS, LabelConfig, resolve_spec
from montage_ray.encode import (EncodeResult, JobSettings, SegmentEncodeError, encode_segment, segment_timeout,
                                video_output_args)
from montage_ray import metrics
from montage_ray.errors import ClusterError, EncoderError
from montage_ray.plan import Segment
from montage_ray.report import Attempt

log = logging.getLogger(__name__)

try:  # an actor that is restarting or whose node is unreachable
    from ray.exceptions import ActorUnavailableError
except ImportError:  # pragma: no cover
    ActorUnavailableError = RayActorError  # type: ignore[misc,assignment]

#: Called by :meth:`EncoderPool.run` about once a second: ({segment index: frames done}, busy actors).
TickCallback = Callable[[dict[int, int], int], None]

#: Errors that mean "this actor (or its node) is gone": resubmit elsewhere.
ACTOR_GONE = (RayActorError, ActorUnavailableError, ObjectLostError, GetTimeoutError)


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

    def _spec(self, settings: JobSettings, threads: int):
        key = (settings.codec, settings.quality, settings.preset, threads)
        if key not in self._specs:
            self._specs[key] = resolve_spec(self._label, self._config, codec=settings.codec,
                                            quality=settings.quality, preset=settings.preset, threads=threads)
        return self._specs[key]

    def _node_name(self) -> str:
        if not self._node:
            self._node = f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"
        return self._node

    def describe(self, settings: JobSettings | None = None) -> dict[str, Any]:
        """Where this actor runs and, for ``settings``, what it would encode with (raises if it cannot)."""
        info = {"name": self._name, "label": self._label, "node_id": ray.get_runtime_context().get_node_id(),
                "hostname": socket.gethostname(), "node": self._node_name(), "pid": os.getpid()}
        if settings is not None:
            spec = self._spec(settings, 1)
            info.update(encoder=spec.label, standin=spec.is_standin)
        return info

    @ray.method(concurrency_group="status")
    def progress(self) -> dict[int, int]:
        """Frames encoded so far of the segment running now ({} when idle)."""
        return dict(self._progress)

    def encode(self, segment: Segment, data: bytes, settings: JobSettings, *, threads: int = 1,
               timeout: float = 600.0, attempt: int = 1) -> tuple[EncodeResult, bytes]:
        """Encode one segment with this label's spec for the job's settings."""
        spec = self._spec(settings, threads)
        ctx = ray.get_runtime_context()
        node = self._node_name()
        log.info("job %s segment %d attempt %d: %d frames on %s (%s)", settings.job_id, segment.index, attempt,
                 segment.frames, self._name, spec.label)
        self._progress = {segment.index: 0}

        def on_progress(frames: int) -> None:
            self._progress = {segment.index: frames}

        try:
            result, encoded = encode_segment(spec, segment, data, video_args=video_output_args(settings.video, spec),
                                             sar=settings.sar, timeout=timeout, actor=self._name, attempt=attempt,
                                             should_stop=ctx.is_canceled, on_progress=on_progress,
                                             frame_filter=settings.frame_filter)
        except SegmentEncodeError as err:
            log.warning("job %s segment %d attempt %d failed on %s: %s", settings.job_id, segment.index, attempt,
                        self._name, err)
            raise
        finally:
            self._progress = {}
        result = dataclasses.replace(result, node=node, resource=self._label)
        metrics.segment_encoded(label=self._label, node=node, encoder=spec.label, frames=result.frames,
                                seconds=result.seconds, bytes_in=result.bytes_in, bytes_out=result.bytes_out)
        log.info("job %s segment %d done on %s: %.1f fps", settings.job_id, segment.index, self._name, result.fps)
        return result, encoded


@dataclass(frozen=True)
class Placement:
    """One encoder session to start: a label on a node."""

    label: str                 # "cpu" or a resource label
    node_id: str
    node_name: str
    index: int                 # n-th session of this label on this node
    node_cpus: int = 1         # CPUs of that node (CPU actors share them when a job has few segments)

    @property
    def name(self) -> str:
        return f"encoder:{self.label}:{self.node_name}:{self.index}"


def plan_actors(nodes: Iterable[Mapping[str, Any]], labels: Iterable[str] | None = None,
                extra_labels: Iterable[str] = ()) -> list[Placement]:
    """One placement per session each alive node offers (pure: reads ``ray.nodes()`` output).

    Hardware labels come first (they are usually fastest), then CPU slots. ``labels`` limits the labels.
    """
    wanted = set(labels) if labels is not None else None
    known = list(HARDWARE_LABELS) + [x for x in extra_labels if x not in HARDWARE_LABELS and x != "cpu"]
    hardware: list[Placement] = []
    cpus: list[Placement] = []
    for node in nodes:
        if not node.get("Alive", node.get("alive", True)):
            continue
        resources = node.get("Resources", {})
        node_id = node.get("NodeID", "")
        node_name = f"{node.get('NodeManagerAddress', 'node')}-{node_id[:6]}"
        node_cpus = int(resources.get("CPU", 0))
        for label in known:
            if wanted is None or label in wanted:
                for i in range(int(resources.get(label, 0))):
                    hardware.append(Placement(label, node_id, node_name, i, node_cpus))
        if wanted is None or "cpu" in wanted:
            for i in range(node_cpus):
                cpus.append(Placement("cpu", node_id, node_name, i, node_cpus))
    return hardware + cpus


def offered_labels(nodes: Iterable[Mapping[str, Any]], extra_labels: Iterable[str] = ()) -> dict[str, int]:
    """{label: sessions} over the alive nodes (CPU slots under "cpu")."""
    counts: dict[str, int] = {}
    for p in plan_actors(nodes, None, extra_labels):
        counts[p.label] = counts.get(p.label, 0) + 1
    return counts


#: Node labels (set by scripts/ray-start-node.sh) that mark a node reached over a slow link.
REMOTE_LABEL, BANDWIDTH_LABEL = "montage.ai/remote", "montage.ai/bandwidth-mbps"


def remote_labels(nodes: Iterable[Mapping[str, Any]]) -> dict[str, float | None]:
    """{resource label: link Mbit/s or None} for the labels that alive nodes marked remote offer (pure)."""
    out: dict[str, float | None] = {}
    for node in nodes:
        tags = node.get("Labels") or {}
        if not node.get("Alive", True) or str(tags.get(REMOTE_LABEL, "")).lower() != "true":
            continue
        try:
            bandwidth: float | None = float(tags[BANDWIDTH_LABEL])
        except (KeyError, ValueError):
            bandwidth = None
        for label in HARDWARE_LABELS:
            if node.get("Resources", {}).get(label, 0) > 0:
                out[label] = bandwidth if out.get(label) is None else out[label]
    return out


@dataclass
class Worker:
    """One encoder actor as the pool sees it; ``fps`` is its measured speed (smoothed)."""

    actor: Any
    name: str
    label: str
    placement: Placement | None = None
    fps: float = 0.0
    in_flight: int = 0
    failures: int = 0
    alive: bool = True
    done: int = 0
    encoder: str = ""
    hostname: str = ""
    node: str = ""             # "hostname/node-id prefix", as in the report and the metrics
    pid: int = 0               # the actor's process
    last_done: float = 0.0     # monotonic time of its last finished segment
    base_fps: float = 0.0      # the configured first guess, for jobs whose speed it has not measured
    fps_for: tuple = ()        # the job setup (codec, preset, quality, pixels) that ``fps`` was measured on


#: Actors of this driver by resource slot (node, label, index), with the config each was started with;
#: reused across jobs while the same Ray session lasts.
_REGISTRY: dict[tuple[str, str, int], tuple[LabelConfig | None, Worker]] = {}
_REGISTRY_SESSION: list[str] = [""]
_GENERATION = itertools.count(1)
_USED_NAMES: set[str] = set()


def _session_id() -> str:
    return ray.get_runtime_context().get_job_id()


def start_workers(placements: Sequence[Placement], config: Mapping[str, LabelConfig], *,
                  reuse: bool = True) -> list[Worker]:
    """An actor per placement, pinned to its node; reuses this session's live actors of the same setup."""
    global _GENERATION
    if _REGISTRY_SESSION[0] != _session_id():
        _REGISTRY.clear()
        _REGISTRY_SESSION[0] = _session_id()
        _GENERATION = itertools.count(1)
        _USED_NAMES.clear()
    workers = []
    for p in placements:
        cfg = config.get(p.label)
        key = (p.node_id, p.label, p.index)  # one slot of a node's resource: one actor at a time holds it
        held = _REGISTRY.get(key)
        if held is not None:
            w = held[1]
            if reuse and w.alive and held[0] == cfg and w.placement == p:
                w.in_flight, w.failures = 0, 0
                workers.append(w)
                continue
            _forget(w)  # another setup of the same slot: free the CPU or device for the new actor
        if p.label == "cpu":
            options: dict[str, Any] = {"num_cpus": 1}
        else:
            options = {"num_cpus": 0, "resources": {p.label: 1}}
        strategy = NodeAffinitySchedulingStrategy(node_id=p.node_id, soft=False) if p.node_id else None
        name = p.name + (":stand-in" if cfg and p.label != "cpu" and (cfg.standin or cfg.backend == "cpu") else "")
        if name in _USED_NAMES:  # names are unique in a namespace; an older setup may still hold it
            name += f"~{next(_GENERATION)}"
        _USED_NAMES.add(name)
        actor = EncoderActor.options(name=name, scheduling_strategy=strategy, **options).remote(p.label, cfg, name)
        fps = cfg.expected_fps if cfg and cfg.expected_fps else 0.0
        w = Worker(actor=actor, name=name, label=p.label, placement=p, fps=fps, base_fps=fps)
        _REGISTRY[key] = (cfg, w)
        workers.append(w)
    return workers


def wait_ready(workers: Sequence[Worker], settings: JobSettings, timeout: float = 60.0
               ) -> tuple[list[Worker], list[Attempt]]:
    """The workers that start and can serve ``settings`` within ``timeout``; the others with why not."""
    pending = {w.actor.describe.remote(settings): w for w in workers}
    ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=timeout)
    ok, bad = [], []
    for ref, w in pending.items():
        if ref not in ready:
            bad.append(Attempt(-1, 0, w.label, w.name, "not-scheduled",
                               f"{w.name} did not start within {timeout:.0f} s (no node offers it any more?)"))
            w.alive = False
            _forget(w)
            continue
        try:
            info = ray.get(ref)
        except RayTaskError as err:
            cause = err.cause if isinstance(err.cause, BaseException) else err
            bad.append(Attempt(-1, 0, w.label, w.name, "unavailable", str(cause).splitlines()[0]))
            w.alive = False
            _forget(w)
            continue
        except ACTOR_GONE as err:
            bad.append(Attempt(-1, 0, w.label, w.name, "actor-died", str(err).splitlines()[0]))
            w.alive = False
            _forget(w)
            continue
        w.encoder, w.hostname, w.node = info.get("encoder", ""), info.get("hostname", ""), info.get("node", "")
        w.pid = info.get("pid", 0)
        ok.append(w)
    return ok, bad


def _forget(worker: Worker) -> None:
    for key, (_, w) in list(_REGISTRY.items()):
        if w is worker:
            del _REGISTRY[key]
            try:
                ray.kill(w.actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass


def stop_workers(workers: Iterable[Worker] | None = None) -> None:
    """Kill actors (all of this session's when ``workers`` is None); their ffmpeg children die with them."""
    for w in list(workers) if workers is not None else [w for _, w in _REGISTRY.values()]:
        w.alive = False
        _forget(w)
        try:
            ray.kill(w.actor, no_restart=True)
        except Exception:  # noqa: BLE001
            pass


@dataclass
class _Task:
    worker: Worker
    segment: Segment
    attempt: int
    started: float             # monotonic, on the driver
    duplicate: bool = False
    submitted_at: float = 0.0  # wall clock, for failures that never reported their own start


@dataclass
class PoolOptions:
    """Knobs of :class:`EncoderPool` (defaults suit a cluster of a few nodes)."""

    depth: int = 2                    # segments in flight per actor
    max_attempts: int = 4             # tries of one segment before the job fails
    max_worker_failures: int = 2      # failures before an actor leaves this job's rotation
    timeout_factor: float = 8.0       # per-segment timeout: this x the expected time ...
    min_timeout: float = 60.0         # ... but never less than this
    duplicate_tail: bool = True       # re-issue stragglers to idle faster actors
    stall_timeout: float = 3600.0     # no result at all for this long: fail the job
    ewma: float = 0.5                 # weight of the newest speed measurement


class EncoderPool:
    """Feed segments to workers: pull-based, speed-aware, with tail duplication and driver-owned retries."""

    def __init__(self, workers: Sequence[Worker], options: PoolOptions | None = None) -> None:
        if not workers:
            raise ClusterError("no encoder actors to run the job on")
        self.workers = list(workers)
        self.options = options or PoolOptions()
        self.failures: list[Attempt] = []
        self.duplicates = 0
        self.job_id = ""  # of the job being run, for log lines

    # -- decisions -------------------------------------------------------------------------------
    def _expected_fps(self, worker: Worker) -> float:
        if worker.fps > 0:
            return worker.fps
        known = [w.fps for w in self.workers if w.fps > 0]
        return min(known) if known else 0.0

    def timeout_for(self, seg: Segment, worker: Worker, settings: JobSettings) -> float:
        """Generous per-segment limit from the worker's expected speed (or a resolution-based guess)."""
        fps = self._expected_fps(worker)
        if fps <= 0:
            return segment_timeout(seg.frames, settings.video.width, settings.video.height)
        return max(self.options.min_timeout, self.options.timeout_factor * seg.frames / fps)

    def _threads(self, worker: Worker, active: int) -> int:
        """CPU workers share their node's CPUs when a job has fewer segments than CPU slots."""
        if worker.label != "cpu" or worker.placement is None:
            return 1
        same_node = [w for w in self.workers if w.alive and w.label == "cpu" and w.placement
                     and w.placement.node_id == worker.placement.node_id]
        return max(1, worker.placement.node_cpus // max(1, min(active, len(same_node))))

    # -- the loop --------------------------------------------------------------------------------
    def run(self, segments: Sequence[Segment], *, load: Callable[[Segment], bytes], settings: JobSettings,
            on_tick: TickCallback | None = None, tick: float = 1.0
            ) -> Iterator[tuple[Segment, EncodeResult, bytes]]:
        """Encode every segment; yield ``(segment, result, encoded bytes)`` in completion order.

        ``on_tick(partial, busy)`` is called about every ``tick`` seconds with the frames done so far of
        the segments being encoded (``{index: frames}``, from the actors' ``-progress``) and the number
        of busy actors.
        """
        self.job_id = settings.job_id
        setup = (settings.codec, settings.preset, settings.quality, settings.video.width * settings.video.height)
        for w in self.workers:  # a speed measured on another kind of job says little about this one
            if w.fps_for != setup:
                w.fps, w.fps_for = w.base_fps, setup
        pending: list[tuple[Segment, int]] = sorted(((s, 1) for s in segments), key=lambda x: -x[0].frames)
        in_flight: dict[Any, _Task] = {}
        copies: dict[int, set[Any]] = {}
        failed_on: dict[int, set[str]] = {}
        finished: set[int] = set()
        total = len(segments)
        threads = {w.name: self._threads(w, total) for w in self.workers}

        def submit(worker: Worker, seg: Segment, attempt: int, duplicate: bool = False) -> None:
            ref = worker.actor.encode.remote(seg, ray.put(load(seg)), settings, threads=threads[worker.name],
                                             timeout=self.timeout_for(seg, worker, settings), attempt=attempt)
            in_flight[ref] = _Task(worker, seg, attempt, time.monotonic(), duplicate, time.time())
            copies.setdefault(seg.index, set()).add(ref)
            worker.in_flight += 1

        try:
            yield from self._loop(segments, pending, in_flight, copies, failed_on, finished, submit, settings,
                                  on_tick, tick)
        finally:
            self._drain(in_flight)

    def _drain(self, in_flight: dict[Any, "_Task"]) -> None:
        """Cancel what is still running (duplicates that lost, or everything when the job failed) and collect
        the answers, so that Ray does not report them as unhandled errors later."""
        refs = list(in_flight)
        in_flight.clear()
        for ref in refs:
            ray.cancel(ref)
        if refs:  # the job need not wait for them: collect them beside it
            thread = threading.Thread(target=_collect, args=(refs,), name="montage-drain", daemon=True)
            _DRAINS.append(thread)
            thread.start()

    def _loop(self, segments: Sequence[Segment], pending: list[tuple[Segment, int]], in_flight: dict[Any, _Task],
              copies: dict[int, set[Any]], failed_on: dict[int, set[str]], finished: set[int],
              submit: Callable[..., None], settings: JobSettings, on_tick: TickCallback | None, tick: float
              ) -> Iterator[tuple[Segment, EncodeResult, bytes]]:
        """The body of :meth:`run`: fill, duplicate at the tail, wait, then record, retry or yield."""
        opts = self.options
        total = len(segments)
        last_progress = time.monotonic()
        polls: list[Any] = []
        next_tick = time.monotonic() + tick
        while len(finished) < total:
            # Fill: fastest free worker first, largest pending segment first, each worker only as many
            # segments as it would finish soonest (a slow encoder gets no segment a faster one would finish
            # earlier); a worker whose speed is not measured yet gets one segment at a time.
            plan = self._shares(pending, in_flight, failed_on)
            for attempt_plan in (plan, None):  # without the plan too, should it leave every worker idle
                for worker in sorted((w for w in self.workers if w.alive), key=lambda w: -self._expected_fps(w)):
                    depth = opts.depth if worker.fps > 0 else 1
                    mine = None if attempt_plan is None else attempt_plan.get(worker.name, [])
                    while worker.alive and worker.in_flight < depth and pending:
                        pick = self._pick(pending, worker, failed_on, mine)
                        if pick is None:
                            break
                        submit(worker, *pick)
                if in_flight or not pending:
                    break
            if opts.duplicate_tail and not pending:
                self._duplicate_tail(in_flight, copies, finished, failed_on, submit)
            live = list(in_flight)
            if not live:
                reasons = "; ".join(f"{f.encoder}: {f.message}" for f in self.failures[-3:])
                raise EncoderError(f"no encoder is left to finish the job ({reasons or 'all actors died'})")
            wait = min(5.0, opts.stall_timeout) if on_tick is None else max(0.05, next_tick - time.monotonic())
            ready, _ = ray.wait(live, num_returns=1, timeout=wait)
            if on_tick is not None and time.monotonic() >= next_tick:
                polls = self._tick(polls, on_tick)
                next_tick = time.monotonic() + tick
            if not ready:
                if time.monotonic() - last_progress > opts.stall_timeout:
                    raise ClusterError(f"no segment finished in {opts.stall_timeout:.0f} s; is an encoder stuck "
                                       "or waiting for a resource no node offers?")
                continue
            last_progress = time.monotonic()
            ref = ready[0]
            task = in_flight.pop(ref)
            task.worker.in_flight -= 1
            copies.get(task.segment.index, set()).discard(ref)
            seg = task.segment
            try:
                result, data = ray.get(ref, timeout=60)
            except TaskCancelledError:
                continue
            except ACTOR_GONE as err:
                task.worker.alive = False
                self._failed(pending, failed_on, copies, finished, task, "actor-died", _first_line(err))
                continue
            except RayTaskError as err:
                cause = err.cause if isinstance(err.cause, BaseException) else err
                reason = getattr(cause, "reason", "error")
                if reason == "cancelled":
                    continue
                self._failed(pending, failed_on, copies, finished, task, reason, _first_line(cause),
                             getattr(cause, "stderr", ""), started=getattr(cause, "started", 0.0),
                             seconds=getattr(cause, "seconds", 0.0))
                continue
            # A measured speed, even from a duplicate that lost the race, is information.
            fps = result.frames / result.seconds if result.seconds > 0 else 0.0
            w = task.worker
            w.fps = fps if w.fps <= 0 else (1 - opts.ewma) * w.fps + opts.ewma * fps
            w.last_done = time.monotonic()
            if seg.index in finished:
                continue
            finished.add(seg.index)
            w.done += 1
            for other in copies.pop(seg.index, set()):
                ray.cancel(other)  # the loser of a duplicated segment
            yield seg, result, data

    def _free_in(self, worker: Worker, in_flight: dict[Any, _Task], now: float) -> float:
        """Seconds until ``worker`` has finished what it holds (inf when it is overdue: maybe stuck)."""
        fps = self._expected_fps(worker)
        mine = sorted((t for t in in_flight.values() if t.worker is worker), key=lambda t: t.started)
        if not mine:
            return 0.0
        running = mine[0]
        since = max(running.started, worker.last_done)
        expected = running.segment.frames / fps
        elapsed = now - since
        if elapsed > 2 * expected + 5:
            return float("inf")
        return max(0.0, expected - elapsed) + sum(t.segment.frames for t in mine[1:]) / fps

    def _shares(self, pending: list[tuple[Segment, int]], in_flight: dict[Any, _Task],
                failed_on: dict[int, set[str]]) -> dict[str, list[int]] | None:
        """Which pending segments each worker takes in an earliest-finish schedule (largest segment first,
        each to the worker that would finish it soonest, never to one that already failed it while another
        can take it); None before any speed is known."""
        alive = [w for w in self.workers if w.alive]
        if not pending or not alive or all(w.fps <= 0 for w in self.workers):
            return None
        now = time.monotonic()
        free = {w.name: self._free_in(w, in_flight, now) for w in alive}
        fps = {w.name: self._expected_fps(w) for w in alive}
        plan: dict[str, list[int]] = {w.name: [] for w in alive}
        for seg, _ in pending:
            failed = failed_on.get(seg.index, set())
            names = [n for n in free if n not in failed] or list(free)
            name = min(names, key=lambda n: (free[n] + seg.frames / fps[n], -fps[n]))
            if free[name] == float("inf"):
                return None  # every worker looks stuck: plain pull, the timeouts will sort it out
            free[name] += seg.frames / fps[name]
            plan[name].append(seg.index)
        return plan

    def _pick(self, pending: list[tuple[Segment, int]], worker: Worker, failed_on: dict[int, set[str]],
              planned: list[int] | None = None) -> tuple[Segment, int] | None:
        """The largest pending segment this worker has not failed, unless only it could take it; with
        ``planned``, only one of those segments (taken off the list)."""
        others_alive = any(w.alive and w is not worker for w in self.workers)
        for i, (seg, attempt) in enumerate(pending):
            if planned is not None and seg.index not in planned:
                continue
            if worker.name not in failed_on.get(seg.index, set()) or not others_alive:
                del pending[i]
                if planned is not None:
                    planned.remove(seg.index)
                return seg, attempt
        return None

    def _duplicate_tail(self, in_flight: dict[Any, _Task], copies: dict[int, set[Any]], finished: set[int],
                        failed_on: dict[int, set[str]], submit: Callable[..., None]) -> None:
        """Give an idle worker a copy of the in-flight segment expected to finish last, if it would win."""
        idle = [w for w in self.workers if w.alive and w.in_flight == 0]
        if not idle:
            return
        now = time.monotonic()

        def eta(t: _Task) -> float:
            fps = self._expected_fps(t.worker)
            # queued behind another segment on its actor: add that one's time too
            queued = sum(o.segment.frames for o in in_flight.values()
                         if o.worker is t.worker and o.started < t.started)
            if fps <= 0:
                return float("inf")
            left = t.started + (t.segment.frames + queued) / fps - now
            # Later than expected: the speed guess was wrong, so assume it needs half as long again.
            return max(left, 0.5 * (now - t.started))

        single = [t for t in in_flight.values() if len(copies.get(t.segment.index, ())) == 1
                  and t.segment.index not in finished]
        for worker in sorted(idle, key=lambda w: -self._expected_fps(w)):
            if not single:
                return
            slowest = max(single, key=eta)
            fps = self._expected_fps(worker)
            if fps <= 0 or slowest.worker is worker or worker.name in failed_on.get(slowest.segment.index, ()):
                continue
            if slowest.segment.frames / fps < eta(slowest):
                single.remove(slowest)
                self.duplicates += 1
                log.info("job %s segment %d: duplicated on %s (straggling on %s)", self.job_id,
                         slowest.segment.index, worker.name, slowest.worker.name)
                submit(worker, slowest.segment, slowest.attempt, duplicate=True)

    def _tick(self, polls: list[Any], on_tick: TickCallback) -> list[Any]:
        """Report the answers to the last progress polls and ask the busy actors again (never blocks)."""
        partial: dict[int, int] = {}
        if polls:
            answered, _ = ray.wait(polls, num_returns=len(polls), timeout=0)
            for ref in answered:
                try:
                    for index, frames in ray.get(ref, timeout=0).items():
                        partial[index] = max(frames, partial.get(index, 0))
                except Exception:  # noqa: BLE001 - a dead or busy actor just has no news
                    pass
        busy = [w for w in self.workers if w.alive and w.in_flight > 0]
        on_tick(partial, len(busy))
        return [w.actor.progress.remote() for w in busy]

    def _failed(self, pending: list[tuple[Segment, int]], failed_on: dict[int, set[str]],
                copies: dict[int, set[Any]], finished: set[int], task: _Task, reason: str, message: str,
                stderr: str = "", *, started: float = 0.0, seconds: float = 0.0) -> None:
        seg, worker = task.segment, task.worker
        log.warning("job %s segment %d attempt %d failed on %s: %s", self.job_id, seg.index, task.attempt,
                    worker.name, message)
        if not started:  # it never said when it started (its actor died): the driver's view
            started, seconds = task.submitted_at, time.time() - task.submitted_at
        self.failures.append(Attempt(segment=seg.index, attempt=task.attempt, encoder=worker.encoder or worker.label,
                                     actor=worker.name, reason=reason, message=message, stderr=stderr[-2000:],
                                     started=started, seconds=seconds, node=worker.node, label=worker.label))
        metrics.segment_failed(label=worker.label, node=worker.node, reason=reason)
        failed_on.setdefault(seg.index, set()).add(worker.name)
        worker.failures += 1
        if worker.failures >= self.options.max_worker_failures:
            worker.alive = False
        if seg.index in finished or copies.get(seg.index):
            return  # another copy finished or is still running
        if task.attempt >= self.options.max_attempts:
            raise EncoderError(f"segment {seg.index} failed {task.attempt} times; last on {worker.name}: {message}")
        metrics.segment_retried(label=worker.label, node=worker.node)
        pending.insert(0, (seg, task.attempt + 1))


#: Threads collecting cancelled tasks; :func:`join_drains` waits for them before Ray is shut down.
_DRAINS: list[threading.Thread] = []


def join_drains(timeout: float = 5.0) -> None:
    """Wait (at most ``timeout`` seconds in all) for the collection of cancelled tasks to end."""
    deadline = time.monotonic() + timeout
    while _DRAINS:
        _DRAINS.pop().join(max(0.0, deadline - time.monotonic()))


def _collect(refs: list[Any], timeout: float = 5.0) -> None:
    """Fetch (and drop) the answers of cancelled tasks once they arrive."""
    try:
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
        for ref in done:
            try:
                ray.get(ref, timeout=0)
            except Exception:  # noqa: BLE001 - cancelled or failed: nobody needs it any more
                pass
    except Exception:  # noqa: BLE001 - Ray shut down meanwhile
        pass


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
