"""One encode job from source to verified destination: inspect, plan, split, dispatch, join, verify.

This is the public entry point behind :func:`montage_ray.encode` and ``montage-ray encode``. It checks every
argument before any work starts, uses the Ray you are connected to (or starts a local one and stops it
afterwards), and only ever renames a verified file to the destination::

    from montage_ray import encode

    report = encode("input.mp4", "output.mp4", codec="h264", quality=23)
    print(report.summary())
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import threading
import time
import uuid
from typing import Any, Callable, Iterator

from montage_ray import workdirs
from montage_ray.backends import CODECS, PRESETS
from montage_ray.config import LabelConfig, check_config_for_codec, load_encoders_config
from montage_ray.dispatch import (EncoderPool, PoolOptions, Worker, join_drains, offered_labels, plan_actors,
                                  remote_labels, start_workers, wait_ready)
from montage_ray.encode import EncodeResult, JobSettings
from montage_ray.errors import ClusterError, EncoderError, FFmpegError, InputError, VerificationError
from montage_ray.media import MediaInfo
from montage_ray.join import container_for, join_segments, verify_output
from montage_ray.media import check_source, inspect
from montage_ray.plan import Segment, fit_frame, plan_segments
from montage_ray.progress import CallbackListener, ProgressListener
from montage_ray.report import JobReport
from montage_ray.routing import PROFILES, JobFacts, Offer, route
from montage_ray.split import split_source

log = logging.getLogger(__name__)

#: Prefix of a job's hidden work folder beside the destination (see montage_ray.workdirs).
WORKDIR_PREFIX = ".montage-ray-"

#: Called after each finished segment with (segments done, segments total, the result).
ProgressCallback = Callable[[int, int, EncodeResult], None]


def _listener(progress: ProgressListener | ProgressCallback | None) -> ProgressListener | None:
    if progress is None or isinstance(progress, ProgressListener):
        return progress
    return CallbackListener(progress)


def check_destination(dst: str | os.PathLike[str], *, overwrite: bool, source: str | None = None) -> str:
    """Absolute path of a writable destination, or InputError saying why it cannot be used."""
    text = os.fspath(dst)
    absolute = os.path.abspath(text)
    folder = os.path.dirname(absolute)
    container_for(absolute)
    if not os.path.isdir(folder):
        raise InputError(f"output folder {os.path.dirname(text) or '.'!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise InputError(f"output folder {os.path.dirname(text) or '.'!r} is not writable")
    if os.path.isdir(absolute):
        raise InputError(f"output {text!r} is a folder")
    if source and os.path.exists(absolute) and os.path.samefile(source, absolute):
        raise InputError("output and input are the same file")
    if os.path.lexists(absolute) and not overwrite:
        raise InputError(f"output {text!r} already exists (pass --overwrite to replace it)")
    return absolute


def _check_options(codec: str, quality: int, preset: str, segment_seconds: float | None) -> None:
    if codec not in CODECS:
        raise InputError(f"unknown codec {codec!r}: use one of {', '.join(CODECS)}")
    if not isinstance(quality, int) or not 0 <= quality <= 51:
        raise InputError(f"quality must be a whole number from 0 (best) to 51, not {quality!r}")
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
    if segment_seconds is not None and not segment_seconds > 0:
        raise InputError(f"segment length must be more than 0 seconds, not {segment_seconds!r}")


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[str]:
    """Use the Ray this process is connected to; else connect to ``address``, or start a local one.

    A Ray started here is shut down on exit; one that was already connected is left as it was.
    """
    import ray

    if ray.is_initialized():
        yield "connected"
        return
    # Ray's own warnings (the token notice on every start) only when montage_ray itself logs at INFO
    # (`--verbose`); ERROR otherwise, so that --quiet is quiet.
    verbose = logging.getLogger("montage_ray").isEnabledFor(logging.INFO)
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING if verbose else logging.ERROR,
                              "log_to_driver": False}
    if address in (None, "", "local") and not os.environ.get("RAY_ADDRESS"):
        kwargs["include_dashboard"] = False
        target = "local"
    else:
        target = address or os.environ["RAY_ADDRESS"]
        import montage_ray

        # A remote cluster gets this package shipped to it, unless this driver already runs as a Ray job
        # (whose runtime_env brought the package, and which Ray would refuse to merge with another).
        inside_job = "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ
        if target not in ("auto", "local") and not inside_job:
            kwargs["runtime_env"] = {"py_modules": [os.path.dirname(montage_ray.__file__)]}
        kwargs["address"] = target
    # ray.init installs a SIGTERM handler that exits without a word; keep the caller's (the CLI's: unwind
    # like Ctrl-C, exit 143).
    sigterm = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ClusterError(f"cannot connect to Ray at {target!r}: {str(err).splitlines()[0]} "
                           "(start one with `ray start --head`, or leave out --address for a local Ray)")
    finally:
        if sigterm is not None:
            signal.signal(signal.SIGTERM, sigterm)
    # a new local Ray writes its token world-readable; montage-ray keeps it to its owner
    workdirs.make_private(os.environ.get("RAY_AUTH_TOKEN_PATH") or os.path.expanduser("~/.ray/auth_token"))
    try:
        yield target
    finally:
        join_drains()  # no thread may still be talking to Ray while it shuts down
        ray.shutdown()


def _publish(tmp: str, dst: str, overwrite: bool) -> None:
    """Move the verified file into place; without ``overwrite`` never replace a file that appeared meanwhile."""
    if overwrite:
        os.replace(tmp, dst)
        return
    try:
        os.link(tmp, dst)  # atomic, and fails if dst exists
    except FileExistsError:
        raise InputError(f"output {dst!r} appeared while encoding; not replaced (pass --overwrite)") from None
    except OSError:  # no hard links on this filesystem
        if os.path.lexists(dst):
            raise InputError(f"output {dst!r} appeared while encoding; not replaced (pass --overwrite)")
        os.replace(tmp, dst)
        return
    os.unlink(tmp)


#: First guesses of one session's speed (frames/s at 1080p) before anything was measured.
DEFAULT_FPS = {"cpu": 25.0, "vaapi": 200.0, "qsv": 200.0, "nvenc": 300.0, "nvmpi": 120.0, "v4l2m2m": 60.0}

#: Share of a multi-encoder job, at its end, cut into half-length segments (see plan_segments).
TAPER = 0.2

#: Per-session preset for the quality profiles (``--profile``); "standard" keeps the job's own preset.
PROFILE_PRESETS = {"fast": "veryfast", "master": "slow"}


def auto_segment_seconds(duration: float, sessions: int, speeds: list[float] | None = None) -> float:
    """About six segments per encoder session, between 2 and 10 seconds each.

    When every encoder's speed is known (actors reused from an earlier job), segments are also short
    enough that the last one, on the fastest encoder, takes at most 10 % of the ideal job time: then the
    tail cannot stretch the job much however mixed the speeds are.
    """
    seconds = duration / max(1, 6 * sessions)
    if speeds and all(s > 0 for s in speeds):
        seconds = min(seconds, 0.10 * duration * max(speeds) / sum(speeds))
    return max(2.0, min(10.0, seconds))


def encode(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, codec: str = "h264",
           quality: int = 23, preset: str = "medium", segment_seconds: float | None = None,
           address: str | None = None, overwrite: bool = False, report: str | os.PathLike[str] | None = None,
           workers: int | None = None, verify: str = "decode", profile: str = "standard",
           encoders_config: str | os.PathLike[str] | None = None, labels: list[str] | None = None,
           pool_options: PoolOptions | None = None, progress: ProgressListener | ProgressCallback | None = None,
           timeline: str | os.PathLike[str] | None = None) -> JobReport:
    """Encode ``src`` into ``dst`` on Ray and return the :class:`~montage_ray.report.JobReport`.

    ``quality`` is CRF-like (0 best .. 51 worst, 23 default); ``preset`` an x264-style speed name;
    ``segment_seconds`` the segment length (default: about six segments per encoder session, 2-10 s);
    ``workers`` caps the encoder actors; ``verify`` is ``"decode"`` (decode every output frame) or
    ``"packets"``; ``profile`` is fast, standard or master (master prefers the labels configured as best
    quality); ``encoders_config`` is an encoders YAML (see :mod:`montage_ray.config`); ``labels`` limits
    the resource labels used. ``report`` writes the JSON report, ``timeline`` a PNG of who encoded what
    and when. ``progress`` follows the job: a :class:`~montage_ray.progress.ProgressListener` (such as
    :class:`~montage_ray.progress.ProgressPrinter`) or ``callback(done, total, result)``. Raises
    :class:`~montage_ray.errors.MontageError` subclasses; the destination is only written once the joined
    file has been verified.
    """
    started, started_at = time.monotonic(), time.time()
    _check_options(codec, quality, preset, segment_seconds)
    if verify not in ("decode", "packets"):
        raise InputError(f"verify must be 'decode' or 'packets', not {verify!r}")
    if profile not in PROFILES:
        raise InputError(f"unknown profile {profile!r}: use one of {', '.join(PROFILES)}")
    if workers is not None and workers < 1:
        raise InputError(f"workers must be at least 1, not {workers!r}")
    config = load_encoders_config(encoders_config)
    check_config_for_codec(config, codec)
    source = check_source(src)
    target = check_destination(dst, overwrite=overwrite, source=source)
    container = container_for(target)
    for what, path in (("report", report), ("timeline", timeline)):
        if path is not None and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise InputError(f"{what} folder {os.path.dirname(os.fspath(path))!r} does not exist")
    if timeline is not None and not os.fspath(timeline).lower().endswith(".png"):
        raise InputError(f"timeline {os.fspath(timeline)!r} must be a .png file")
    listener = _listener(progress)
    timings: dict[str, float] = {}

    spans: list[tuple[str, float, float]] = []

    def phase(name: str, since: float) -> float:
        now = time.monotonic()
        timings[name] = timings.get(name, 0.0) + now - since
        spans.append((name, since - started, now - started))
        return now

    t = time.monotonic()
    media = inspect(source)
    t = phase("probe", t)
    job = JobReport(source=os.fspath(src), output=os.fspath(dst), codec=codec, frames=media.video.frames,
                    duration=0.0, profile=profile, job_id=uuid.uuid4().hex[:8], started=started_at)
    preset = PROFILE_PRESETS.get(profile, preset)
    fit = fit_frame(media.video.width, media.video.height)  # odd sizes: decided here, before any encoder
    if fit.note:
        job.notes.append(fit.note)
    settings = JobSettings(codec=codec, quality=quality, preset=preset, video=media.video, job_id=job.job_id,
                           frame_filter=fit.filter)
    log.info("job %s: %s -> %s (%d frames)", job.job_id, job.source, job.output, media.video.frames)
    workdirs.sweep(os.path.dirname(target), WORKDIR_PREFIX)  # leftovers of killed jobs (owner gone)
    workdir = None
    try:
        workdir = workdirs.make_workdir(os.path.dirname(target), WORKDIR_PREFIX)
        with ray_session(address) as where:
            job.ray_address = where
            t = phase("ray", t)
            pool_workers, segments = _prepare(media, settings, config, job, segment_seconds=segment_seconds,
                                              workers=workers, labels=labels, profile=profile)
            job.duration = sum(s.duration for s in segments)
            t = phase("plan", t)
            paths = split_source(media, segments, workdir)
            t = phase("split", t)
            encoded = _encode_all(segments, paths, workdir, job, pool_workers, settings, pool_options, listener)
            t = phase("encode", t)
        t = phase("ray", t)  # start-up above, shut-down (of a Ray started here) now
        ext = os.path.splitext(target)[1]
        tmp_out = os.path.join(workdir, "joined" + ext)
        plan = join_segments(media, segments, encoded, tmp_out, workdir, container=container,
                             mixed=len({r.encoder for r in job.segments}) > 1, codec=codec)
        job.notes.extend(plan.notes)
        t = phase("join", t)
        checked = verify_output(tmp_out, plan, decode=(verify == "decode"))
        job.notes.extend(checked.notes)
        t = phase("verify", t)
        _publish(tmp_out, target, overwrite)
    except (OSError, FFmpegError, EncoderError, VerificationError) as err:
        full = workdirs.disk_full_error(os.path.dirname(target), err)  # one line, exit 4, not a traceback
        if full is not None:
            raise full from None
        raise
    finally:
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
    job.timings = timings
    job.phases = spans
    job.wall_seconds = time.monotonic() - started
    for what, path in (("report", report), ("timeline", timeline)):
        if path is None:
            continue
        try:
            if what == "report":
                job.write_json(os.fspath(path))
            else:
                from montage_ray.timeline import draw_timeline

                draw_timeline(job, os.fspath(path))
        except OSError as err:
            raise InputError(f"{os.fspath(dst)!r} was written, but the {what} {os.fspath(path)!r} could not be: "
                             f"{err.strerror or err}") from None
    return job


def _prepare(media: MediaInfo, settings: JobSettings, config: dict[str, LabelConfig], job: JobReport, *,
             segment_seconds: float | None, workers: int | None, labels: list[str] | None, profile: str
             ) -> tuple[list[Worker], list[Segment]]:
    """Route the job to labels, start (or reuse) their actors, and plan segments for them."""
    import ray

    nodes = ray.nodes()
    offered = offered_labels(nodes, config)
    if labels is not None:
        unknown = set(labels) - set(offered)
        if unknown:
            raise ClusterError(f"the cluster offers no {', '.join(sorted(unknown))} "
                               f"(it offers: {', '.join(sorted(offered)) or 'nothing'})")
        offered = {k: v for k, v in offered.items() if k in labels}
    duration = float(media.video.frames / media.video.frame_rate) if media.video.frame_rate else media.duration
    scale = media.video.width * media.video.height / (1920 * 1080)
    offers = []
    remotes = remote_labels(nodes)  # nodes started with MONTAGE_RAY_REMOTE=1 (ray-start-node.sh)
    for label, sessions in offered.items():
        cfg = config.get(label)
        fps = (cfg.expected_fps if cfg and cfg.expected_fps else DEFAULT_FPS.get(label, 60.0)) / max(scale, 0.05)
        offers.append(Offer(label, sessions, fps, remote=bool(cfg and cfg.remote) or label in remotes,
                            bandwidth_mbps=(cfg.bandwidth_mbps if cfg else None) or remotes.get(label),
                            quality_rank=cfg.quality_rank if cfg else 0, hardware=label != "cpu"))
    seconds_for_facts = segment_seconds or 10.0
    decision = route(JobFacts(frames=media.video.frames, duration=duration, input_bytes=media.size,
                              profile=profile, small_job_seconds=2 * seconds_for_facts), offers)
    job.route = list(decision.reasons)
    if not decision.labels:
        raise ClusterError("no encoder in the cluster can serve this job: " + "; ".join(decision.reasons))
    placements = plan_actors(nodes, decision.labels, config)
    small = duration < 2 * (segment_seconds or 10.0)  # shorter than two segments: one segment, one actor
    if small:
        placements = placements[:1]
    if workers is not None:
        placements = placements[:workers]
    started = start_workers(placements, config)
    ready, unavailable = wait_ready(started, settings)
    job.failures.extend(unavailable)
    if not ready:
        raise ClusterError("no encoder could start: " + "; ".join(f"{u.actor}: {u.message}" for u in unavailable))
    seconds = 2 * duration + 1 if small else (segment_seconds or auto_segment_seconds(duration, len(ready),
                                                                                  [w.fps for w in ready]))
    # A job spread over several encoders ends with half-length segments, a finer tail to share out, unless
    # the user chose the segment length.
    taper = TAPER if len(ready) > 1 and not small and segment_seconds is None else 0.0
    segments = plan_segments(media.packets, media.video.time_base, seconds, taper=taper)
    ready = ready[:max(1, len(segments))] if len(segments) < len(ready) else ready
    job.encoders = sorted({w.encoder for w in ready})
    job.workers = [{"name": w.name, "label": w.label, "encoder": w.encoder, "host": w.hostname,
                    "node": w.node, "pid": w.pid} for w in ready]
    return ready, segments


def _encode_all(segments: list[Segment], paths: list[str], workdir: str, job: JobReport, workers: list[Worker],
                settings: JobSettings, pool_options: PoolOptions | None,
                listener: ProgressListener | None) -> list[str]:
    """Run every segment through the pool; return the encoded files in order."""
    encoded = [os.path.join(workdir, f"enc-{i:06d}.mp4") for i in range(len(segments))]
    pool = EncoderPool(workers, pool_options)
    told = 0  # failures already passed on to the listener

    def load(seg: Segment) -> bytes:
        with open(paths[seg.index], "rb") as fh:
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
        listener.start(frames=sum(s.frames for s in segments), segments=len(segments), encoders=len(workers))
    try:
        for seg, result, data in pool.run(segments, load=load, settings=settings,
                                          on_tick=on_tick if listener else None):
            with open(encoded[seg.index], "wb") as fh:
                fh.write(data)
            job.segments.append(result)
            if listener:
                tell_failures()
                listener.segment_done(result)
    finally:
        job.failures.extend(pool.failures)
        job.duplicates = pool.duplicates
        if listener:
            listener.close()
    job.segments.sort(key=lambda r: r.segment)
    return encoded
