"""One encode job from source to verified destination, as a straight list of phases.

:func:`encode` is the public entry point behind :func:`montage_ray.encode` and ``montage-ray encode``. It
reads top to bottom: validate -> inspect (in a thread, while Ray starts) -> session -> offers/route ->
workers -> plan -> cut + encode (pipelined: the cutter runs in the background and each piece goes to the
pool the moment it is cut) -> settle -> join -> verify (the structure and the joins decoded here; each actor
decoded its own segment) -> publish, each phase a method of one :class:`JobRun` that keeps what the job has
made so far (options, media, route, workers, plan, cache, the encoded pieces, the join) on itself (settle:
what the paid labels cost, see :mod:`montage_ray.spending.budget`, even when the encode failed); the
:class:`~montage_ray.job.report.JobReport` is built at the end from that state. Only a verified
file is ever renamed to the destination::

    from montage_ray import encode
    from montage_ray.job.options import EncodeOptions

    report = encode("input.mp4", "output.mp4", codec="h264", quality=23)
    report = encode("input.mp4", "output.mp4", EncodeOptions(codec="hevc", report="out.json"))
    print(report.summary())

A segment that an interrupted run of the same job encoded and verified is taken from the segment cache at
plan time (:mod:`montage_ray.job.cache`: :meth:`JobRun.reuse`); only the others are encoded, each kept there as
it lands, and the job's entries are cleared once the destination is published.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from montage_ray.encoders import hdr
from montage_ray.util import workdirs
from montage_ray.job.cache import (CutDigests, SegmentCache, maker_id, reuse_from_cut, settings_fingerprint,
                                   source_identity)
from montage_ray.ffmpeg.caps import ffmpeg_caps
from montage_ray.spending.budget import Bill, BudgetView, refusals_at_start, settle
from montage_ray.spending.providers import provider_of
from montage_ray.spending.ledger import Ledger, LedgerFile, open_ledger
from montage_ray.cluster.link import measure_links
from montage_ray.cluster.nodes import Placement, offered_labels, offers, placements, remote_labels
from montage_ray.cluster.pool import EncoderPool, PoolOptions, ReadyFeed, plan_costs
from montage_ray.cluster.service import JobLease
from montage_ray.cluster.session import RaySession, ray_session, starts_private
from montage_ray.cluster.workers import Starting, Worker
from montage_ray.errors import ClusterError, EncoderError, FFmpegError, InputError, VerificationError
from montage_ray.util.files import publish
from montage_ray.media.join import (DecodeDelays, JoinPlan, MoovRoomTooSmall, NoNamedPipes, StreamingJoin,
                                    join_segments, verify_output)
from montage_ray.media.info import MediaInfo, inspect, read_header
from montage_ray.job.options import EncodeOptions, ValidJob
from montage_ray.media.plan import FrameFit, Segment, choose_plan, fit_frame, is_small_job, small_job_seconds
from montage_ray.job.progress import CallbackListener, ProgressListener
from montage_ray.spending.quota import Refusal
from montage_ray.job.report import JobReport
from montage_ray.encoders.records import FailedAttempt
from montage_ray.spending.routing import JobFacts, Route, master_offers, route
from montage_ray.encoders.records import EncodeResult, JobSettings
from montage_ray.media.cut import Cut, start_cut

log = logging.getLogger(__name__)

#: Prefix of a job's hidden work folder beside the destination (see :mod:`montage_ray.util.workdirs`).
WORKDIR_PREFIX = ".montage-ray-"

#: Called after each finished segment with (segments done, segments total, the result).
ProgressCallback = Callable[[int, int, EncodeResult], None]

#: Per-session preset for the quality profiles (``--profile``); "standard" keeps the job's own preset.
PROFILE_PRESETS = {"fast": "veryfast", "master": "slow"}


def encode(src: str | os.PathLike[str], dst: str | os.PathLike[str], options: EncodeOptions | None = None, *,
           progress: ProgressListener | ProgressCallback | None = None, pool_options: PoolOptions | None = None,
           **kwargs: Any) -> JobReport:
    """Encode ``src`` into ``dst`` on Ray and return the :class:`~montage_ray.job.report.JobReport`.

    ``options`` is an :class:`~montage_ray.job.options.EncodeOptions`; keyword arguments of the same names
    (``codec``, ``quality``, ``preset``, ``segment_seconds``, ``address``, ``overwrite``, ``report``,
    ``timeline``, ``workers``, ``verify``, ``profile``, ``encoders_config``, ``labels``, ``target_quality``,
    ``measure``) change it for this
    call. ``progress`` follows the job: a :class:`~montage_ray.job.progress.ProgressListener` (such as
    :class:`~montage_ray.job.progress.ProgressPrinter`) or ``callback(done, total, result)``. Raises
    :class:`~montage_ray.errors.MontageError` subclasses; the destination is only written once the joined
    file has been verified, and no existing file is replaced without ``overwrite``.
    ``cache``, ``cache_dir`` and ``keep_cache``: see :mod:`montage_ray.job.cache`.
    """
    clock = _Clock()
    job = (options or EncodeOptions()).replace(**kwargs).validate(src, dst)      # validate
    clock.skip()
    run = JobRun(job, clock, listener=_listener(progress), pool_options=pool_options)
    if run.listener:
        run.listener.begin(job_id=run.job_id, source=os.fspath(src), destination=os.fspath(dst))
    with run.in_workdir():                  # a work folder beside the destination, removed at the end
        with run.in_session():              # inspect, while Ray starts; the encoder service's lease
            run.route()                     # offers/route
            run.start_workers()             # workers
            run.plan()                      # plan (or an earlier run's cuts, from the cache)
            run.start_join()                # join, as the pieces come
            run.reuse()                     # pieces an earlier run made
            clock.lap("plan")
            run.encode_segments()           # cut + encode as cut; settle, even when the encode failed
            clock.lap("encode")
        clock.lap("ray")                    # start-up above, shut-down (of a Ray started here) now
        run.join()                          # join (the rest)
        clock.lap("join")
        run.verify()                        # verify
        clock.lap("verify")
        run.publish()                       # publish
    report = run.report(src, dst)
    write_extras(report, job)
    return report


# -- the phases -----------------------------------------------------------------------------------------


class JobRun:
    """One job's run: the validated job and what its phases make (media, route, workers, plan, cache, the
    encoded pieces, the join), kept on one object; each phase is a method that leaves what the next needs on
    ``self``. :func:`encode` calls them in order; an attribute is set by the phase that makes it."""

    def __init__(self, job: ValidJob, clock: "_Clock", *, listener: ProgressListener | None = None,
                 pool_options: PoolOptions | None = None) -> None:
        self.job = job
        self.opts = job.options
        self.clock = clock
        self.listener = listener
        self.pool_options = pool_options
        self.job_id = uuid.uuid4().hex[:8]
        self.folder = os.path.dirname(job.target)
        self.workdir: str | None = None
        self.tmp_out = ""
        self.cache: SegmentCache | None = None
        self.streaming: StreamingJoin | None = None
        self.delays: DecodeDelays | None = None  # a join at the end of mixed encoders: read as pieces land
        self.reused: dict[int, EncodeResult] = {}
        self.cut: Cut | None = None
        self.ledger: Ledger | LedgerFile | None = None
        # set by in_session: session, lease, media, dv_note, fit, settings; route: decision;
        # start_workers: ready, unavailable; plan: segments, encoded; encode_segments: bill;
        # join: joined; verify: checked, hdr_out

    @contextlib.contextmanager
    def in_workdir(self) -> Iterator[None]:
        """The job's work folder (the leftovers of killed jobs swept first), removed at the end with the
        streamed join stopped; a full disk is one line (exit 4), and a failed job's cache is discarded when
        its pieces would hold the space to free or be taken again by a re-run."""
        workdirs.sweep(self.folder, WORKDIR_PREFIX)  # leftovers of killed jobs (whose owner is gone)
        try:
            self.workdir = workdirs.workdir_name(self.folder, WORKDIR_PREFIX)  # named first: removed below even
            workdirs.make_workdir_at(self.workdir)                               # when a SIGTERM cuts in here
            self.tmp_out = os.path.join(self.workdir, "joined" + os.path.splitext(self.job.target)[1])
            yield
        except (OSError, FFmpegError, EncoderError, VerificationError) as err:
            full = workdirs.disk_full_error(self.folder, err, self._places())  # one line, exit 4, no traceback
            if self.cache is not None and (full is not None or isinstance(err, VerificationError)):
                self.cache.discard()
            if full is not None:
                raise full from None
            raise
        finally:
            if self.cut is not None:
                self.cut.close()
            if self.streaming is not None:
                self.streaming.stop()  # a failed job's join: killed, its feeder ended
            if self.delays is not None:
                self.delays.close()
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)

    @contextlib.contextmanager
    def in_session(self) -> Iterator[None]:
        """Read the source's header (a bad input ends here, before Ray), its packets while Ray starts (or is
        connected), then hold the Ray session and, on a shared Ray, the job's lease at the encoder service while
        the block runs."""
        opts = self.opts
        with contextlib.ExitStack() as in_session:
            with ThreadPoolExecutor(2, thread_name_prefix="inspect") as side:
                side.submit(ffmpeg_caps)  # (what this ffmpeg can do, for the cut: asked once per process)
                header = read_header(self.job.source)  # a bad input says so before a Ray is started for nothing
                inspecting = side.submit(_timed, inspect, self.job.source, header)  # the packets, while ...
                ray_from = time.monotonic()
                if self.listener and starts_private(opts.address):
                    self.listener.stage("starting a local Ray ...")  # seconds, before anything else shows
                try:
                    self.session = in_session.enter_context(ray_session(opts.address))  # ... Ray starts
                except BaseException:
                    inspecting.result()  # a bad input says so before a cluster problem does
                    raise
                ray_to = time.monotonic()
                self.media, probe_from, probe_to = inspecting.result()
            media = self.media
            self.dv_note = hdr.refuse_dolby_vision(media, allow_loss=opts.allow_dv_loss)  # InputError unless allowed
            self.clock.overlapped([("probe", probe_from, probe_to), ("ray", ray_from, ray_to)])
            self.lease = in_session.enter_context(_lease(self.session, self.job_id, opts.priority))
            self.fit = fit_frame(media.video.width, media.video.height)  # odd sizes: decided before any encoder
            self.settings = job_settings(media, opts, self.fit, self.job_id)
            log.info("job %s: %s -> %s (%d frames)", self.job_id, self.job.source, self.job.target,
                     media.video.frames)
            yield

    def route(self) -> None:
        """Which labels of what the cluster offers take part in this job (see :mod:`montage_ray.spending.routing`);
        a paid label's price, budget left this month and any provider back-off come from the ledger (read once)."""
        import ray

        opts, media, config = self.opts, self.media, self.job.config
        self.ledger = open_ledger(self.session.private)  # the spending ledger: this machine's, or the head's
        budget = BudgetView.load(config, self.ledger)
        nodes = ray.nodes()
        links, link_notes = measure_links(nodes, config, labels=opts.labels)  # the remote labels' links, now
        offered = offers(nodes, config, pixels=media.video.width * media.video.height, labels=opts.labels,
                         terms=budget.terms, measured={label: speed.mbps for label, speed in links.items()})
        offered, hdr_reasons = (master_offers(offered, media.video.hdr, opts.codec, config)
                                if opts.profile == "master" else (offered, []))
        decision = route(JobFacts(frames=media.video.frames, duration=_duration(media), input_bytes=media.size,
                                  profile=opts.profile, small_job_seconds=small_job_seconds(opts.segment_seconds),
                                  segment_seconds=opts.segment_seconds),
                         offered)
        link_lines = [f"{label}: link to {speed.node} measured at {speed.mbps:.3g} Mbit/s "
                      f"({speed.nbytes / 1e6:.2f} MB in {speed.seconds:.2f} s)" for label, speed in links.items()]
        if hdr_reasons or link_lines or link_notes:
            decision = dataclasses.replace(decision, reasons=(*hdr_reasons, *link_lines, *link_notes,
                                                              *decision.reasons))
        if not decision.labels:
            raise ClusterError("no encoder in the cluster can serve this job: " + "; ".join(decision.reasons))
        self.decision: Route = decision

    def start_workers(self) -> None:
        """Start (or reuse) an actor per session of the chosen labels: one for a small job, at most ``workers``;
        ``ready`` are those that started, ``unavailable`` why the others did not."""
        import ray

        opts = self.opts
        chosen = placements(ray.nodes(), self.decision.labels, self.job.config)
        if is_small_job(_duration(self.media), opts.segment_seconds):
            chosen = chosen[:1]  # shorter than two segments: one segment, one actor
        if opts.workers is not None:
            chosen = chosen[:opts.workers]
        self.ready, self.unavailable, self.starting = self._start_first(chosen)
        if not self.ready:
            raise ClusterError("no encoder could start: "
                               + "; ".join(f"{u.actor}: {u.message}" for u in self.unavailable))

    def plan(self) -> None:
        """The segments: an earlier run's cuts when the segment cache has them, else the cut points that
        :func:`~montage_ray.media.plan.choose_plan` prices best on these workers; and where each encoded piece
        will be written."""
        self.cache = self._open_cache()
        opts, media = self.opts, self.media
        self.segments: list[Segment] = self.cache and self.cache.plan(opts.segment_seconds, len(media.packets))
        if not self.segments:
            plan = choose_plan(media.packets, media.video.time_base,
                               plan_costs(self.ready + self.starting.workers, self.settings),
                               chosen=opts.segment_seconds, source_bytes=media.size)
            log.info("job %s: %s", self.job_id, plan.describe())
            self.segments = plan.segments
        self.ready = self.ready[:max(1, len(self.segments))]
        self.starting.keep(len(self.segments) - len(self.ready))
        self.encoded = Encoded.start(self.segments, self.workdir, self.ready)

    def start_join(self) -> None:
        """The join, started now and fed each segment as it arrives in order
        (:class:`~montage_ray.media.join.StreamingJoin`), when every worker is the same encoder: segments of
        differently configured encoders are aligned first, which needs all of them (then, and with
        ``MONTAGE_RAY_STREAM_JOIN=0``, none: the join waits for the end; their decode delays, which the
        alignment needs, are read as they land: :class:`~montage_ray.media.join.DecodeDelays`)."""
        if len({w.encoder for w in self.ready}) > 1 and len(self.segments) > 1:
            self.delays = DecodeDelays()
            return
        if os.environ.get(STREAM_JOIN_ENV, "1") == "0" or not hasattr(os, "mkfifo") or len(self.segments) < 2:
            return
        try:
            self.streaming = StreamingJoin(self.media, self.segments, self.tmp_out, self.workdir,
                                           container=self.job.container)
        except NoNamedPipes as err:
            log.info("joining at the end: %s", err)

    def reuse(self) -> None:
        """Start cutting every segment in the background, and take the segments an earlier run encoded and
        verified from the same cut piece (its hash), put in place in ``encoded.paths`` (segment index -> its
        result, marked ``reused``) and handed to the streamed join: only pieces made by an encoder of the kind
        serving this job (with the same ffmpeg build), decoded once when ``--verify decode``, and still the
        bytes that were stored (their hash). See :func:`~montage_ray.job.cache.reuse_from_cut`."""
        self.cut = start_cut(self.media, self.segments, self.workdir)
        self.digests = CutDigests(self.cut.paths)
        if self.cache is None:
            return
        makers = {maker_id(w.label, w.encoder, self.job.config.get(w.label), w.ffmpeg_build) for w in self.ready}
        self.reused, self.cut = reuse_from_cut(self.cache, self.segments, self.cut, self.encoded.paths,
                                               makers=makers, verify=self.opts.verify, digests=self.digests)
        if self.streaming is not None:
            for index in self.reused:
                self.streaming.offer(index, self.encoded.paths[index])

    def encode_segments(self) -> None:
        """Cut the segments not reused in the background and encode each the moment it is cut; then settle what
        the paid labels cost (even when the encode failed: the paid labels were used, the refusals happened)."""
        todo = [s for s in self.segments if s.index not in self.reused]
        try:
            if todo:
                self._encode(todo, self.cut)
        finally:
            self.cut.close()
            self.starting.close()
            self.unavailable += self.starting.unavailable
            self.bill: Bill = settle(self.job_id, self.clock.started_at, self.encoded.results,
                               self.unavailable + self.encoded.failures, self.job.config,
                               refusals_at_start(self.unavailable) + self.encoded.refusals, ledger=self.ledger)
        self.encoded.results = sorted(self.encoded.results + list(self.reused.values()), key=lambda r: r.segment)

    def join(self) -> None:
        """The joined file: the streamed join's end when it ran and every piece came from one encoder (after a
        fallback to other encoders they must be aligned: it is stopped and the segments joined here), else the
        whole join now. A streamed join that failed is logged and done again the plain way."""
        streaming, encoded = self.streaming, self.encoded
        mixed = len({r.encoder for r in encoded.results}) > 1
        reserve = True
        if streaming is not None and not mixed:
            try:
                self.joined: JoinPlan = streaming.finish()
                return
            except FFmpegError as err:
                reserve = not isinstance(err, MoovRoomTooSmall)  # then the same room would be too small again
                log.warning("the streamed join failed (%s); joining again from the encoded files", err)
        if streaming is not None:
            streaming.stop()
            with contextlib.suppress(OSError):
                os.unlink(self.tmp_out)
        self.joined = join_segments(self.media, self.segments, encoded.paths, self.tmp_out, self.workdir,
                                    container=self.job.container, mixed=mixed, codec=self.opts.codec,
                                    reserve=reserve, delays=self.delays)

    def verify(self) -> None:
        """The joined file's structure and joins (each actor decoded its own segment in full with ``--verify
        decode``), and for an HDR source whether its first frame still carries the HDR."""
        self.checked = verify_output(self.tmp_out, self.joined, decode=False)
        self.hdr_out = hdr_output_line(self.tmp_out, self.media)

    def publish(self) -> None:
        """The verified file renamed to the destination; the job's cache entries cleared unless kept."""
        publish(self.tmp_out, self.job.target, overwrite=self.opts.overwrite)
        if self.cache is not None and not self.opts.keep_cache:
            self.cache.clear(self.segments, self.opts.segment_seconds)

    def report(self, src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> JobReport:
        """What the phases did, as the user's :class:`~montage_ray.job.report.JobReport`."""
        opts, media, encoded, bill, clock = self.opts, self.media, self.encoded, self.bill, self.clock
        return JobReport(
            source=os.fspath(src), output=os.fspath(dst), codec=opts.codec, frames=media.video.frames,
            duration=sum(s.duration for s in self.segments), job_id=self.job_id, started=clock.started_at,
            wall_seconds=clock.elapsed(), timings=clock.timings, phases=clock.spans, segments=encoded.results,
            failures=self.unavailable + encoded.failures, encoders=sorted({w.encoder for w in encoded.workers}),
            notes=[*([self.fit.note] if self.fit.note else []), *self.joined.notes, *self.checked.notes,
                   *bill.notes],
            ray_address=self.session.address, profile=opts.profile, route=list(self.decision.reasons),
            segments_reused=len(self.reused), duplicates=encoded.duplicates, cost=bill.cost,
            provider=[*bill.provider, *encoded.provider],
            hdr=[*hdr.report_lines(media.video.hdr, encoded.results, output=self.hdr_out),
                 *([self.dv_note] if self.dv_note else [])],
            workers=[{"name": w.name, "label": w.label, "encoder": w.encoder, "host": w.hostname, "node": w.node,
                      "pid": w.pid} for w in encoded.workers])

    # -- the encode, its fallback and the cache -----------------------------------------------------------

    def _encode(self, segments: list[Segment], cut: Cut) -> None:
        """Run ``segments`` through a pool of ``encoded.workers`` the moment ``cut`` has each, writing each
        encoded piece as it arrives (then :meth:`_landed`: the streamed join and the segment cache take it).

        When a provider refuses every label of the pool (quota, session limit), the segments left go to the
        local encoders (:meth:`_local_workers`) instead of failing the job. On the encoder service, the job's
        lease at the scheduler gates the pool (fair share with the other jobs, priority first).
        """
        encoded, listener, gate, registry = self.encoded, self.listener, self.lease, self.session.registry
        if gate is not None:
            gate.update(frames=sum(s.frames for s in segments), segments=len(segments))
        pool = EncoderPool(encoded.workers, self.pool_options, registry=registry, gate=gate)
        starting = self.starting
        pieces = cut.paths
        arrivals = _Arrivals(cut)
        done: set[int] = set()
        told = 0  # failures of this pool already passed on to the listener

        def load(seg: Segment) -> bytes:
            with open(pieces[seg.index], "rb") as fh:
                return fh.read()

        def tell_failures() -> None:
            nonlocal told
            for attempt in pool.failures[told:]:
                listener.failure(attempt)  # type: ignore[union-attr]
            told = len(pool.failures)

        def on_tick(partial: dict[int, int], busy: int) -> None:
            tell_failures()
            listener.tick(partial, busy)  # type: ignore[union-attr]

        if listener:
            listener.start(frames=sum(s.frames for s in segments), segments=len(segments),
                           encoders=len(encoded.workers) + len(starting.workers))
        try:
            while True:
                try:
                    for seg, result, data in pool.run([s for s in segments if s.index not in done], load=load,
                                                      settings=self.settings, ready=arrivals.feed(),
                                                      on_tick=on_tick if listener else None, starting=starting):
                        with open(encoded.paths[seg.index], "wb") as fh:
                            fh.write(data)
                        self._landed(seg, result, encoded.paths[seg.index])
                        done.add(seg.index)
                        encoded.results.append(result)
                        if listener:
                            tell_failures()
                            listener.segment_done(result)
                    break
                except EncoderError:
                    local = self._local_workers() if _all_refused(pool) else []
                    if not local:
                        raise
                    if listener:
                        tell_failures()
                    encoded.add_pool(pool)
                    encoded.workers += [w for w in local if all(w is not x for x in encoded.workers)]
                    encoded.provider.append("every encoder of the job was refused; the rest went to "
                                            + ", ".join(sorted({w.label for w in local})))
                    pool, told, starting = EncoderPool(local, self.pool_options, registry=registry, gate=gate), 0, None
        finally:
            encoded.add_pool(pool)
            if listener:
                listener.close()
        encoded.results.sort(key=lambda r: r.segment)

    def _landed(self, seg: Segment, result: EncodeResult, path: str) -> None:
        """An encoded piece is written: handed to the streamed join first (the last piece's store is not on the
        way to the output), or its decode delay read for a join at the end of mixed encoders; then kept in the
        cache (with the job's plan, beside the first)."""
        if self.streaming is not None:
            self.streaming.offer(seg.index, path)
        if self.delays is not None:
            self.delays.offer(path)
        if self.cache is not None:
            config = self.job.config
            maker = maker_id(result.resource or result.backend, result.encoder, config.get(result.resource or ""),
                             result.ffmpeg_build)
            self.cache.store(seg, result, path, maker=maker, verified=self.opts.verify, cut=self.digests(seg.index),
                             plan=(self.opts.segment_seconds, self.segments))

    def _open_cache(self) -> SegmentCache | None:
        """The segment cache of this source and these settings (see :mod:`montage_ray.job.cache`), its entries
        that nobody came back for pruned; None with ``--no-cache``, and (with one line) when the folder is not
        the cache's own (another user's, writable by others, a link, holding other files)."""
        if self.job.cache is None:
            return None
        cache = SegmentCache(self.job.cache, source_identity(self.media.packets, self.media.video.index),
                             settings_fingerprint(self.opts, self.settings, ffmpeg_caps().build))
        why = cache.refusal()
        if why is not None:
            log.warning("segment cache %s %s; going on without it", cache.folder, why)
            return None
        cache.prune()
        return cache

    def _places(self) -> dict[str, str]:
        """Where the job writes besides the output's folder, for the line that says which filesystem filled."""
        places = {"the temporary folder (TMPDIR)": tempfile.gettempdir()}
        if self.cache is not None:
            places["the segment cache"] = self.cache.folder
        return places

    def _local_workers(self) -> list[Worker]:
        """Start (or reuse) the cluster's local encoder actors, for a job whose every label a provider refused:
        each offered label (of ``labels``, when given) that is neither remote nor paid."""
        import ray

        nodes = ray.nodes()
        remotes = remote_labels(nodes)
        wanted, config = self.opts.labels, self.job.config
        local = [label for label in offered_labels(nodes, config)
                 if (wanted is None or label in wanted) and label not in remotes
                 and provider_of(config.get(label)) is None]
        if not local:
            return []
        ready, _ = self._start(placements(nodes, local, config))
        return ready

    def _start_first(self, chosen: list[Placement]) -> tuple[list[Worker], list[FailedAttempt], Starting]:
        """Like :meth:`_start`, but a job whose actors are all of one label and this session's own goes on
        once the first is ready: the others join the pool as they come (:class:`Starting`; a fresh Ray starts
        each as a new process). Mixed labels wait for all: the join and the plan depend on every encoder."""
        session = self.session
        if session.service is not None or len(chosen) < 2 or len({p.label for p in chosen}) > 1:
            return *self._start(chosen), Starting(session.registry, {}, set())
        return session.registry.wait_first(session.registry.start(chosen, self.job.config), self.settings)

    def _start(self, chosen: list[Placement]) -> tuple[list[Worker], list[FailedAttempt]]:
        """The actors of ``chosen`` that start: the encoder service's on a shared Ray (this process's own
        registry actors are stopped first: they would hold the slots), else this session's registry's."""
        session, config, settings = self.session, self.job.config, self.settings
        if session.service is not None:
            session.registry.stop()
            return session.service.wait_ready(session.service.start(chosen, config, job=settings.job_id), settings)
        return session.registry.wait_ready(session.registry.start(chosen, config), settings)


def job_settings(media: MediaInfo, opts: EncodeOptions, fit: FrameFit, job_id: str) -> JobSettings:
    """What every encoder actor of this job needs besides its segment: codec, quality, the profile's
    preset, the source's video facts and the frame fit (:func:`~montage_ray.media.plan.fit_frame`)."""
    preset = PROFILE_PRESETS.get(opts.profile, opts.preset)
    return JobSettings(codec=opts.codec, quality=opts.quality, preset=preset, video=media.video, job_id=job_id,
                       frame_filter=fit.filter, verify=opts.verify, target=opts.target())


def hdr_output_line(path: str, media: MediaInfo) -> str:
    """For an HDR source, whether the joined file's first frame still carries its HDR (one ffprobe of one
    frame; each segment's first frame was checked by its actor)."""
    if media.video.hdr is None:
        return ""
    lost = hdr.check_output(path, media.video.hdr)
    return f"output frame 0: {hdr.LOST + lost if lost else 'kept'}"


@dataclass
class Encoded:
    """What the encode phase gives: the encoded files in segment order, and how it went. It is filled while
    the phase runs, so that a failed encode still tells settle what it used."""

    paths: list[str]
    workers: list[Worker]                                            # that took part (local ones after a fallback)
    results: list[EncodeResult] = field(default_factory=list)        # in segment order once the phase is done
    failures: list[FailedAttempt] = field(default_factory=list)
    duplicates: int = 0
    refusals: list[Refusal] = field(default_factory=list)            # labels a provider refused meanwhile
    provider: list[str] = field(default_factory=list)                # what was done about them

    @classmethod
    def start(cls, segments: list[Segment], workdir: str, workers: list[Worker]) -> "Encoded":
        return cls([os.path.join(workdir, f"enc-{i:06d}.mp4") for i in range(len(segments))], list(workers))

    def add_pool(self, pool: EncoderPool) -> None:
        """Take over the failures, duplicates and refusals of a pool that is done, and the workers that joined
        it while it ran (:class:`~montage_ray.cluster.workers.Starting`)."""
        self.workers += [w for w in pool.workers if all(w is not x for x in self.workers)]
        self.failures += pool.failures
        self.duplicates += pool.duplicates
        self.refusals += pool.refusals


#: ``MONTAGE_RAY_STREAM_JOIN=0`` joins only once every segment is encoded (see :meth:`JobRun.start_join`).
STREAM_JOIN_ENV = "MONTAGE_RAY_STREAM_JOIN"


def write_extras(report: JobReport, job: ValidJob) -> None:
    """The ``--report`` JSON and the ``--timeline`` PNG, each written atomically, never over a file that
    appeared meanwhile unless ``overwrite``."""
    for what, path in (("report", job.report), ("timeline", job.timeline)):
        if path is None:
            continue
        try:
            if what == "report":
                report.write_json(path, overwrite=job.options.overwrite)
            else:
                from montage_ray.job.timeline import draw_timeline

                draw_timeline(report, path, overwrite=job.options.overwrite)
        except OSError as err:
            raise InputError(f"{report.output!r} was written, but the {what} {path!r} could not be: "
                             f"{err.strerror or err}") from None


# -- helpers --------------------------------------------------------------------------------------------


class _Arrivals:
    """The pieces a :class:`~montage_ray.media.cut.Cut` has handed out, so that a second pool (after a fallback)
    learns of those that arrived before it as well as of the ones still to come."""

    def __init__(self, cut: Cut) -> None:
        self.cut = cut
        self.seen: list[int] = []

    def feed(self) -> ReadyFeed:
        """A fresh feed for one pool run: every piece cut so far at once, then each new one."""
        backlog = list(self.seen)

        def ready(wait: float) -> list[int]:
            nonlocal backlog
            if backlog:
                out, backlog = backlog, []
                return out
            new = self.cut.ready(wait)
            self.seen += new
            return new

        return ready


def _timed(fn: Callable[..., Any], *args: Any) -> tuple[Any, float, float]:
    """``fn(*args)`` and when it ran (monotonic start, end): for a phase that runs beside another."""
    started = time.monotonic()
    return fn(*args), started, time.monotonic()


def _all_refused(pool: EncoderPool) -> bool:
    """A provider refused a label of the pool, and no worker of it is left."""
    return bool(pool.refusals) and not any(w.alive for w in pool.workers)


@contextlib.contextmanager
def _lease(session: RaySession, job_id: str, priority: int) -> Iterator[JobLease | None]:
    """The job's lease at the encoder service's scheduler while the job uses the session (None without one)."""
    if session.service is None:
        yield None
        return
    lease = session.service.lease(job_id, priority=priority)
    try:
        yield lease
    except EncoderError:
        stopped = lease.stopped()  # `service stop --force` killed its actors: say that, not what it broke
        if stopped:
            raise ClusterError(stopped) from None
        raise
    finally:
        lease.close()


def _duration(media: MediaInfo) -> float:
    """Seconds of video: frames over frame rate (the container's duration when the rate is unknown)."""
    return float(media.video.frames / media.video.frame_rate) if media.video.frame_rate else media.duration


def _listener(progress: ProgressListener | ProgressCallback | None) -> ProgressListener | None:
    if progress is None or isinstance(progress, ProgressListener):
        return progress
    return CallbackListener(progress)


class _Clock:
    """Seconds per phase (``timings``) and each phase's span since the start (``spans``, for the timeline)."""

    def __init__(self) -> None:
        self.started_at = time.time()
        self._start = self._since = time.monotonic()
        self.timings: dict[str, float] = {}
        self.spans: list[tuple[str, float, float]] = []

    def lap(self, name: str) -> None:
        now = time.monotonic()
        self.timings[name] = self.timings.get(name, 0.0) + now - self._since
        self.spans.append((name, self._since - self._start, now - self._start))
        self._since = now

    def overlapped(self, parts: list[tuple[str, float, float]]) -> None:
        """Phases that ran side by side (name, monotonic start, end): each keeps its real span; the timings
        count each second once (the phase that ended first gets its time, the next what it added)."""
        counted = self._since
        for name, start, end in sorted(parts, key=lambda p: p[2]):
            self.timings[name] = self.timings.get(name, 0.0) + max(0.0, end - counted)
            counted = max(counted, end)
        for name, start, end in parts:
            self.spans.append((name, start - self._start, end - self._start))
        self._since = max(self._since, counted)

    def skip(self) -> None:
        """Start the next phase now, without counting the time since the last one."""
        self._since = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self._start
