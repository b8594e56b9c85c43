"""The encoder service: long-lived encoder actors shared by every driver of a cluster, and their scheduler.

A job on a shared Ray (an ``--address``, ``$RAY_ADDRESS``, or a Ray the caller connected) does not start
encoder actors of its own. It asks the service, which keeps **one detached actor per resource slot** (named
``encoder:<label>:<node>:<slot>`` in the ``montage-ray`` namespace, started on demand with
``get_if_exists``) for every driver of the cluster: CLI jobs, Ray Jobs, notebooks. Each call brings the job's
settings and label config, so jobs with other codecs, presets, qualities or stand-ins share the actors
without a restart. The scheduler (:mod:`montage_ray.cluster.scheduler`, detached too) hands out the
actors' **tickets**: fair share between jobs, ``priority`` first, while each job's pool keeps its own
speed-aware plan and tail duplicates. A driver that stops heart-beating (it was killed) loses its tickets
after ``grace`` seconds and the actors drop its segments; an actor idle for ``idle`` seconds is stopped::

    from montage_ray.cluster.service import Service

    service = Service()                                   # connect to Ray first
    workers = service.start(placements(ray.nodes()), config={})
    ready, unavailable = service.wait_ready(workers, settings)
    lease = service.lease(settings.job_id, priority=10, frames=900, segments=8)
    for segment, result, data in EncoderPool(ready, gate=lease).run(segments, ...):
        ...
    lease.close()
    service.status()                                      # actors, jobs (progress, share), queue
    service.stop(force=True)                              # every actor of the service, now

``$MONTAGE_SERVICE_IDLE`` and ``$MONTAGE_SERVICE_GRACE`` (seconds) set the idle time and the grace period
when the scheduler is first started; ``montage-ray status`` and ``montage-ray service stop`` use the same.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Mapping, Sequence

import ray
from ray.exceptions import RayTaskError

from montage_ray.cluster.actor import EncoderActor
from montage_ray.cluster.nodes import Placement
from montage_ray.cluster.scheduler import (GRACE_SECONDS, IDLE_SECONDS, NAMESPACE, SCHEDULER_NAME,
                                           SchedulerActor, existing_scheduler)
from montage_ray.cluster.workers import ACTOR_GONE, Worker, actor_options, serves_as_standin
from montage_ray.encoders.config import LabelConfig
from montage_ray.errors import ClusterError, InputError, first_line
from montage_ray.encoders.records import FailedAttempt
from montage_ray.encoders.records import JobSettings

log = logging.getLogger(__name__)

#: The named actor (in the service's namespace) that keeps the last ``service stop --force``: when, which jobs.
STOPPED_NAME = "montage-service-stopped"

#: A resource only Ray's head node has: the scheduler never lives on a node that may go away.
HEAD_RESOURCE = "node:__internal_head__"


@ray.remote(num_cpus=0, max_restarts=0)
class StopRecord:
    """What the last ``service stop --force`` stopped, kept on the head after the service's actors are gone, so
    that the drivers of the stopped jobs can say why their encoders vanished."""

    def __init__(self) -> None:
        self._record: dict[str, Any] | None = None

    def set(self, record: dict[str, Any]) -> None:
        self._record = record

    def get(self) -> dict[str, Any] | None:
        return self._record


def _seconds(env: str, default: float) -> float:
    raw = os.environ.get(env, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        raise InputError(f"{env}={raw!r} is not a number of seconds") from None
    if value <= 0:
        raise InputError(f"{env} must be more than 0 seconds, not {raw!r}")
    return value


def enabled() -> bool:
    """Whether jobs on a shared Ray use the service (unless ``$MONTAGE_RAY_SERVICE=0``)."""
    return os.environ.get("MONTAGE_RAY_SERVICE", "1") != "0"


class Service:
    """The encoder service of the connected Ray, as one driver sees it."""

    def __init__(self, idle: float | None = None, grace: float | None = None) -> None:
        self.idle = idle if idle is not None else _seconds("MONTAGE_SERVICE_IDLE", IDLE_SECONDS)
        self.grace = grace if grace is not None else _seconds("MONTAGE_SERVICE_GRACE", GRACE_SECONDS)
        self._scheduler: Any = None
        self._last: dict[str, Worker] = {}   # each slot's worker of this driver's last job: its measured speed

    @property
    def scheduler(self) -> Any:
        """The scheduler actor (started by the first driver that needs it)."""
        if self._scheduler is None:
            self._scheduler = SchedulerActor.options(
                name=SCHEDULER_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                resources={HEAD_RESOURCE: 0.001}).remote(self.idle, self.grace)
        return self._scheduler

    # -- the actors ----------------------------------------------------------------------------------
    def start(self, placements: Sequence[Placement], config: Mapping[str, LabelConfig], *, job: str = ""
              ) -> list[Worker]:
        """The service's actor of each placement (started when none runs there), as this job's workers (not
        stopped for idleness while the lease of ``job`` is open)."""
        workers = [self._worker(p, config.get(p.label)) for p in placements]
        try:
            ray.get(self.scheduler.register.remote(
                [{"name": w.slot, "node": p.node, "label": p.label, "node_id": p.node_id}
                 for w, p in zip(workers, placements)], job), timeout=60)
        except Exception as err:  # noqa: BLE001 - the scheduler is gone: one line, exit 6
            raise ClusterError(f"the encoder service's scheduler does not answer: {first_line(err)}") from None
        return workers

    def _worker(self, p: Placement, cfg: LabelConfig | None) -> Worker:
        actor = EncoderActor.options(name=p.name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                                     **actor_options(p, reserve_cpu=False)).remote(p.label, None, p.name)
        standin = serves_as_standin(p.label, cfg)
        fps = cfg.expected_fps if cfg and cfg.expected_fps else 0.0
        worker = Worker(actor=actor, name=p.name + (":stand-in" if standin else ""), label=p.label, placement=p,
                        fps=fps, base_fps=fps, slot=p.name, config=cfg, shared=True)
        last = self._last.get(worker.name)
        if last is not None and last.fps > 0:  # measured by this driver's last job (the pool resets it when the
            worker.fps, worker.fps_for = last.fps, last.fps_for   # job's setup differs): no slow start again
        self._last[worker.name] = worker
        return worker

    def wait_ready(self, workers: Sequence[Worker], settings: JobSettings, timeout: float = 60.0
                   ) -> tuple[list[Worker], list[FailedAttempt]]:
        """The workers that answer and can serve ``settings`` within ``timeout``; an actor found dying (its
        name not yet free) is started once more. Actors that cannot serve this job stay for others."""
        ok, bad = [], []
        pending = {w.actor.describe.remote(settings, config=w.config): w for w in workers}
        deadline = time.monotonic() + timeout
        retried: set[str] = set()
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            for ref in ready:
                w = pending.pop(ref)
                try:
                    info = ray.get(ref)
                except RayTaskError as err:
                    cause = err.cause if isinstance(err.cause, BaseException) else err
                    bad.append(FailedAttempt(-1, 0, w.label, w.name, "unavailable", first_line(cause)))
                    continue
                except ACTOR_GONE as err:
                    if w.slot not in retried and w.placement is not None:
                        retried.add(w.slot)
                        time.sleep(0.5)  # the dead actor's name is freed a moment after its death
                        fresh = self._worker(w.placement, w.config)
                        pending[fresh.actor.describe.remote(settings, config=fresh.config)] = fresh
                        continue
                    bad.append(FailedAttempt(-1, 0, w.label, w.name, "actor-died", first_line(err)))
                    continue
                w.learn(info)
                ok.append(w)
        for ref, w in pending.items():  # never scheduled: no node offers the slot now; do not leave it pending
            bad.append(FailedAttempt(-1, 0, w.label, w.name, "not-scheduled",
                                     f"{w.name} did not start within {timeout:.0f} s (no node offers it any more?)"))
            ray.cancel(ref)
            try:
                ray.kill(w.actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        order = {id(w): i for i, w in enumerate(workers)}
        ok.sort(key=lambda w: order.get(id(w), len(order)))
        return ok, bad

    # -- jobs ----------------------------------------------------------------------------------------
    def lease(self, job_id: str, *, priority: int = 0, frames: int = 0, segments: int = 0) -> "JobLease":
        """Open ``job_id`` at the scheduler; the lease asks for and gives back tickets and heart-beats."""
        return JobLease(self.scheduler, job_id, priority=priority, frames=frames, segments=segments,
                        beat=min(1.0, self.grace / 4))

    # -- the whole service ---------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The scheduler's view (actors per node and label, jobs, queue) and the service's named actors."""
        scheduler = existing_scheduler()
        out: dict[str, Any] = {"running": scheduler is not None, "actors": [], "jobs": [], "queue": []}
        if scheduler is not None:
            try:
                out.update(ray.get(scheduler.status.remote(), timeout=30))
            except ACTOR_GONE:  # stopped a moment ago
                out["running"] = False
        out["named"] = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                              if a.get("namespace") == NAMESPACE and a["name"].startswith("encoder:"))
        return out

    def stop(self, *, force: bool = False) -> dict[str, Any]:
        """Stop every actor of the service and the scheduler, now: ``{"actors": names, "jobs": the jobs in
        flight that it stopped}``. With jobs in flight, only with ``force`` (else InputError in one line); their
        drivers then fail with one line that says the service was stopped (a record kept on the head). Each actor
        first ends its running encode and cleans up after it (its scratch folder), then it is killed."""
        scheduler = existing_scheduler()
        jobs: list[dict[str, Any]] = []
        if scheduler is not None:
            try:
                jobs = ray.get(scheduler.status.remote(), timeout=30)["jobs"]
            except Exception:  # noqa: BLE001 - a dead scheduler knows of no job
                pass
        if jobs and not force:
            running = ", ".join(f"{j['job']} ({j['segments_done']}/{j['segments']} segments)" for j in jobs)
            raise InputError(f"{len(jobs)} job{'s are' if len(jobs) > 1 else ' is'} running on the encoder service: "
                             f"{running}; stopping the service stops {'them' if len(jobs) > 1 else 'it'}: pass "
                             "--force to do it anyway")
        if jobs:
            record = StopRecord.options(name=STOPPED_NAME, namespace=NAMESPACE, lifetime="detached",
                                        get_if_exists=True, resources={HEAD_RESOURCE: 0.001}).remote()
            ray.get(record.set.remote({"at": time.time(), "jobs": [j["job"] for j in jobs]}), timeout=30)
        handles = {}
        for name in [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                     if a.get("namespace") == NAMESPACE and a["name"].startswith("encoder:")]:
            try:
                handles[name] = ray.get_actor(name, namespace=NAMESPACE)
            except Exception:  # noqa: BLE001 - stopped meanwhile
                pass
        quiet = [h.quiesce.remote() for h in handles.values()]
        if quiet:  # each ends its encode and removes its scratch folder (a kill mid-encode leaves it behind)
            ray.wait(quiet, num_returns=len(quiet), timeout=15)
        stopped: list[str] = []
        if scheduler is not None:
            try:
                stopped = ray.get(scheduler.stop_all.remote(), timeout=60)
            except Exception:  # noqa: BLE001 - a dead scheduler: its actors are stopped by name below
                pass
        for name, handle in handles.items():
            try:
                ray.kill(handle, no_restart=True)
                stopped.append(name)
            except Exception:  # noqa: BLE001 - stopped meanwhile
                pass
        if scheduler is not None:
            ray.kill(scheduler, no_restart=True)
        self._scheduler = None
        return {"actors": sorted(set(stopped)), "jobs": jobs}


def stopped_while(job_ids: Sequence[str], since: float) -> str:
    """One line when ``montage-ray service stop --force`` stopped one of ``job_ids`` (or the service after
    ``since``, a time.time()), from the record it left on the head; "" otherwise."""
    try:
        record = ray.get(ray.get_actor(STOPPED_NAME, namespace=NAMESPACE).get.remote(), timeout=10)
    except Exception:  # noqa: BLE001 - no record, or Ray is gone: say nothing more than the job's own error
        return ""
    if not record or not (set(job_ids) & set(record.get("jobs", [])) or record.get("at", 0) >= since):
        return ""
    at = time.strftime("%H:%M:%S", time.localtime(record["at"]))
    return (f"the encoder service was stopped at {at} (`montage-ray service stop --force`) while this job ran; "
            "nothing was written: run the job again (the segments it finished are reused)")


class JobLease:
    """One job's dealings with the scheduler: tickets asked for and given back, a heartbeat while it runs.

    The pool (:class:`~montage_ray.cluster.pool.EncoderPool`) calls :meth:`grant` before it sends segments
    and :meth:`release` as they answer. Should the scheduler be gone, every ticket is granted (the job goes
    on as if alone); should it have closed this job (the driver was silent too long), the job opens again.
    """

    def __init__(self, scheduler: Any, job: str, *, priority: int = 0, frames: int = 0, segments: int = 0,
                 beat: float = 1.0) -> None:
        self._scheduler = scheduler
        self.job = job             # the scheduler's key; a new one if the job must open again
        self.job_id = job
        self.priority = priority
        self._driver = ray.get_runtime_context().get_job_id()
        self.opened_at = time.time()
        self._opened = 1
        self._open_args = (job, priority, self._driver, frames, segments)
        self.frames_done = 0
        self.segments_done = 0
        self._alone = False
        self._stop = threading.Event()
        try:
            ray.get(scheduler.open.remote(*self._open_args), timeout=60)
        except Exception as err:  # noqa: BLE001
            raise ClusterError(f"the encoder service's scheduler does not answer: {first_line(err)}") from None
        self._beat = threading.Thread(target=self._beat_forever, args=(beat,), name="montage-heartbeat",
                                      daemon=True)
        self._beat.start()

    def _beat_forever(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                self._scheduler.heartbeat.remote(self.job, self.frames_done, self.segments_done)
            except Exception:  # noqa: BLE001 - Ray shutting down
                return

    def grant(self, wants: Mapping[str, int], standing: bool = True) -> dict[str, int]:
        """Tickets granted now of ``{slot: count}`` (see :meth:`FairShare.grant` for ``standing``)."""
        if self._alone:
            return dict(wants)
        try:
            got = ray.get(self._scheduler.grant.remote(self.job, dict(wants), standing), timeout=30)
            if got is None:  # closed for silence (this driver stalled): open again, under a new key (the
                # actors dropped the old one's segments)
                log.warning("job %s: the scheduler had closed the job; opening it again", self.job)
                self._opened += 1
                self.job = f"{self.job_id}.{self._opened}"
                self._open_args = (self.job, *self._open_args[1:])
                ray.get(self._scheduler.open.remote(*self._open_args), timeout=30)
                got = ray.get(self._scheduler.grant.remote(self.job, dict(wants), standing), timeout=30) or {}
            return got
        except Exception as err:  # noqa: BLE001 - no scheduler: go on alone rather than stop
            log.warning("job %s: the scheduler does not answer (%s); going on without it", self.job,
                        first_line(err))
            self._alone = True
            return dict(wants)

    def release(self, counts: Mapping[str, int]) -> None:
        """Give back tickets (segments that answered or were cancelled); never waits."""
        counts = {k: v for k, v in counts.items() if v > 0}
        if counts and not self._alone:
            try:
                self._scheduler.release.remote(self.job, counts)
            except Exception:  # noqa: BLE001
                pass

    def update(self, *, frames: int, segments: int) -> None:
        """The job's size, once planned (for ``montage-ray status``)."""
        self._open_args = (*self._open_args[:3], frames, segments)
        try:
            self._scheduler.open.remote(*self._open_args)
        except Exception:  # noqa: BLE001
            pass

    def progress(self, frames: int, segments: int = 1) -> None:
        self.frames_done += frames
        self.segments_done += segments

    def stopped(self) -> str:
        """One line when the service was stopped (``montage-ray service stop --force``) while this job ran."""
        keys = [self.job_id] + [f"{self.job_id}.{n}" for n in range(2, self._opened + 1)]
        return stopped_while(keys, self.opened_at)

    def close(self) -> None:
        """The job is over: its tickets are free for the others."""
        self._stop.set()
        try:
            ray.get(self._scheduler.close.remote(self.job), timeout=30)
        except Exception:  # noqa: BLE001 - the scheduler's reaper closes it after the grace period anyway
            pass
