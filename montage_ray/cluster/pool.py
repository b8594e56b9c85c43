"""The pool that feeds segments to encoder actors: pull-based, speed-aware, with driver-owned retries.

An actor gets its next segment when it has room (``depth`` in flight, so the object store holds a few
segments, never the whole file). The pool keeps each actor's measured speed, gives each worker only the
segments it would finish soonest (an earliest-finish plan), re-issues the slowest in-flight segment to an
idle faster actor at the tail (first result wins, the loser is cancelled), retries failures on other
actors and takes an actor out of rotation after repeated failures or when it dies. The driver owns every
retry: Ray's own task retries are off, because they are spent in seconds when a node dies. A provider's
refusal (quota, session limit: :func:`montage_ray.spending.quota.refuse_label`) takes the whole label out of the job;
the refused try does not count against the segment, and the refusal is kept in ``pool.refusals``.

The state of one run lives on one :class:`_Run` object (what is pending, in flight, copied, failed where,
finished), with ``submit``/``finish``/``fail``; the pool's methods decide and read like their names, as in
Ray's ``util/actor_pool.py``::

    from montage_ray.cluster.pool import EncoderPool

    pool = EncoderPool(ready_workers, registry=registry)
    for segment, result, data in pool.run(segments, load=read_segment, settings=settings):
        save(segment, data)

    # pipelined: segments join the run as they are cut (``ready(wait)`` -> indices newly ready)
    for segment, result, data in pool.run(segments, load=read_segment, settings=settings, ready=cut.ready):
        save(segment, data)

With a ``gate`` (the encoder service's :class:`~montage_ray.cluster.service.JobLease`), the actors are shared
with other jobs: the pool asks the gate for a ticket per segment it means to send (its plan decides which
actors it asks for) and gives it back when the segment answers; the scheduler behind the gate decides whose
turn it is (fair share, priority). A segment that the service dropped (the job was taken for dead) goes back
into the queue without counting as a failure::

    pool = EncoderPool(service_workers, gate=service.lease(job_id, priority=10))
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Protocol, Sequence

import ray
from ray.exceptions import RayTaskError, TaskCancelledError

from montage_ray.util import metrics
from montage_ray.spending import quota
from montage_ray.cluster.workers import ACTOR_GONE, Starting, Worker, WorkerRegistry
from montage_ray.errors import ClusterError, EncoderError, first_line
from montage_ray.media.plan import EncoderCost, Segment
from montage_ray.encoders.backends import default_fps, segment_overhead
from montage_ray.encoders.records import FailedAttempt
from montage_ray.encoders.segment import segment_timeout
from montage_ray.encoders.records import EncodeResult, JobSettings
from montage_ray.encoders.checks import Check, segment_check

log = logging.getLogger(__name__)

#: Called by :meth:`EncoderPool.run` about once a second: ({segment index: frames done}, busy actors).
TickCallback = Callable[[dict[int, int], int], None]

#: Segments that became ready since the last call, waiting up to the given seconds for one (a cutter's
#: :meth:`~montage_ray.media.cut.Cut.ready`); it raises when the segments cannot come.
ReadyFeed = Callable[[float], list[int]]

#: Longest the pool waits on Ray while segments are still being cut, so that new ones go out promptly.
FEED_POLL_SECONDS = 0.05

#: How often a job that the gate kept waiting asks again (the scheduler keeps its turn meanwhile).
GATE_POLL_SECONDS = 0.2


class Gate(Protocol):
    """Who may send to a shared actor now (see :class:`~montage_ray.cluster.service.JobLease`); ``job`` is the
    job's key at the scheduler, sent with each segment."""

    job: str

    def grant(self, wants: Mapping[str, int], standing: bool = True) -> dict[str, int]: ...

    def release(self, counts: Mapping[str, int]) -> None: ...

    def progress(self, frames: int, segments: int = 1) -> None: ...


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


@dataclass
class _Run:
    """The state of one :meth:`EncoderPool.run`: which segment is where, and the three moves on it."""

    pool: "EncoderPool"
    settings: JobSettings
    load: Callable[[Segment], bytes]
    threads: dict[str, int]                                           # worker name -> ffmpeg threads
    total: int
    pending: list[tuple[Segment, int]] = field(default_factory=list)  # (segment, attempt), largest first
    waiting: dict[int, Segment] = field(default_factory=dict)         # index -> segment not cut yet
    feed: ReadyFeed | None = None
    setup: tuple = ()                                                 # (codec, preset, quality, pixels)
    in_flight: dict[Any, _Task] = field(default_factory=dict)         # object ref -> task
    copies: dict[int, set[Any]] = field(default_factory=dict)         # segment index -> its running refs
    failed_on: dict[int, set[str]] = field(default_factory=dict)      # segment index -> workers it failed on
    finished: set[int] = field(default_factory=set)
    allowed: dict[str, int] = field(default_factory=dict)            # worker name -> tickets granted, unused
    next_ask: float = 0.0                                             # monotonic: when to ask the gate again
    kept_waiting: bool = False                                        # the gate refused some of the last ask
    asking: bool = False                                              # the last ask wanted something

    @property
    def done(self) -> bool:
        return len(self.finished) >= self.total

    def arrive(self, wait: float = 0.0) -> None:
        """Move the segments the feed says are ready from ``waiting`` to ``pending`` (the largest first)."""
        if not self.waiting or self.feed is None:
            return
        new = [self.waiting.pop(i) for i in self.feed(wait) if i in self.waiting]
        self.pending.extend((seg, 1) for seg in sorted(new, key=lambda s: -s.frames))

    def submit(self, worker: Worker, seg: Segment, attempt: int, duplicate: bool = False) -> None:
        """Send ``seg`` to ``worker``, with the check it gets there (:meth:`check_for`)."""
        ref = worker.actor.encode.remote(seg, ray.put(self.load(seg)), self.settings, threads=self.threads[worker.name],
                                         timeout=self.pool.timeout_for(seg, worker, self.settings), attempt=attempt,
                                         check=self.check_for(worker, seg, attempt), **worker.call_options(),
                                         **({"lease": self.pool.gate.job} if self.pool.gate is not None else {}))
        if self.pool.gate is not None:
            self.allowed[worker.name] -= 1
        self.in_flight[ref] = _Task(worker, seg, attempt, time.monotonic(), duplicate, time.time())
        self.copies.setdefault(seg.index, set()).add(ref)
        worker.in_flight += 1

    def check_for(self, worker: Worker, seg: Segment, attempt: int) -> tuple[Check, str]:
        """The check ``seg`` gets on ``worker`` under the job's policy: a full decode on a hardware encoder,
        a stand-in, a node other than the driver's, an actor that failed in this job, or a segment that
        failed before (:func:`montage_ray.encoders.checks.segment_check`)."""
        node = worker.placement.node_id if worker.placement is not None else None
        failed = attempt > 1 or seg.index in self.failed_on or any(f.actor == worker.name for f in self.pool.failures)
        return segment_check(self.settings.verify, hardware=worker.hardware, standin=worker.standin,
                             remote=node is not None and self.pool.driver_node is not None
                             and node != self.pool.driver_node, failed=failed)

    def take(self, ref: Any) -> _Task:
        """The task of a ref that answered, no longer in flight."""
        task = self.in_flight.pop(ref)
        task.worker.in_flight -= 1
        self.copies.get(task.segment.index, set()).discard(ref)
        if self.pool.gate is not None:
            self.pool.gate.release({task.worker.slot: 1})
        return task

    def may_send(self, worker: Worker) -> bool:
        """Whether the gate (if any) lets ``worker`` take one more segment of this job now."""
        return self.pool.gate is None or self.allowed.get(worker.name, 0) > 0

    def requeue(self, task: _Task) -> None:
        """Put a dropped segment back as it was (unless another copy finished or still runs)."""
        if task.segment.index not in self.finished and not self.copies.get(task.segment.index):
            self.pending.insert(0, (task.segment, task.attempt))

    def finish(self, task: _Task) -> bool:
        """Record ``task``'s segment as done (cancelling its other copies); False if a copy was first."""
        if task.segment.index in self.finished:
            return False
        self.finished.add(task.segment.index)
        task.worker.done += 1
        for other in self.copies.pop(task.segment.index, set()):
            ray.cancel(other)  # the loser of a duplicated segment
        return True

    def fail(self, task: _Task, attempt: FailedAttempt, max_attempts: int, *, counts: bool = True) -> None:
        """Record a failed attempt; put the segment back unless another copy finished or still runs. A try
        that does not count (a provider refused the label) goes back with the same attempt number."""
        seg = task.segment
        self.failed_on.setdefault(seg.index, set()).add(task.worker.name)
        if seg.index in self.finished or self.copies.get(seg.index):
            return
        if counts and task.attempt >= max_attempts:
            raise EncoderError(f"segment {seg.index} failed {task.attempt} times; last on {task.worker.name}: "
                               f"{attempt.message}")
        metrics.segment_retried(label=task.worker.label, node=task.worker.node)
        self.pending.insert(0, (seg, task.attempt + (1 if counts else 0)))

    def pick(self, worker: Worker, planned: list[int] | None = None) -> tuple[Segment, int] | None:
        """Take the largest pending segment this worker has not failed, unless only it could take it; with
        ``planned``, only one of those segments (taken off the list)."""
        others_alive = any(w.alive and w is not worker for w in self.pool.workers)
        for i, (seg, attempt) in enumerate(self.pending):
            if planned is not None and seg.index not in planned:
                continue
            if worker.name not in self.failed_on.get(seg.index, set()) or not others_alive:
                del self.pending[i]
                if planned is not None:
                    planned.remove(seg.index)
                return seg, attempt
        return None

    def mine(self, worker: Worker) -> list[_Task]:
        """What ``worker`` holds, oldest first."""
        return sorted((t for t in self.in_flight.values() if t.worker is worker), key=lambda t: t.started)


class EncoderPool:
    """Feed segments to workers: pull-based, speed-aware, with tail duplication and driver-owned retries."""

    def __init__(self, workers: Sequence[Worker], options: PoolOptions | None = None, *,
                 registry: WorkerRegistry | None = None, gate: Gate | None = None) -> None:
        if not workers:
            raise ClusterError("no encoder actors to run the job on")
        self.workers = list(workers)
        self.options = options or PoolOptions()
        self.registry = registry or WorkerRegistry()   # collects cancelled tasks beside the job
        self.failures: list[FailedAttempt] = []
        self.duplicates = 0
        self.refusals: list[quota.Refusal] = []        # labels a provider refused in this pool's runs
        self.job_id = ""  # of the job being run, for log lines
        self.gate = gate  # the service's scheduler, when the actors are shared with other jobs
        self.driver_node = _driver_node()  # segments encoded on other nodes are decoded in full (verify auto)
        self.starting: Starting | None = None  # actors of the running job still starting (run's ``starting``)

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
        coming = self.starting.workers if self.starting else []  # their share of the CPUs is kept for them
        same_node = [w for w in self.workers + coming if w.alive and w.label == "cpu" and w.placement
                     and w.placement.node_id == worker.placement.node_id]
        return max(1, worker.placement.node_cpus // max(1, min(active, len(same_node))))

    def _by_speed(self, workers: Sequence[Worker] | None = None) -> list[Worker]:
        pool = self.workers if workers is None else workers
        return sorted((w for w in pool if w.alive), key=lambda w: -self._expected_fps(w))

    # -- the loop --------------------------------------------------------------------------------
    def run(self, segments: Sequence[Segment], *, load: Callable[[Segment], bytes], settings: JobSettings,
            on_tick: TickCallback | None = None, tick: float = 1.0, ready: ReadyFeed | None = None,
            starting: Starting | None = None) -> Iterator[tuple[Segment, EncodeResult, bytes]]:
        """Encode every segment; yield ``(segment, result, encoded bytes)`` in completion order.

        With ``ready`` the segments are not all there yet: ``ready(wait)`` returns the indices of those
        that became ready since the last call (waiting up to ``wait`` seconds for one), and each goes out
        the moment it is ready. The earliest-finish plan still covers the whole job, waiting segments too.

        ``on_tick(partial, busy)`` is called about every ``tick`` seconds with the frames done so far of
        the segments being encoded (``{index: frames}``, from the actors' ``-progress``) and the number
        of busy actors.

        With ``starting`` (:meth:`WorkerRegistry.wait_first`), more actors are on their way: each joins the pool
        the moment it is ready.
        """
        self.job_id = settings.job_id
        self.starting = starting
        setup = (settings.codec, settings.preset, settings.quality, settings.video.width * settings.video.height)
        for w in self.workers:  # a speed measured on another kind of job says little about this one
            if w.fps_for != setup:
                w.fps, w.fps_for = w.base_fps, setup
        run = _Run(self, settings, load, {w.name: self._threads(w, len(segments)) for w in self.workers},
                   len(segments), feed=ready, setup=setup)
        if ready is None:
            run.pending = sorted(((s, 1) for s in segments), key=lambda x: -x[0].frames)
        else:
            run.waiting = {s.index: s for s in segments}
        try:
            yield from self._loop(run, on_tick, tick)
        finally:
            # cancel what still runs (duplicates that lost, or everything when the job failed) beside the job
            refs = list(run.in_flight)
            if self.gate is not None:  # their tickets, and the ones granted but not used, are free again
                for task in run.in_flight.values():
                    run.allowed[task.worker.name] = run.allowed.get(task.worker.name, 0) + 1
                self._give_back(run)
            run.in_flight.clear()
            self.registry.drain(refs)

    def _loop(self, run: _Run, on_tick: TickCallback | None, tick: float
              ) -> Iterator[tuple[Segment, EncodeResult, bytes]]:
        """The body of :meth:`run`: fill, duplicate at the tail, wait, then record, retry or yield."""
        opts = self.options
        last_progress = time.monotonic()
        polls: list[Any] = []
        next_tick = time.monotonic() + tick
        while not run.done:
            run.arrive()
            self._admit(run, 0.0)
            self._ask_gate(run)
            self._fill(run)
            if opts.duplicate_tail and not run.pending and not run.waiting:
                self._duplicate_tail(run)
            self._give_back(run)
            if not run.in_flight:
                if self.gate is not None and run.pending and any(w.alive for w in self.workers):
                    time.sleep(GATE_POLL_SECONDS)  # the other jobs' turn: ask again shortly
                    run.next_ask = 0.0
                    if time.monotonic() - last_progress > opts.stall_timeout:
                        raise ClusterError(f"the encoder service granted this job nothing in "
                                           f"{opts.stall_timeout:.0f} s")
                    continue
                if self.starting and not any(w.alive for w in self.workers):  # the next actor is on its way
                    self._admit(run, min(5.0, opts.stall_timeout))
                    if time.monotonic() - last_progress > opts.stall_timeout:
                        raise ClusterError(f"no encoder actor started in {opts.stall_timeout:.0f} s")
                    continue
                if run.waiting and not run.pending:  # nothing to do until the cutter lists the next segment
                    run.arrive(wait=0.5)
                    if time.monotonic() - last_progress > opts.stall_timeout:
                        raise ClusterError(f"no segment was cut in {opts.stall_timeout:.0f} s")
                    continue
                reasons = "; ".join(f"{f.encoder}: {f.message}" for f in self.failures[-3:])
                raise EncoderError(f"no encoder is left to finish the job ({reasons or 'all actors died'})")
            starting = list(self.starting.pending) if self.starting else []
            ready, _ = ray.wait(list(run.in_flight) + starting, num_returns=1,
                                timeout=self._wait_seconds(run, None if on_tick is None else next_tick))
            if ready and ready[0] not in run.in_flight:  # an actor is up: it takes work on the next turn
                self._take_started(run, ready[0])
                continue
            if on_tick is not None and time.monotonic() >= next_tick:
                polls = self._tick(polls, on_tick)
                next_tick = time.monotonic() + tick
            if not ready:
                if time.monotonic() - last_progress > opts.stall_timeout:
                    raise ClusterError(f"no segment finished in {opts.stall_timeout:.0f} s; is an encoder stuck "
                                       "or waiting for a resource no node offers?")
                continue
            last_progress = time.monotonic()
            answer = self._answer(run, ready[0])
            if answer is not None:
                yield answer

    def _admit(self, run: _Run, wait: float) -> None:
        """Take the actors of ``starting`` that are ready (waiting up to ``wait`` seconds for one)."""
        if not self.starting:
            return
        refs = list(self.starting.pending)
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0) if wait <= 0 else \
            ray.wait(refs, num_returns=1, timeout=wait)
        for ref in ready:
            self._take_started(run, ref)

    def _take_started(self, run: _Run, ref: Any) -> None:
        worker = self.starting.take(ref) if self.starting else None
        if worker is None:
            return
        worker.fps, worker.fps_for = worker.base_fps, run.setup
        self.workers.append(worker)
        run.threads[worker.name] = self._threads(worker, run.total)
        log.info("job %s: %s is up and takes segments too", self.job_id, worker.name)

    def _wait_seconds(self, run: _Run, next_tick: float | None) -> float:
        """How long the loop may wait for an answer before it must look again: until the next tick, while
        segments are being cut a short poll, and while cut segments wait for the gate's tickets until the
        next ask is due (not until some segment answers: on 16 cores that left 14 of 16 shared actors idle
        for 5 s at the start of every job)."""
        now = time.monotonic()
        wait = min(5.0, self.options.stall_timeout) if next_tick is None else max(0.05, next_tick - now)
        if run.waiting:
            wait = min(wait, FEED_POLL_SECONDS)
        if run.kept_waiting or (self.gate is not None and run.pending):
            wait = min(wait, max(0.01, run.next_ask - now), GATE_POLL_SECONDS)
        return wait

    def _fill(self, run: _Run) -> None:
        """Fastest free worker first, largest pending segment first, each worker only the segments it would
        finish soonest (a slow encoder gets no segment a faster one would finish earlier); a worker whose
        speed is not measured yet gets one segment at a time."""
        plan = self._shares(run)
        for attempt_plan in (plan, None):  # without the plan too, should it leave every worker idle
            for worker in self._by_speed():
                depth = self.options.depth if worker.fps > 0 else 1
                mine = None if attempt_plan is None else attempt_plan.get(worker.name, [])
                while worker.alive and worker.in_flight < depth and run.pending and run.may_send(worker):
                    pick = run.pick(worker, mine)
                    if pick is None:
                        break
                    run.submit(worker, *pick)
            if run.in_flight or not run.pending:
                return

    def _ask_gate(self, run: _Run) -> None:
        """Ask the gate for the tickets this job would use now: room on the workers its plan gives pending
        segments to (every alive worker before speeds are known), or one per idle worker at the tail."""
        if self.gate is None or time.monotonic() < run.next_ask:
            return
        wants: dict[str, int] = {}
        alive = self._by_speed()
        tail = False
        if run.pending:
            plan = self._shares(run)
            for w in alive:
                room = (self.options.depth if w.fps > 0 else 1) - w.in_flight - run.allowed.get(w.name, 0)
                if plan is not None:
                    room = min(room, len([i for i in plan.get(w.name, []) if i not in run.waiting]))
                if room > 0:
                    wants[w.name] = room
            if plan is not None and not wants and not run.in_flight:  # the plan's workers are all out of reach
                wants = {w.name: 1 for w in alive if w.in_flight == 0}
        elif not run.waiting and self.options.duplicate_tail and run.in_flight:
            wants = {w.name: 1 for w in alive if w.in_flight == 0 and not run.allowed.get(w.name)}
            tail = True
        if not wants:
            if run.pending or run.waiting:
                return  # no room now: the standing ask keeps this job's turn (the heartbeat keeps it fresh)
            if run.asking:  # withdraw the standing ask: the slots are free for the other jobs at once
                self.gate.grant({})
            run.kept_waiting = run.asking = False
            return
        run.asking = not tail
        by_name = {w.name: w for w in alive}
        got = self.gate.grant({by_name[n].slot: c for n, c in wants.items()}, standing=not tail)
        granted = 0
        for name in wants:
            n = got.get(by_name[name].slot, 0)
            run.allowed[name] = run.allowed.get(name, 0) + n
            granted += n
        run.kept_waiting = granted < sum(wants.values()) and bool(run.pending)
        run.next_ask = time.monotonic() + (GATE_POLL_SECONDS if run.kept_waiting or not granted else 0.0)

    def _give_back(self, run: _Run) -> None:
        """Return the tickets granted but not used (the plan changed, or the tail needed no copy)."""
        if self.gate is None:
            return
        unused = {w.name: run.allowed.pop(w.name) for w in self.workers if run.allowed.get(w.name, 0) > 0}
        if unused:
            self.gate.release({w.slot: unused[w.name] for w in self.workers if w.name in unused})
            run.next_ask = max(run.next_ask, time.monotonic() + GATE_POLL_SECONDS)

    def _answer(self, run: _Run, ref: Any) -> tuple[Segment, EncodeResult, bytes] | None:
        """Take one answer: a finished segment to yield, or a failure recorded (None)."""
        task = run.take(ref)
        try:
            result, data = ray.get(ref, timeout=60)
        except TaskCancelledError:
            return None
        except ACTOR_GONE as err:
            task.worker.alive = False
            self._failed(run, task, "actor-died", _cause_line(err))
            return None
        except RayTaskError as err:
            cause = err.cause if isinstance(err.cause, BaseException) else err
            reason = getattr(cause, "reason", "error")
            if reason == "bad-input":  # the piece itself is wrong: no other encoder would do better
                raise EncoderError(_cause_line(cause))
            if reason == "dropped":  # the service took this job for dead (it stalled): send it again
                run.requeue(task)
                return None
            if reason != "cancelled":
                self._failed(run, task, reason, _cause_line(cause), getattr(cause, "stderr", ""),
                             started=getattr(cause, "started", 0.0), seconds=getattr(cause, "seconds", 0.0))
            return None
        self._measured(task.worker, result)  # a speed, even from a duplicate that lost the race, is information
        if not run.finish(task):
            return None
        if self.gate is not None:
            self.gate.progress(task.segment.frames)
        return task.segment, result, data

    def _measured(self, w: Worker, result: EncodeResult) -> None:
        fps = result.frames / result.seconds if result.seconds > 0 else 0.0
        w.fps = fps if w.fps <= 0 else (1 - self.options.ewma) * w.fps + self.options.ewma * fps
        w.last_done = time.monotonic()

    def _free_in(self, worker: Worker, run: _Run, now: float) -> float:
        """Seconds until ``worker`` has finished what it holds (inf when it is overdue: maybe stuck)."""
        fps = self._expected_fps(worker)
        mine = run.mine(worker)
        if not mine:
            return 0.0
        running = mine[0]
        since = max(running.started, worker.last_done)
        expected = running.segment.frames / fps
        elapsed = now - since
        if elapsed > 2 * expected + 5:
            return float("inf")
        return max(0.0, expected - elapsed) + sum(t.segment.frames for t in mine[1:]) / fps

    def _shares(self, run: _Run) -> dict[str, list[int]] | None:
        """Which pending segments each worker takes in an earliest-finish schedule (largest segment first,
        each to the worker that would finish it soonest, never to one that already failed it while another
        can take it); None before any speed is known."""
        alive = [w for w in self.workers if w.alive]
        if not run.pending or not alive or all(w.fps <= 0 for w in self.workers):
            return None
        upcoming = [(seg, 1) for seg in run.waiting.values()]  # planned too, though not cut yet
        now = time.monotonic()
        free = {w.name: self._free_in(w, run, now) for w in alive}
        fps = {w.name: self._expected_fps(w) for w in alive}
        plan: dict[str, list[int]] = {w.name: [] for w in alive}
        for seg, _ in [*run.pending, *upcoming]:
            failed = run.failed_on.get(seg.index, set())
            names = [n for n in free if n not in failed] or list(free)
            name = min(names, key=lambda n: (free[n] + seg.frames / fps[n], -fps[n]))
            if free[name] == float("inf"):
                return None  # every worker looks stuck: plain pull, the timeouts will sort it out
            free[name] += seg.frames / fps[name]
            plan[name].append(seg.index)
        return plan

    def _duplicate_tail(self, run: _Run) -> None:
        """Give an idle worker a copy of the in-flight segment expected to finish last, if it would win."""
        idle = [w for w in self.workers if w.alive and w.in_flight == 0]
        if not idle:
            return
        now = time.monotonic()

        def eta(t: _Task) -> float:
            fps = self._expected_fps(t.worker)
            # queued behind another segment on its actor: add that one's time too
            queued = sum(o.segment.frames for o in run.in_flight.values()
                         if o.worker is t.worker and o.started < t.started)
            if fps <= 0:
                return float("inf")
            left = t.started + (t.segment.frames + queued) / fps - now
            # Later than expected: the speed guess was wrong, so assume it needs half as long again.
            return max(left, 0.5 * (now - t.started))

        single = [t for t in run.in_flight.values() if len(run.copies.get(t.segment.index, ())) == 1
                  and t.segment.index not in run.finished]
        for worker in self._by_speed(idle):
            if not single:
                return
            slowest = max(single, key=eta)
            fps = self._expected_fps(worker)
            if fps <= 0 or not run.may_send(worker) or slowest.worker is worker or worker.name in run.failed_on.get(slowest.segment.index, ()):
                continue
            if slowest.segment.frames / fps < eta(slowest):
                single.remove(slowest)
                self.duplicates += 1
                log.info("job %s segment %d: duplicated on %s (straggling on %s)", self.job_id,
                         slowest.segment.index, worker.name, slowest.worker.name)
                run.submit(worker, slowest.segment, slowest.attempt, duplicate=True)

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

    def _failed(self, run: _Run, task: _Task, reason: str, message: str, stderr: str = "", *,
                started: float = 0.0, seconds: float = 0.0) -> None:
        seg, worker = task.segment, task.worker
        # (the job's listener, the progress lines, and the report tell the user; the log is for --verbose)
        log.info("job %s segment %d attempt %d failed on %s: %s", self.job_id, seg.index, task.attempt,
                 worker.name, message)
        refused = quota.refuse_label(self.workers, worker, f"{message}\n{stderr}", self.refusals)
        if refused:  # the whole label leaves the job; the try does not count against the segment
            reason = f"provider-{refused.kind}"
        if not started:  # it never said when it started (its actor died): the driver's view
            started, seconds = task.submitted_at, time.time() - task.submitted_at
        failure = FailedAttempt(segment=seg.index, attempt=task.attempt, encoder=worker.encoder or worker.label,
                                actor=worker.name, reason=reason, message=message, stderr=stderr[-2000:],
                                started=started, seconds=seconds, node=worker.node, label=worker.label)
        self.failures.append(failure)
        metrics.segment_failed(label=worker.label, node=worker.node, reason=reason)
        worker.failures += 1
        if worker.failures >= self.options.max_worker_failures:
            worker.alive = False
        run.fail(task, failure, self.options.max_attempts, counts=refused is None)


def _cause_line(err: BaseException) -> str:
    """What failed, in one line: the error's first line, except for a Ray task error whose cause could not be
    rebuilt here (its first line is Ray's ``ray::EncoderActor.encode() (pid=..., repr=...)`` header): then the
    last line of the remote traceback, ``SomeError: message``."""
    if not isinstance(err, RayTaskError):
        return first_line(err)
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(err).splitlines()]
    lines = [line for line in lines if line]
    return lines[-1] if lines else type(err).__name__


def _driver_node() -> str | None:
    """The Ray node this driver runs on (None when Ray cannot say, e.g. a client connection)."""
    if not ray.is_initialized():
        return None
    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - a client connection without a node of its own
        return None


#: Frames a second one core decodes a 1080p H.264 source at (a segment cut between keyframes decodes the
#: frames before its cut only to drop them): ~250 measured with ffmpeg 5.1 and 9.0; a first guess for others.
DECODE_FPS_1080P = 250.0


def plan_costs(workers: Sequence[Worker], settings: JobSettings) -> list[EncoderCost]:
    """What a segment costs on each of ``workers`` for this job, for the planner
    (:func:`montage_ray.media.plan.choose_plan`): its kind's speed (the mean of what its label's actors
    measured on this kind of job, else its configured or its backend's first guess scaled to the frame
    size: one actor's own figure is mostly the noise of its last segment) and its backend's per-segment
    overhead (:func:`montage_ray.encoders.backends.segment_overhead`)."""
    pixels = max(1, settings.video.width * settings.video.height)
    setup = (settings.codec, settings.preset, settings.quality, pixels)
    measured: dict[tuple[str, str], list[float]] = {}
    for w in workers:
        if w.fps > 0 and w.fps_for == setup:
            measured.setdefault((w.label, w.backend), []).append(w.fps)
    costs = []
    for w in workers:
        seen = measured.get((w.label, w.backend))
        fps = sum(seen) / len(seen) if seen else (w.fps if w.fps > 0 and not w.fps_for else w.base_fps)
        known = fps > 0
        if not known:
            fps = default_fps(w.backend or w.label) * (1920 * 1080) / pixels
        frames, seconds = segment_overhead(w.backend or w.label, settings.codec)
        costs.append(EncoderCost(fps=fps, overhead_frames=frames, overhead_seconds=seconds,
                                 decode_fps=DECODE_FPS_1080P * (1920 * 1080) / pixels, evens=not w.copies,
                                 kind=w.label, known=known))
    return costs
