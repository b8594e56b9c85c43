"""Who holds each encoder slot: a :class:`WorkerRegistry` starts, reuses, replaces and stops encoder actors.

One registry belongs to one Ray session (see :mod:`montage_ray.cluster.session`): it remembers which actor
holds each resource slot (node, label, index) and with which config it was started, so the next job of the
same session reuses the live actors of the same setup (their processes, their measured speeds) and
replaces the ones whose setup changed, freeing the slot's CPU or device first. It also collects the answers
of cancelled tasks off the job's path (:meth:`WorkerRegistry.drain`) and waits for that before Ray shuts
down. Like Ray's ``util/multiprocessing/pool.py``, everything it started is on the instance::

    from montage_ray.cluster.nodes import placements
    from montage_ray.cluster.workers import WorkerRegistry

    registry = WorkerRegistry()
    workers = registry.start(placements(ray.nodes(), labels={"cpu"}), config={})
    ready, unavailable = registry.wait_ready(workers, settings)
    ...                                        # EncoderPool(ready).run(...)
    registry.start(placements(ray.nodes(), labels={"cpu"}), config={})   # the same actors again
    registry.stop()                            # every actor it started
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import ray
from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError, RayTaskError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from montage_ray.cluster.actor import EncoderActor
from montage_ray.cluster.nodes import Placement
from montage_ray.cluster.scheduler import reclaim
from montage_ray.encoders.config import LabelConfig
from montage_ray.errors import first_line
from montage_ray.encoders.records import FailedAttempt
from montage_ray.encoders.records import JobSettings

try:  # an actor that is restarting or whose node is unreachable
    from ray.exceptions import ActorUnavailableError
except ImportError:  # pragma: no cover
    ActorUnavailableError = RayActorError  # type: ignore[misc,assignment]

try:  # an actor pinned to a node that was removed (a detached service actor started as its node went away)
    from ray.exceptions import ActorUnschedulableError
except ImportError:  # pragma: no cover
    ActorUnschedulableError = RayActorError  # type: ignore[misc,assignment]

#: Errors that mean "this actor (or its node) is gone": resubmit elsewhere.
ACTOR_GONE = (RayActorError, ActorUnavailableError, ActorUnschedulableError, ObjectLostError, GetTimeoutError)


def actor_options(p: Placement, *, reserve_cpu: bool = True) -> dict[str, Any]:
    """Ray options that pin an encoder actor to its slot: one CPU for a CPU slot (none with ``reserve_cpu``
    False: the encoder service reserves it only while the actor works), else one unit of the label's resource,
    on the placement's node."""
    options: dict[str, Any] = ({"num_cpus": 1 if reserve_cpu else 0} if p.label == "cpu"
                               else {"num_cpus": 0, "resources": {p.label: 1}})
    if p.node_id:
        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=p.node_id, soft=False)
    return options


def serves_as_standin(label: str, cfg: LabelConfig | None) -> bool:
    """Whether the encoders config makes a CPU stand-in serve the hardware ``label``."""
    return cfg is not None and cfg.label == label and cfg.stands_in


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
    slot: str = ""             # the service's actor name (its scheduler's key); "" for a registry's actor
    config: LabelConfig | None = None  # the job's label config, sent with each call to a shared actor
    shared: bool = False       # an actor of the service (montage_ray.cluster.service), shared with other jobs
    backend: str = ""          # the backend its spec resolved to on its node ("cpu" for a stand-in)
    hardware: bool = False     # it encodes on a device
    standin: bool = False      # a CPU stand-in serving a hardware label
    copies: bool = False       # the pass-through stand-in: it copies packets, and cannot drop any
    ffmpeg_build: str = ""     # the build of the ffmpeg it encodes with (FFmpegCaps.build), once ready

    def learn(self, info: Mapping[str, Any]) -> None:
        """Take what the actor's ``describe`` said about itself and its encoder."""
        self.encoder, self.hostname, self.node = info.get("encoder", ""), info.get("hostname", ""), info.get("node", "")
        self.pid, self.ffmpeg_build = info.get("pid", 0), info.get("ffmpeg_build", "")
        self.backend, self.standin = info.get("backend", ""), bool(info.get("standin", False))
        self.hardware = bool(info.get("hardware", self.label != "cpu"))
        self.copies = bool(info.get("copies", False))

    def call_options(self) -> dict[str, Any]:
        """Keyword arguments of each call to a shared actor: the job's label config and its name for it."""
        return {"config": self.config, "name": self.name} if self.shared else {}


class WorkerRegistry:
    """The encoder actors of one Ray session, by resource slot; reused across that session's jobs."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, str, int], tuple[LabelConfig | None, Worker]] = {}  # slot -> (config, worker)
        self._used_names: set[str] = set()     # actor names are unique in a namespace, even once killed
        self._generation = itertools.count(1)
        self._drains: list[threading.Thread] = []

    @property
    def workers(self) -> list[Worker]:
        """The actors this registry holds now."""
        return [w for _, w in self._held.values()]

    def start(self, placements: Sequence[Placement], config: Mapping[str, LabelConfig], *,
              reuse: bool = True) -> list[Worker]:
        """An actor per placement, pinned to its node; the live actor of a slot is reused when its setup is
        the same, replaced when it is not. Idle actors of the encoder service on those slots are stopped
        first (they would hold the slots this registry's actors need)."""
        reused = [self._reuse(p, config.get(p.label), reuse) for p in placements]
        reclaim({(p.node_id, p.label) for p, w in zip(placements, reused) if w is None})
        return [w or self._start(p, config.get(p.label)) for p, w in zip(placements, reused)]

    def _reuse(self, p: Placement, cfg: LabelConfig | None, reuse: bool) -> Worker | None:
        held = self._held.get((p.node_id, p.label, p.index))  # one slot: one actor at a time holds it
        if held is None:
            return None
        w = held[1]
        if reuse and w.alive and held[0] == cfg and w.placement == p:
            w.in_flight, w.failures = 0, 0
            return w
        self.stop([w])  # another setup of the same slot: free the CPU or device for the new actor
        return None

    def _start(self, p: Placement, cfg: LabelConfig | None) -> Worker:
        name = p.name + (":stand-in" if serves_as_standin(p.label, cfg) else "")
        if name in self._used_names:  # an older setup of the slot may still hold the name
            name += f"~{next(self._generation)}"
        self._used_names.add(name)
        actor = EncoderActor.options(name=name, **actor_options(p)).remote(p.label, cfg, name)
        fps = cfg.expected_fps if cfg and cfg.expected_fps else 0.0
        w = Worker(actor=actor, name=name, label=p.label, placement=p, fps=fps, base_fps=fps)
        self._held[(p.node_id, p.label, p.index)] = (cfg, w)
        return w

    def wait_ready(self, workers: Sequence[Worker], settings: JobSettings, timeout: float = 60.0
                   ) -> tuple[list[Worker], list[FailedAttempt]]:
        """The workers that start and can serve ``settings`` within ``timeout``; the others (stopped) with
        why not."""
        pending = {w.actor.describe.remote(settings): w for w in workers}
        ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=timeout)
        ok, bad = [], []
        for ref, w in pending.items():
            if ref not in ready:
                bad.append(FailedAttempt(-1, 0, w.label, w.name, "not-scheduled",
                                         f"{w.name} did not start within {timeout:.0f} s (no node offers it any more?)"))
                self.stop([w])
            elif (failed := self.learn(ref, w)) is not None:
                bad.append(failed)
            else:
                ok.append(w)
        return ok, bad

    def wait_first(self, workers: Sequence[Worker], settings: JobSettings, timeout: float = 60.0,
                   grace: float = 0.1) -> tuple[list[Worker], list[FailedAttempt], "Starting"]:
        """Like :meth:`wait_ready`, but back as soon as one worker is ready (and those ready ``grace`` seconds
        later): the others are still :class:`Starting`, for the pool to take as they come. On a fresh Ray every
        actor is a new process that must import its modules and ask its ffmpeg what it can do; waiting for the
        last of 16 kept the first segment back by 1-2 s."""
        pending = {w.actor.describe.remote(settings): w for w in workers}
        ok: list[Worker] = []
        bad: list[FailedAttempt] = []
        deadline = time.monotonic() + timeout
        while pending and not ok and time.monotonic() < deadline:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if done:
                done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=grace)
            for ref in done:
                w = pending.pop(ref)
                failed = self.learn(ref, w)
                ok += [w] if failed is None else []
                bad += [failed] if failed is not None else []
        if not ok:  # nothing started: the others are reported as wait_ready would
            for w in pending.values():
                bad.append(FailedAttempt(-1, 0, w.label, w.name, "not-scheduled",
                                         f"{w.name} did not start within {timeout:.0f} s (no node offers it any more?)"))
                self.stop([w])
            pending = {}
        return ok, bad, Starting(self, pending, encoder={w.encoder for w in ok})

    def learn(self, ref: Any, w: Worker) -> FailedAttempt | None:
        """Take the answer ``ref`` of ``w.describe``: None when ``w`` is ready (it learnt what it encodes
        with), else why not (and ``w`` is stopped)."""
        try:
            info = ray.get(ref)
        except RayTaskError as err:
            why = ("unavailable", first_line(err.cause if isinstance(err.cause, BaseException) else err))
        except ACTOR_GONE as err:
            why = ("actor-died", first_line(err))
        else:
            w.learn(info)
            return None
        self.stop([w])
        return FailedAttempt(-1, 0, w.label, w.name, *why)

    def stop(self, workers: Iterable[Worker] | None = None) -> None:
        """Kill actors (every one this registry holds when ``workers`` is None); their ffmpeg children die
        with them, and their slots are free for the next start."""
        doomed = list(workers) if workers is not None else self.workers
        for key, (_, w) in list(self._held.items()):
            if any(w is d for d in doomed):
                del self._held[key]
        for w in doomed:
            w.alive = False
            try:
                ray.kill(w.actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass

    def drain(self, refs: list[Any]) -> None:
        """Cancel the tasks ``refs`` and collect their answers beside the job (so that Ray does not report
        them as unhandled errors later)."""
        for ref in refs:
            ray.cancel(ref)
        if refs:
            thread = threading.Thread(target=_collect, args=(refs,), name="montage-drain", daemon=True)
            self._drains.append(thread)
            thread.start()

    def join_drains(self, timeout: float = 5.0) -> None:
        """Wait (at most ``timeout`` seconds in all) for the collection of cancelled tasks to end."""
        deadline = time.monotonic() + timeout
        while self._drains:
            self._drains.pop().join(max(0.0, deadline - time.monotonic()))



class Starting:
    """Actors of a job that were still starting when its first segment went out
    (:meth:`WorkerRegistry.wait_first`). The pool waits on their ``describe`` answers beside its segments' and
    takes each actor the moment it is ready (:meth:`take`); one that failed to start is stopped and kept in
    :attr:`unavailable`, and so is one that would encode with another encoder than the ready ones (one job's
    segments are joined as one stream: that needs them to agree).

        ready, unavailable, starting = registry.wait_first(workers, settings)
        for seg, result, data in EncoderPool(ready).run(segments, load=load, settings=settings,
                                                        starting=starting):
            ...
    """

    def __init__(self, registry: WorkerRegistry, pending: Mapping[Any, Worker], encoder: set[str]) -> None:
        self.registry = registry
        self.pending = dict(pending)  # describe ref -> worker
        self.encoder = set(encoder)
        self.unavailable: list[FailedAttempt] = []

    def __bool__(self) -> bool:
        return bool(self.pending)

    @property
    def workers(self) -> list[Worker]:
        """The workers still starting."""
        return list(self.pending.values())

    def keep(self, count: int) -> None:
        """Wait for at most ``count`` of them (a job of few segments needs no more actors); the others start
        for a later job of this Ray, their answers collected off the job's path."""
        extra = list(self.pending)[max(0, count):]
        for ref in extra:
            del self.pending[ref]
        self.registry.drain(extra)

    def take(self, ref: Any) -> Worker | None:
        """The worker whose answer ``ref`` is, if it is ready to serve this job."""
        w = self.pending.pop(ref)
        failed = self.registry.learn(ref, w)
        if failed is None and self.encoder and w.encoder not in self.encoder:
            self.registry.stop([w])
            failed = FailedAttempt(-1, 0, w.label, w.name, "unavailable",
                                   f"{w.name} encodes with {w.encoder}, the job's other encoders with "
                                   f"{', '.join(sorted(self.encoder))}")
        if failed is not None:
            self.unavailable.append(failed)
            return None
        return w

    def close(self) -> None:
        """The job is done with them: those still starting are left to start for a later job."""
        self.keep(0)


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
