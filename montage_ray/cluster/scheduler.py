"""Who may send the next segment to an encoder slot: fair share between jobs, priority first.

Every encoder slot of the service (see :mod:`montage_ray.cluster.service`) holds at most ``depth``
**tickets**: one per segment sent to its actor and not answered yet (the one encoding and the one queued
behind it). A job's driver asks for tickets before it sends segments (``grant``) and gives each back when
the segment answers (``release``); its own pool still decides which of its segments goes where (the
earliest-finish plan, tail duplicates). The scheduler decides only *whose turn it is* on a slot:

- a job with a higher ``priority`` wanting a slot goes first (a preview before a render);
- between jobs of the same priority, the one holding fewer tickets in all goes first (fair share), then the
  older one;
- a ticket is left free for a better-placed job that asked for the slot lately (``demand_ttl``), so a job
  that only polls still gets its turn;
- a share floor: a job that has asked for ``starve`` seconds (30) without holding a single ticket gets the
  next free one on a slot it asks for, whatever the priorities (previews arriving one after another would
  otherwise hold a render at 14 of 15 segments for as long as they keep coming);
- a job whose driver stopped heart-beating for ``grace`` seconds (it was killed) loses its tickets, and
  the actors are told to drop its segments: nothing runs on its behalf afterwards.

:class:`FairShare` is the pure state (table-tested); :class:`SchedulerActor` is the detached named actor
that holds it for the cluster, stops encoder actors idle for ``idle`` seconds and exports the state as
Ray metrics. The service's CPU actors reserve no CPU of their own (Ray cannot change an actor's reservation):
while a CPU slot holds tickets, and ``HOLD_LINGER`` seconds after, the scheduler reserves its CPU with a
one-bundle placement group on the slot's node, so an idle service leaves the cluster's CPUs to other Ray work
(a plain ``@ray.remote(num_cpus=1)`` task) and a busy one keeps them from it::

    share = FairShare(depth=2)
    share.register("encoder:cpu:n:0", node="n", label="cpu", now=0)
    share.open("render", priority=0, now=0)
    share.open("preview", priority=10, now=0)
    share.grant("render", {"encoder:cpu:n:0": 2}, now=1)    # {'encoder:cpu:n:0': 2}
    share.release("render", "encoder:cpu:n:0", now=2)
    share.grant("preview", {"encoder:cpu:n:0": 2}, now=2)   # {'encoder:cpu:n:0': 1}: the freed ticket
    share.grant("render", {"encoder:cpu:n:0": 1}, now=2)    # {}: the preview wants the slot and goes first
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import ray

from montage_ray.errors import first_line
from montage_ray.util import metrics

log = logging.getLogger(__name__)

#: The node label Ray gives every node: its id (what a placement group's bundle is pinned by).
NODE_ID_LABEL = "ray.io/node-id"

#: Where the service lives (the ledger's namespace) and the scheduler's name.
NAMESPACE, SCHEDULER_NAME = "montage-ray", "montage-scheduler"

#: Defaults: seconds an encoder actor may stay idle, seconds a silent driver keeps its tickets.
IDLE_SECONDS, GRACE_SECONDS = 300.0, 10.0

#: Seconds a refused ask keeps counting as demand (a driver polls well within it).
DEMAND_TTL = 2.0

#: Seconds a job may ask without holding a ticket before it gets one whatever the priorities (the share floor).
STARVE_SECONDS = 30.0

#: Seconds a CPU slot keeps its CPU reserved after its last ticket (the next segment of a job comes at once).
HOLD_LINGER = 5.0


@dataclass
class SlotState:
    """One encoder actor of the service and the tickets held on it."""

    name: str
    node: str = ""
    label: str = ""
    node_id: str = ""
    held: dict[str, int] = field(default_factory=dict)   # job -> tickets
    last_used: float = 0.0                                # when its last ticket was granted or given back

    def free(self, depth: int) -> int:
        return depth - sum(self.held.values())


@dataclass
class JobState:
    """One job in flight: its driver's last word, what it holds and wants, how far it is."""

    job: str
    priority: int = 0
    opened: float = 0.0
    seen: float = 0.0                                      # last heartbeat, ask or release
    driver: str = ""                                       # Ray's job id of the driver (to see it die)
    slots: set[str] = field(default_factory=set)          # slots it may use (never stopped while it runs)
    wants: dict[str, int] = field(default_factory=dict)   # slot -> tickets of its last ask (its demand)
    unmet: dict[str, int] = field(default_factory=dict)   # slot -> tickets of that ask not granted (the queue)
    active: bool = False                                   # it has work to send (a standing ask, not withdrawn)
    waiting_since: float | None = None                     # asking, holding no ticket, since (the share floor)
    floor: bool = False                                    # it starved: one ticket is its due while it asks
    asked: float = 0.0
    held: int = 0
    granted: int = 0                                       # tickets ever granted
    frames_total: int = 0
    frames_done: int = 0
    segments_total: int = 0
    segments_done: int = 0


class FairShare:
    """Tickets per slot, granted by priority, then fair share; pure (every method takes ``now``)."""

    def __init__(self, depth: int = 2, grace: float = GRACE_SECONDS, demand_ttl: float = DEMAND_TTL,
                 starve: float = STARVE_SECONDS) -> None:
        self.depth = depth
        self.grace = grace
        self.demand_ttl = demand_ttl
        self.starve = starve
        self.slots: dict[str, SlotState] = {}
        self.jobs: dict[str, JobState] = {}

    # -- slots -------------------------------------------------------------------------------------
    def register(self, name: str, *, node: str = "", label: str = "", node_id: str = "", job: str = "",
                 now: float) -> None:
        """An encoder actor of the service (started or found by a driver for ``job``); its idle clock starts
        now, and it is not stopped while ``job`` is open."""
        slot = self.slots.setdefault(name, SlotState(name, node, label, node_id, last_used=now))
        slot.node, slot.label, slot.node_id = node or slot.node, label or slot.label, node_id or slot.node_id
        slot.last_used = max(slot.last_used, now)
        if job in self.jobs:
            self.jobs[job].slots.add(name)

    def forget(self, name: str) -> None:
        """The slot's actor is gone (stopped, or its node died): its tickets go with it."""
        slot = self.slots.pop(name, None)
        for job, n in (slot.held if slot else {}).items():
            if job in self.jobs:
                self.jobs[job].held -= n

    def idle(self, idle: float, now: float, *, node_id: str | None = None, label: str | None = None) -> list[str]:
        """Slots holding no ticket for ``idle`` seconds and used by no open job (of ``node_id``/``label`` when
        given)."""
        used = set().union(*(j.slots for j in self.jobs.values())) if self.jobs else set()
        return [s.name for s in self.slots.values() if not s.held and s.name not in used
                and now - s.last_used >= idle
                and (node_id is None or s.node_id == node_id) and (label is None or s.label == label)]

    # -- jobs --------------------------------------------------------------------------------------
    def open(self, job: str, *, priority: int = 0, driver: str = "", frames: int = 0, segments: int = 0,
             now: float) -> None:
        state = self.jobs.setdefault(job, JobState(job, priority, opened=now))
        state.priority, state.driver, state.seen = priority, driver or state.driver, now
        state.frames_total, state.segments_total = frames or state.frames_total, segments or state.segments_total

    def close(self, job: str, *, now: float) -> list[str]:
        """The job is over (or its driver is gone): every ticket it held is free. Returns the slots where it
        held tickets (where something may still run on its behalf)."""
        self.jobs.pop(job, None)
        held = []
        for slot in self.slots.values():
            if slot.held.pop(job, None):
                slot.last_used = max(slot.last_used, now)
                held.append(slot.name)
        return held

    def heartbeat(self, job: str, *, frames_done: int | None = None, segments_done: int | None = None,
                  now: float) -> bool:
        """The driver is alive (and how far it is); False when the job was already closed for silence."""
        state = self.jobs.get(job)
        if state is None:
            return False
        state.seen = now
        if frames_done is not None:
            state.frames_done = frames_done
        if segments_done is not None:
            state.segments_done = segments_done
        return True

    def silent(self, now: float) -> list[str]:
        """Jobs whose driver has said nothing for ``grace`` seconds."""
        return [j.job for j in self.jobs.values() if now - j.seen > self.grace]

    # -- tickets -----------------------------------------------------------------------------------
    def _claim(self, job: JobState) -> tuple:
        return (-job.priority, job.held, job.opened, job.job)   # lower goes first

    def grant(self, job: str, wants: dict[str, int], *, now: float, standing: bool = True) -> dict[str, int]:
        """Tickets for ``job`` of the ``{slot: count}`` it asks for (its preferred slots first).

        A ``standing`` ask is the job's demand until it asks again (an empty ask withdraws it) while its
        driver heart-beats: a job of a higher priority keeps the slots it asked for whole, and what a job of
        the same priority with a better claim did not get is kept for it. A tail ask (``standing=False``:
        copies of straggling segments) keeps nothing for the job."""
        state = self.jobs.get(job)
        if state is None:
            return {}
        state.seen = state.asked = now
        asked = {n: c for n, c in wants.items() if c > 0}
        state.wants = asked if standing else {}
        state.active = standing and bool(asked)
        starved = self.starving(state, now)
        out: dict[str, int] = {}
        for name, count in asked.items():
            slot = self.slots.get(name)
            if slot is None:
                continue
            state.slots.add(name)
            while out.get(name, 0) < count and slot.free(self.depth) > 0 and not self._kept(state, slot, now):
                slot.held[job] = slot.held.get(job, 0) + 1
                slot.last_used = now
                state.held += 1
                state.granted += 1
                out[name] = out.get(name, 0) + 1
        state.unmet = {n: c - out.get(n, 0) for n, c in state.wants.items() if c > out.get(n, 0)}
        if not state.active:  # nothing more to send: it waits for nobody
            state.waiting_since, state.floor = None, False
        elif state.held == 0:
            state.waiting_since = state.waiting_since if state.waiting_since is not None else now
        else:
            state.waiting_since = None
            state.floor = state.floor or (starved and bool(out))
        return out

    def starving(self, job: JobState, now: float) -> bool:
        """The job holds no ticket and has asked for ``starve`` seconds, or starved before and still asks:
        one ticket is its due (the share floor), whatever the priorities."""
        waited = job.waiting_since is not None and now - job.waiting_since >= self.starve
        return job.active and job.held == 0 and (job.floor or waited) and now - job.asked <= self.demand_ttl

    def _kept(self, state: JobState, slot: SlotState, now: float) -> bool:
        """Whether the slot's free tickets are kept for other jobs: a starving job (see :meth:`starving`) that
        asked for the slot keeps it from everyone, the starving job waiting longest first; then a job of a
        higher priority with work to send keeps whole the slots it asks for or holds tickets on; jobs of the
        same priority with a better claim (fewer tickets held) keep as many as they asked for and did not get."""
        mine = self._claim(state)
        rivals = [j for j in self.jobs.values() if j is not state and now - j.seen <= self.demand_ttl]
        starving = [j for j in rivals if self.starving(j, now) and j.unmet.get(slot.name, 0) > 0]
        if self.starving(state, now):  # the one waiting longest first
            return any((j.waiting_since or now) < (state.waiting_since or now) for j in starving)
        if starving and len(starving) >= slot.free(self.depth):  # one ticket each is their due
            return True
        if any(j.priority > state.priority and j.active and (j.wants.get(slot.name, 0) > 0 or slot.held.get(j.job))
               for j in rivals):
            return True
        wanted = sum(j.unmet.get(slot.name, 0) for j in rivals
                     if j.priority == state.priority and self._claim(j) < mine and now - j.asked <= self.demand_ttl)
        return wanted >= slot.free(self.depth)

    def release(self, job: str, name: str, count: int = 1, *, now: float) -> None:
        """``job`` gives back ``count`` tickets of slot ``name`` (its segments there answered)."""
        slot = self.slots.get(name)
        state = self.jobs.get(job)
        if state is not None:
            state.seen = now
        if slot is None:
            return
        n = min(count, slot.held.get(job, 0))
        if n <= 0:
            return
        slot.held[job] -= n
        if not slot.held[job]:
            del slot.held[job]
        slot.last_used = now
        if state is not None:
            state.held -= n

    # -- what is going on ----------------------------------------------------------------------------
    def status(self, now: float) -> dict[str, Any]:
        """Actors, jobs (progress and share of the tickets held) and the queue (tickets asked for)."""
        total = sum(j.held for j in self.jobs.values()) or 1
        actors = [{"name": s.name, "node": s.node, "label": s.label, "busy": bool(s.held),
                   "jobs": dict(s.held), "idle_seconds": 0.0 if s.held else round(now - s.last_used, 1)}
                  for s in sorted(self.slots.values(), key=lambda s: (s.node, s.label, s.name))]
        jobs = [{"job": j.job, "priority": j.priority, "frames": j.frames_total, "frames_done": j.frames_done,
                 "segments": j.segments_total, "segments_done": j.segments_done, "tickets": j.held,
                 "share": round(j.held / total, 3), "granted": j.granted, "seconds": round(now - j.opened, 1),
                 "progress": round(j.frames_done / j.frames_total, 3) if j.frames_total else 0.0}
                for j in sorted(self.jobs.values(), key=self._claim)]
        queue = [{"job": j.job, "priority": j.priority, "wants": dict(j.unmet)}
                 for j in sorted(self.jobs.values(), key=self._claim)
                 if j.unmet and now - j.asked <= self.demand_ttl]
        return {"actors": actors, "jobs": jobs, "queue": queue, "depth": self.depth, "grace": self.grace}


@ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0, max_concurrency=1)
class SchedulerActor:
    """The service's scheduler: a :class:`FairShare` for the cluster, a reaper for silent drivers and idle
    actors, and the metrics. Detached and named (``montage-scheduler`` in ``montage-ray``)."""

    def __init__(self, idle: float = IDLE_SECONDS, grace: float = GRACE_SECONDS, depth: int = 2) -> None:
        self._share = FairShare(depth=depth, grace=grace)
        self._idle = idle
        self._lock = threading.Lock()
        self._dropped: list[str] = []
        self._dead_checked = 0.0
        self._holds: dict[str, Any] = {}   # CPU slot -> the placement group that reserves its CPU while it works
        self._holding = threading.Lock()   # the reaper's thread and stop_all both change the reservations
        self._gauges = metrics.ServiceGauges()  # the status on the dashboard, exported by the reaper
        threading.Thread(target=self._reap_forever, name="montage-reaper", daemon=True).start()

    def settings(self) -> dict[str, float]:
        return {"idle": self._idle, "grace": self._share.grace, "depth": self._share.depth}

    def register(self, slots: list[dict[str, str]], job: str = "") -> None:
        with self._lock:
            for s in slots:
                self._share.register(s["name"], node=s.get("node", ""), label=s.get("label", ""),
                                     node_id=s.get("node_id", ""), job=job, now=time.monotonic())

    def open(self, job: str, priority: int = 0, driver: str = "", frames: int = 0, segments: int = 0) -> None:
        with self._lock:
            self._share.open(job, priority=priority, driver=driver, frames=frames, segments=segments,
                             now=time.monotonic())

    def close(self, job: str) -> None:
        with self._lock:
            self._share.close(job, now=time.monotonic())

    def grant(self, job: str, wants: dict[str, int], standing: bool = True) -> dict[str, int] | None:
        """Tickets granted; None when the job is unknown here (closed for silence: its driver must open again)."""
        with self._lock:
            if job not in self._share.jobs:
                return None
            return self._share.grant(job, wants, now=time.monotonic(), standing=standing)

    def release(self, job: str, counts: dict[str, int]) -> None:
        with self._lock:
            for name, n in counts.items():
                self._share.release(job, name, n, now=time.monotonic())

    def heartbeat(self, job: str, frames_done: int | None = None, segments_done: int | None = None) -> bool:
        with self._lock:
            return self._share.heartbeat(job, frames_done=frames_done, segments_done=segments_done,
                                         now=time.monotonic())

    def status(self) -> dict[str, Any]:
        with self._lock:
            out = self._share.status(time.monotonic())
            for actor in out["actors"]:
                actor["cpu_reserved"] = actor["name"] in self._holds
        out.update(idle=self._idle, dropped=list(self._dropped[-20:]))
        return out

    def reclaim(self, node_id: str, label: str) -> list[str]:
        """Stop the idle actors of ``label`` on ``node_id`` now (a driver outside the service needs the slots)."""
        with self._lock:
            names = self._share.idle(0.0, time.monotonic(), node_id=node_id, label=label)
            for name in names:
                self._share.forget(name)
        _kill(names)
        return names

    def stop_all(self) -> list[str]:
        """Stop every actor of the service and close every job (``montage-ray service stop``)."""
        with self._lock:
            names = list(self._share.slots)
            jobs = list(self._share.jobs)
            for name in names:
                self._share.forget(name)
            for job in jobs:
                self._share.close(job, now=time.monotonic())
        _kill(names)
        self._hold_cpus({})
        return names

    # -- the reaper ----------------------------------------------------------------------------------
    def _reap_forever(self) -> None:
        while True:
            time.sleep(0.5)
            try:
                self._reap()
            except Exception as err:  # noqa: BLE001 - the reaper must go on
                log.warning("service reaper: %s", err)

    def _reap(self) -> None:
        now = time.monotonic()
        with self._lock:
            gone = self._share.silent(now) + [j for j in self._dead_drivers() if j in self._share.jobs]
            holders: dict[str, list[str]] = {}
            for job in dict.fromkeys(gone):
                held = self._share.close(job, now=now)
                if held:  # something may still run (or wait) on its behalf there
                    holders[job] = held
            idle = self._share.idle(self._idle, now)
            for name in idle:
                self._share.forget(name)
            status = self._share.status(now)
            working = {s.name: s.node_id for s in self._share.slots.values()
                       if s.label == "cpu" and s.node_id and (s.held or now - s.last_used < HOLD_LINGER)}
        self._hold_cpus(working)
        for job, names in holders.items():
            log.warning("job %s: its driver is silent or gone; its segments are dropped", job)
            self._dropped.append(job)
            _tell(names, job)
        _kill(idle)
        self._gauges.export(status)

    def _hold_cpus(self, working: dict[str, str]) -> None:
        """Reserve the CPU of each working CPU slot ({slot: node id}) with a placement group pinned to its node,
        and release those of the others. A reservation that cannot be placed at once (a plain task took the
        CPU while the slot was idle) waits for it; the encode does not."""
        from ray.util.placement_group import placement_group, remove_placement_group

        with self._holding:
            self._change_holds(working, placement_group, remove_placement_group)

    def _change_holds(self, working: dict[str, str], placement_group: Any, remove_placement_group: Any) -> None:
        for name in [n for n in self._holds if n not in working]:
            try:
                remove_placement_group(self._holds.pop(name))
            except Exception as err:  # noqa: BLE001 - already gone with its node
                log.info("service: releasing the CPU of %s: %s", name, first_line(err))
        for name, node_id in working.items():
            if name not in self._holds:
                try:
                    self._holds[name] = placement_group([{"CPU": 1}], strategy="STRICT_PACK",
                                                        bundle_label_selector=[{NODE_ID_LABEL: node_id}])
                except Exception as err:  # noqa: BLE001 - the slot works unreserved, as before
                    log.info("service: reserving the CPU of %s: %s", name, first_line(err))

    def _dead_drivers(self) -> list[str]:
        """Jobs whose driver Ray already knows to be dead (faster than the grace period)."""
        drivers = {j.driver: j.job for j in self._share.jobs.values() if j.driver}
        if not drivers or time.monotonic() - self._dead_checked < 2.0:
            return []
        self._dead_checked = time.monotonic()
        try:
            from ray._private.state import state

            dead = {info["JobID"] for info in state.job_table() if info.get("IsDead")}
        except Exception:  # noqa: BLE001 - no such API in this Ray: the heartbeat's grace decides alone
            return []
        return [job for driver, job in drivers.items() if driver in dead]


def _actor(name: str) -> Any:
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return None


def _kill(names: list[str]) -> None:
    for name in names:
        handle = _actor(name)
        if handle is not None:
            try:
                ray.kill(handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
            log.info("service: stopped %s", name)


def _tell(names: list[str], job: str) -> None:
    """Tell each actor to drop ``job``'s segments (the running one stops, queued ones end at once)."""
    for name in names:
        handle = _actor(name)
        if handle is not None:
            try:
                handle.drop.remote(job)
            except Exception:  # noqa: BLE001 - an actor that is gone runs nothing
                pass


def existing_scheduler() -> Any:
    """The scheduler's handle, or None when the service has not started on this cluster."""
    try:
        return ray.get_actor(SCHEDULER_NAME, namespace=NAMESPACE)
    except ValueError:
        return None


def reclaim(slots: set[tuple[str, str]]) -> None:
    """Stop the service's idle actors on these (node id, label) slots, for actors outside the service (a
    :class:`~montage_ray.cluster.workers.WorkerRegistry`) that need them; nothing when there is no service."""
    scheduler = existing_scheduler() if slots else None
    if scheduler is None:
        return
    try:
        for node_id, label in slots:
            stopped = ray.get(scheduler.reclaim.remote(node_id, label), timeout=30)
            if stopped:
                log.info("service: stopped idle %s for a registry of this driver", ", ".join(stopped))
    except Exception as err:  # noqa: BLE001 - the registry then waits for the slots as before
        log.warning("service: could not reclaim slots: %s", first_line(err))
