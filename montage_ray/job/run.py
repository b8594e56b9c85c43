"""One encode job from source to verified destination, as a straight list of phases.

:func:`encode` is the public entry point behind :func:`montage_ray.encode` and ``montage-ray encode``. It
reads top to bottom: validate -> inspect (in a thread, while Ray starts) -> session -> offers/route ->
workers -> plan -> cut + encode (pipelined: the cutter runs in the background and each piece goes to the
pool the moment it is cut) -> settle -> join -> verify (the structure and the joins decoded here; each actor
decoded its own segment) -> publish, each phase a function that returns what the next needs (settle: what
the paid labels cost, see :mod:`montage_ray.spending.budget`, even when the encode failed); the
:class:`~montage_ray.job.report.JobReport` is built at the end from what the phases returned. Only a verified
file is ever renamed to the destination::

    from montage_ray import encode
    from montage_ray.job.options import EncodeOptions

    report = encode("input.mp4", "output.mp4", codec="h264", quality=23)
    report = encode("input.mp4", "output.mp4", EncodeOptions(codec="hevc", report="out.json"))
    print(report.summary())

A segment that an interrupted run of the same job encoded and verified is taken from the segment cache at
plan time (:mod:`montage_ray.job.cache`: :func:`reuse_segments`); only the others are encoded, each kept there as
it lands, and the job's entries are cleared once the destination is published.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from montage_ray.encoders import hdr
from montage_ray.util import workdirs
from montage_ray.job.cache import SegmentCache, maker_id, settings_fingerprint, source_identity
from montage_ray.ffmpeg.caps import ffmpeg_caps
from montage_ray.spending.budget import Bill, BudgetView, price_of, refusals_at_start, settle
from montage_ray.cluster.nodes import Placement, offered_labels, offers, placements, remote_labels
from montage_ray.cluster.pool import EncoderPool, PoolOptions, ReadyFeed
from montage_ray.cluster.service import JobLease
from montage_ray.cluster.session import RaySession, ray_session, starts_private
from montage_ray.cluster.workers import Worker
from montage_ray.encoders.config import LabelConfig
from montage_ray.errors import ClusterError, EncoderError, FFmpegError, InputError, VerificationError
from montage_ray.util.files import publish
from montage_ray.media.join import JoinPlan, MoovRoomTooSmall, NoNamedPipes, StreamingJoin, join_segments, verify_output
from montage_ray.media.info import MediaInfo, inspect
from montage_ray.job.options import EncodeOptions, ValidJob
from montage_ray.media.plan import (FrameFit, Segment, fit_frame, is_small_job, plan_segments, segment_length,
                              small_job_seconds)
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

#: Seconds the source's inspection runs alone before Ray starts beside it: ffprobe refuses a file that is
#: not a video (text, truncated, audio only, unknown codec) within them, and the job ends with its one line
#: without starting and stopping a private Ray (seconds).
INSPECT_HEAD_START = 0.3

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
    opts = job.options
    clock.skip()
    job_id = uuid.uuid4().hex[:8]
    listener = _listener(progress)
    if listener:
        listener.begin(job_id=job_id, source=os.fspath(src), destination=os.fspath(dst))
    folder = os.path.dirname(job.target)
    workdirs.sweep(folder, WORKDIR_PREFIX)  # leftovers of killed jobs (whose owner is gone)
    workdir = cache = streaming = None
    try:
        workdir = workdirs.make_workdir(folder, WORKDIR_PREFIX)
        tmp_out = os.path.join(workdir, "joined" + os.path.splitext(job.target)[1])
        with contextlib.ExitStack() as in_session:
            with ThreadPoolExecutor(2, thread_name_prefix="inspect") as side:
                inspecting = side.submit(_timed, inspect, job.source)           # inspect, while ...
                side.submit(ffmpeg_caps)  # (what this ffmpeg can do, for the cut: asked once per process)
                with contextlib.suppress(FutureTimeout):  # a bad input mostly fails at once: say so
                    inspecting.result(timeout=INSPECT_HEAD_START)  # before a Ray is started for nothing
                ray_from = time.monotonic()
                if listener and starts_private(opts.address):
                    listener.stage("starting a local Ray ...")  # seconds, before anything else shows
                try:
                    session = in_session.enter_context(ray_session(opts.address))  # ... Ray starts
                except BaseException:
                    inspecting.result()  # a bad input says so before a cluster problem does
                    raise
                ray_to = time.monotonic()
                media, probe_from, probe_to = inspecting.result()
            dv_note = hdr.refuse_dolby_vision(media, allow_loss=opts.allow_dv_loss)  # InputError unless allowed
            clock.overlapped([("probe", probe_from, probe_to), ("ray", ray_from, ray_to)])
            lease = in_session.enter_context(_lease(session, job_id, opts.priority))  # the service's, if shared
            fit = fit_frame(media.video.width, media.video.height)  # odd sizes: decided before any encoder
            settings = job_settings(media, opts, fit, job_id)
            log.info("job %s: %s -> %s (%d frames)", job_id, src, dst, media.video.frames)
            decision = route_job(media, job)                                    # offers/route
            crew = start_workers(session, decision, media, job, settings)       # workers
            cache = open_cache(job, media, settings)
            segments = (cache and cache.plan(opts.segment_seconds, len(media.packets))  # an earlier run's cuts
                        or plan_job(media, opts, crew.ready))                   # plan
            ready = crew.ready[:max(1, len(segments))]
            encoded = Encoded.start(segments, workdir, ready)
            streaming = start_streaming_join(media, segments, tmp_out, workdir, job, ready)  # join, as they come
            reused = reuse_segments(cache, segments, encoded, crew, job)       # pieces an earlier run made
            if streaming is not None:
                for index in reused:
                    streaming.offer(index, encoded.paths[index])
            todo = [s for s in segments if s.index not in reused]
            clock.lap("plan")
            try:
                if todo:
                    cut = start_cut(media, segments, workdir)                   # cut, in the background
                    try:
                        encode_segments(encoded, todo, cut, settings, session, pool_options,  # encode as cut
                                        listener, fallback=lambda: _local_workers(session, job, settings),
                                        on_piece=_on_piece(_storer(cache, segments, job, opts.segment_seconds),
                                                           streaming), gate=lease)
                    finally:
                        cut.close()
            finally:  # even when the encode failed: the paid labels were used, the refusals happened
                bill = settle_job(job_id, clock.started_at, crew, encoded, job.config)   # settle
            encoded.results = sorted(encoded.results + list(reused.values()), key=lambda r: r.segment)
            clock.lap("encode")
        clock.lap("ray")  # start-up above, shut-down (of a Ray started here) now
        joined = finish_join(streaming, media, segments, encoded, tmp_out, workdir, job)  # join (the rest)
        clock.lap("join")
        # each actor decoded its own segment in full (--verify decode): here the structure and the joins
        checked = verify_output(tmp_out, joined, decode=False)                  # verify
        hdr_out = hdr_output_line(tmp_out, media)
        clock.lap("verify")
        publish(tmp_out, job.target, overwrite=opts.overwrite)                  # publish
        if cache is not None and not opts.keep_cache:
            cache.clear(segments, opts.segment_seconds)
    except (OSError, FFmpegError, EncoderError, VerificationError) as err:
        full = workdirs.disk_full_error(folder, err)  # a full disk: one line, exit 4, not a traceback
        if cache is not None and (full is not None or isinstance(err, VerificationError)):
            cache.discard()  # its pieces would hold the space to free, or be taken again by a re-run
        if full is not None:
            raise full from None
        raise
    finally:
        if streaming is not None:
            streaming.stop()  # a failed job's join: killed, its feeder ended
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    report = JobReport(
        source=os.fspath(src), output=os.fspath(dst), codec=opts.codec, frames=media.video.frames,
        duration=sum(s.duration for s in segments), job_id=job_id, started=clock.started_at,
        wall_seconds=clock.elapsed(), timings=clock.timings, phases=clock.spans, segments=encoded.results,
        failures=crew.unavailable + encoded.failures, encoders=sorted({w.encoder for w in encoded.workers}),
        notes=[*([fit.note] if fit.note else []), *joined.notes, *checked.notes, *bill.notes],
        ray_address=session.address, profile=opts.profile, route=list(decision.reasons), segments_reused=len(reused),
        duplicates=encoded.duplicates, cost=bill.cost, provider=[*bill.provider, *encoded.provider],
        hdr=[*hdr.report_lines(media.video.hdr, encoded.results, output=hdr_out), *([dv_note] if dv_note else [])],
        workers=[{"name": w.name, "label": w.label, "encoder": w.encoder, "host": w.hostname, "node": w.node,
                  "pid": w.pid} for w in encoded.workers])
    write_extras(report, job)
    return report


# -- the phases -----------------------------------------------------------------------------------------


def job_settings(media: MediaInfo, opts: EncodeOptions, fit: FrameFit, job_id: str) -> JobSettings:
    """What every encoder actor of this job needs besides its segment: codec, quality, the profile's
    preset, the source's video facts and the frame fit (:func:`~montage_ray.media.plan.fit_frame`)."""
    preset = PROFILE_PRESETS.get(opts.profile, opts.preset)
    return JobSettings(codec=opts.codec, quality=opts.quality, preset=preset, video=media.video, job_id=job_id,
                       frame_filter=fit.filter, verify=opts.verify, target=opts.target())


def route_job(media: MediaInfo, job: ValidJob) -> Route:
    """Which labels of what the cluster offers take part in this job (see :mod:`montage_ray.spending.routing`); a paid
    label's price, budget left this month and any provider back-off come from the ledger (read once)."""
    import ray

    opts = job.options
    budget = BudgetView.load(job.config)
    offered = offers(ray.nodes(), job.config, pixels=media.video.width * media.video.height, labels=opts.labels,
                     terms=budget.terms)
    offered, hdr_reasons = (master_offers(offered, media.video.hdr, opts.codec, job.config)
                            if opts.profile == "master" else (offered, []))
    decision = route(JobFacts(frames=media.video.frames, duration=_duration(media), input_bytes=media.size,
                              profile=opts.profile, small_job_seconds=small_job_seconds(opts.segment_seconds)),
                     offered)
    if hdr_reasons:
        decision = dataclasses.replace(decision, reasons=(*hdr_reasons, *decision.reasons))
    if not decision.labels:
        raise ClusterError("no encoder in the cluster can serve this job: " + "; ".join(decision.reasons))
    return decision


def hdr_output_line(path: str, media: MediaInfo) -> str:
    """For an HDR source, whether the joined file's first frame still carries its HDR (one ffprobe of one
    frame; each segment's first frame was checked by its actor)."""
    if media.video.hdr is None:
        return ""
    lost = hdr.check_output(path, media.video.hdr)
    return f"output frame 0: {hdr.LOST + lost if lost else 'kept'}"


@dataclass
class Crew:
    """The encoder actors of a job that started, and why the others did not."""

    ready: list[Worker]
    unavailable: list[FailedAttempt] = field(default_factory=list)


def start_workers(session: RaySession, decision: Route, media: MediaInfo, job: ValidJob,
                  settings: JobSettings) -> Crew:
    """Start (or reuse) an actor per session of the chosen labels: one for a small job, at most ``workers``."""
    import ray

    opts = job.options
    chosen = placements(ray.nodes(), decision.labels, job.config)
    if is_small_job(_duration(media), opts.segment_seconds):
        chosen = chosen[:1]  # shorter than two segments: one segment, one actor
    if opts.workers is not None:
        chosen = chosen[:opts.workers]
    ready, unavailable = _start(session, chosen, job.config, settings)
    if not ready:
        raise ClusterError("no encoder could start: " + "; ".join(f"{u.actor}: {u.message}" for u in unavailable))
    return Crew(ready, unavailable)


def plan_job(media: MediaInfo, opts: EncodeOptions, workers: list[Worker]) -> list[Segment]:
    """Cut points for this job, at the length :func:`~montage_ray.media.plan.segment_length` chooses."""
    length = segment_length(_duration(media), chosen=opts.segment_seconds, speeds=[w.fps for w in workers])
    return plan_segments(media.packets, media.video.time_base, length.seconds, taper=length.taper)


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
        """Take over the failures, duplicates and refusals of a pool that is done."""
        self.failures += pool.failures
        self.duplicates += pool.duplicates
        self.refusals += pool.refusals


def encode_segments(encoded: Encoded, segments: list[Segment], cut: Cut, settings: JobSettings,
                    session: RaySession, pool_options: PoolOptions | None, listener: ProgressListener | None, *,
                    fallback: Callable[[], list[Worker]] | None = None,
                    on_piece: Callable[[Segment, EncodeResult, str], None] | None = None,
                    gate: JobLease | None = None) -> Encoded:
    """Run every segment through a pool of ``encoded.workers`` the moment ``cut`` has it, writing each encoded
    piece as it arrives (then ``on_piece(segment, result, path)``: the segment cache keeps it).

    When a provider refuses every label of the pool (quota, session limit), the segments left go to
    ``fallback()``'s workers (the local encoders) instead of failing the job. On the encoder service,
    ``gate`` is the job's lease at the scheduler (fair share with the other jobs, priority first).
    """
    if gate is not None:
        gate.update(frames=sum(s.frames for s in segments), segments=len(segments))
    pool = EncoderPool(encoded.workers, pool_options, registry=session.registry, gate=gate)
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
        listener.start(frames=sum(s.frames for s in segments), segments=len(segments), encoders=len(encoded.workers))
    try:
        while True:
            try:
                for seg, result, data in pool.run([s for s in segments if s.index not in done], load=load,
                                                  settings=settings, ready=arrivals.feed(),
                                                  on_tick=on_tick if listener else None):
                    with open(encoded.paths[seg.index], "wb") as fh:
                        fh.write(data)
                    if on_piece is not None:
                        on_piece(seg, result, encoded.paths[seg.index])
                    done.add(seg.index)
                    encoded.results.append(result)
                    if listener:
                        tell_failures()
                        listener.segment_done(result)
                break
            except EncoderError:
                local = fallback() if fallback is not None and _all_refused(pool) else []
                if not local:
                    raise
                if listener:
                    tell_failures()
                encoded.add_pool(pool)
                encoded.workers += [w for w in local if all(w is not x for x in encoded.workers)]
                encoded.provider.append("every encoder of the job was refused; the rest went to "
                                        + ", ".join(sorted({w.label for w in local})))
                pool, told = EncoderPool(local, pool_options, registry=session.registry, gate=gate), 0
    finally:
        encoded.add_pool(pool)
        if listener:
            listener.close()
    encoded.results.sort(key=lambda r: r.segment)
    return encoded


#: ``MONTAGE_RAY_STREAM_JOIN=0`` joins only once every segment is encoded (see :func:`start_streaming_join`).
STREAM_JOIN_ENV = "MONTAGE_RAY_STREAM_JOIN"


def start_streaming_join(media: MediaInfo, segments: list[Segment], tmp_out: str, workdir: str, job: ValidJob,
                         workers: list[Worker]) -> StreamingJoin | None:
    """The join, started now and fed each segment as it arrives in order (:class:`~montage_ray.media.join.StreamingJoin`),
    when every worker is the same encoder: segments of differently configured encoders are aligned first,
    which needs all of them (then, and with ``MONTAGE_RAY_STREAM_JOIN=0``, None: the join waits for the end)."""
    if os.environ.get(STREAM_JOIN_ENV, "1") == "0" or not hasattr(os, "mkfifo") or len(segments) < 2:
        return None
    if len({w.encoder for w in workers}) != 1:
        return None
    try:
        return StreamingJoin(media, segments, tmp_out, workdir, container=job.container)
    except NoNamedPipes as err:
        log.info("joining at the end: %s", err)
        return None


def finish_join(streaming: StreamingJoin | None, media: MediaInfo, segments: list[Segment], encoded: Encoded,
                tmp_out: str, workdir: str, job: ValidJob) -> JoinPlan:
    """The joined file: the streamed join's end when it ran and every piece came from one encoder (after a
    fallback to other encoders they must be aligned: it is stopped and the segments joined here), else the
    whole join now. A streamed join that failed is logged and done again the plain way."""
    mixed = len({r.encoder for r in encoded.results}) > 1
    reserve = True
    if streaming is not None and not mixed:
        try:
            return streaming.finish()
        except FFmpegError as err:
            reserve = not isinstance(err, MoovRoomTooSmall)  # then the same room would be too small again
            log.warning("the streamed join failed (%s); joining again from the encoded files", err)
    if streaming is not None:
        streaming.stop()
        with contextlib.suppress(OSError):
            os.unlink(tmp_out)
    return join_segments(media, segments, encoded.paths, tmp_out, workdir, container=job.container, mixed=mixed,
                         codec=job.options.codec, reserve=reserve)


def _on_piece(store: Callable[[Segment, EncodeResult, str], None] | None,
              streaming: StreamingJoin | None) -> Callable[[Segment, EncodeResult, str], None] | None:
    """What happens to each encoded piece once it is written: kept in the cache, handed to the streamed join."""
    if streaming is None:
        return store

    def landed(seg: Segment, result: EncodeResult, path: str) -> None:
        streaming.offer(seg.index, path)  # first: the last piece's store is not on the way to the output
        if store is not None:
            store(seg, result, path)

    return landed


def open_cache(job: ValidJob, media: MediaInfo, settings: JobSettings) -> SegmentCache | None:
    """The segment cache of this source and these settings (see :mod:`montage_ray.job.cache`), its entries
    that nobody came back for pruned; None with ``--no-cache``."""
    if job.cache is None:
        return None
    cache = SegmentCache(job.cache, source_identity(job.source, media.packets, media.video.index),
                         settings_fingerprint(job.options, settings))
    cache.prune()
    return cache


def reuse_segments(cache: SegmentCache | None, segments: list[Segment], encoded: Encoded, crew: Crew,
                   job: ValidJob) -> dict[int, EncodeResult]:
    """The segments an earlier run encoded and verified, put in place in ``encoded.paths`` (segment index ->
    its result, marked ``reused``): only pieces made by an encoder of the kind serving this job, and
    decoded once when ``--verify decode``. The pieces are re-checked side by side (a packet count each)."""
    if cache is None or not os.path.isdir(cache.folder):
        return {}
    makers = {maker_id(w.label, w.encoder, job.config.get(w.label)) for w in crew.ready}
    with ThreadPoolExecutor(4, thread_name_prefix="cache") as side:
        found = side.map(lambda s: cache.take(s, encoded.paths[s.index], makers=makers, verify=job.options.verify),
                         segments)
        reused = {r.segment: r for r in found if r is not None}
    if reused:
        log.info("reusing %d of %d segments from %s", len(reused), len(segments), cache.folder)
    return reused


def _storer(cache: SegmentCache | None, segments: list[Segment], job: ValidJob,
            plan_key: Any) -> Callable[[Segment, EncodeResult, str], None] | None:
    """What keeps each verified piece in the cache as it lands (with the job's plan, beside the first)."""
    if cache is None:
        return None

    def store(seg: Segment, result: EncodeResult, path: str) -> None:
        maker = maker_id(result.resource or result.backend, result.encoder, job.config.get(result.resource or ""))
        cache.store(seg, result, path, maker=maker, verified=job.options.verify, plan=(plan_key, segments))

    return store


def settle_job(job_id: str, started: float, crew: Crew, encoded: Encoded, config: Mapping[str, LabelConfig]) -> Bill:
    """What the paid labels cost (ledger, ``ray_montage_cost``), and the labels providers refused backed off."""
    return settle(job_id, started, encoded.results, crew.unavailable + encoded.failures, config,
                  refusals_at_start(crew.unavailable) + encoded.refusals)


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


def _local_workers(session: RaySession, job: ValidJob, settings: JobSettings) -> list[Worker]:
    """Start (or reuse) the cluster's local encoder actors, for a job whose every label a provider refused:
    each offered label (of ``labels``, when given) that is neither remote nor paid."""
    import ray

    nodes = ray.nodes()
    remotes = remote_labels(nodes)
    wanted, config = job.options.labels, job.config
    local = [label for label in offered_labels(nodes, config)
             if (wanted is None or label in wanted) and label not in remotes
             and not (label in config and (config[label].remote or price_of(config[label])))]
    if not local:
        return []
    ready, _ = _start(session, placements(nodes, local, config), config, settings)
    return ready


def _start(session: RaySession, chosen: list[Placement], config: Mapping[str, LabelConfig], settings: JobSettings
           ) -> tuple[list[Worker], list[FailedAttempt]]:
    """The actors of ``chosen`` that start: the encoder service's on a shared Ray (this process's own registry
    actors are stopped first: they would hold the slots), else this session's registry's."""
    if session.service is not None:
        session.registry.stop()
        return session.service.wait_ready(session.service.start(chosen, config, job=settings.job_id), settings)
    return session.registry.wait_ready(session.registry.start(chosen, config), settings)


@contextlib.contextmanager
def _lease(session: RaySession, job_id: str, priority: int) -> Iterator[JobLease | None]:
    """The job's lease at the encoder service's scheduler while the job uses the session (None without one)."""
    if session.service is None:
        yield None
        return
    lease = session.service.lease(job_id, priority=priority)
    try:
        yield lease
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
