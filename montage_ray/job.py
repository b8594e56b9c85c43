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
import tempfile
import time
from typing import Any, Callable, Iterator

from montage_ray import backends
from montage_ray.backends import CODECS, PRESETS
from montage_ray.dispatch import EncoderPool, start_actors, stop_actors
from montage_ray.encode import EncodeResult, segment_timeout, video_output_args
from montage_ray.errors import ClusterError, InputError
from montage_ray.join import container_for, join_segments, verify_output
from montage_ray.media import check_source, inspect
from montage_ray.plan import Segment, plan_segments
from montage_ray.report import JobReport
from montage_ray.split import split_source

log = logging.getLogger(__name__)

#: Called after each finished segment with (segments done, segments total, the result).
ProgressCallback = Callable[[int, int, EncodeResult], None]


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


def _check_options(codec: str, quality: int, preset: str, segment_seconds: float) -> None:
    if codec not in CODECS:
        raise InputError(f"unknown codec {codec!r}: use one of {', '.join(CODECS)}")
    if not isinstance(quality, int) or not 0 <= quality <= 51:
        raise InputError(f"quality must be a whole number from 0 (best) to 51, not {quality!r}")
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
    if not segment_seconds > 0:
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
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
    if address in (None, "", "local") and not os.environ.get("RAY_ADDRESS"):
        kwargs["include_dashboard"] = False
        target = "local"
    else:
        target = address or os.environ["RAY_ADDRESS"]
        import montage_ray

        if target not in ("auto", "local"):  # a remote cluster gets this package shipped to it
            kwargs["runtime_env"] = {"py_modules": [os.path.dirname(montage_ray.__file__)]}
        kwargs["address"] = target
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ClusterError(f"cannot connect to Ray at {target!r}: {str(err).splitlines()[0]} "
                           "(start one with `ray start --head`, or leave out --address for a local Ray)")
    try:
        yield target
    finally:
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


def encode(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, codec: str = "h264",
           quality: int = 23, preset: str = "medium", segment_seconds: float = 10.0,
           address: str | None = None, overwrite: bool = False, report: str | None = None,
           workers: int | None = None, verify: str = "decode",
           progress: ProgressCallback | None = None) -> JobReport:
    """Encode ``src`` into ``dst`` on Ray and return the :class:`~montage_ray.report.JobReport`.

    ``quality`` is CRF-like (0 best .. 51 worst, 23 default); ``preset`` an x264-style speed name;
    ``workers`` caps the encoder actors (default: one per CPU of the cluster); ``verify`` is ``"decode"``
    (decode every output frame) or ``"packets"`` (count packets only). ``report`` writes the JSON report.
    Raises :class:`~montage_ray.errors.MontageError` subclasses; the destination is only written once the
    joined file has been verified.
    """
    started = time.monotonic()
    _check_options(codec, quality, preset, segment_seconds)
    if verify not in ("decode", "packets"):
        raise InputError(f"verify must be 'decode' or 'packets', not {verify!r}")
    source = check_source(src)
    target = check_destination(dst, overwrite=overwrite, source=source)
    container = container_for(target)
    if report is not None and not os.path.isdir(os.path.dirname(os.path.abspath(report))):
        raise InputError(f"report folder {os.path.dirname(os.fspath(report))!r} does not exist")
    timings: dict[str, float] = {}

    def phase(name: str, since: float) -> float:
        now = time.monotonic()
        timings[name] = timings.get(name, 0.0) + now - since
        return now

    t = time.monotonic()
    media = inspect(source)
    t = phase("probe", t)
    segments = plan_segments(media.packets, media.video.time_base, segment_seconds)
    t = phase("plan", t)
    job = JobReport(source=os.fspath(src), output=os.fspath(dst), codec=codec, frames=media.video.frames,
                    duration=sum(s.duration for s in segments))
    workdir = tempfile.mkdtemp(prefix=".montage-ray-", dir=os.path.dirname(target))
    try:
        with ray_session(address) as where:
            job.ray_address = where
            t = phase("ray", t)
            paths = split_source(media, segments, workdir)
            t = phase("split", t)
            encoded = _encode_all(media, segments, paths, workdir, job, codec=codec, quality=quality,
                                  preset=preset, workers=workers, progress=progress)
            t = phase("encode", t)
        t = phase("ray", t)  # start-up above, shut-down (of a Ray started here) now
        ext = os.path.splitext(target)[1]
        tmp_out = os.path.join(workdir, "joined" + ext)
        plan = join_segments(media, segments, encoded, tmp_out, workdir, container=container)
        job.notes.extend(plan.notes)
        t = phase("join", t)
        checked = verify_output(tmp_out, plan, decode=(verify == "decode"))
        job.notes.extend(checked.notes)
        t = phase("verify", t)
        _publish(tmp_out, target, overwrite)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    job.timings = timings
    job.wall_seconds = time.monotonic() - started
    if report is not None:
        job.write_json(os.fspath(report))
    return job


def _encode_all(media, segments: list[Segment], paths: list[str], workdir: str, job: JobReport, *,
                codec: str, quality: int, preset: str, workers: int | None,
                progress: ProgressCallback | None) -> list[str]:
    """Run every segment through a pool of CPU encoder actors; return the encoded files in order."""
    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    count = max(1, min(workers or cpus, cpus, len(segments)))
    threads = max(1, cpus // count)
    spec = backends.cpu_spec(codec, quality=quality, preset=preset, threads=threads)
    job.encoders = [spec.label]
    video_args = video_output_args(media.video, spec)
    sar = f"{media.video.sar.numerator}/{media.video.sar.denominator}" if media.video.sar else None
    actors = start_actors(spec, count)
    encoded = [os.path.join(workdir, f"enc-{i:06d}.nut") for i in range(len(segments))]
    pool = EncoderPool(actors)

    def load(seg: Segment) -> bytes:
        with open(paths[seg.index], "rb") as fh:
            return fh.read()

    def options(seg: Segment) -> dict[str, Any]:
        return {"video_args": video_args, "sar": sar, "threads": threads,
                "timeout": segment_timeout(seg.frames, media.video.width, media.video.height)}

    longest = max(options(s)["timeout"] for s in segments) + 60
    try:
        for seg, result, data in pool.run(segments, load=load, call_options=options, stall_timeout=longest):
            with open(encoded[seg.index], "wb") as fh:
                fh.write(data)
            job.segments.append(result)
            if progress:
                progress(len(job.segments), len(segments), result)
    finally:
        job.failures.extend(pool.failures)
        stop_actors(actors)
    job.segments.sort(key=lambda r: r.segment)
    return encoded
