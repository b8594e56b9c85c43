"""The pool on a real local Ray: retries on another actor, failing actors leave, dead actors are replaced."""

from __future__ import annotations

from dataclasses import replace

import pytest
import ray

from montage_ray.backends import BACKENDS, cpu_spec
from montage_ray.dispatch import EncoderPool, start_actors, stop_actors
from montage_ray.errors import EncoderError
from montage_ray.media import inspect
from montage_ray.plan import plan_segments
from montage_ray.split import split_source

pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.fixture(scope="module")
def job(make_clip, tmp_path_factory):
    info = inspect(make_clip("long"))
    segments = plan_segments(info.packets, info.video.time_base, 2)
    paths = split_source(info, segments, str(tmp_path_factory.mktemp("split")))

    def load(seg):
        with open(paths[seg.index], "rb") as fh:
            return fh.read()

    return segments, load


def nvenc_on_cpu_slot():
    """The real h264_nvenc spec, scheduled on a CPU slot (this cluster offers no "nvenc" resource)."""
    return replace(BACKENDS["nvenc"].spec("h264"), resource=None)


def options(_seg):
    return {"timeout": 120, "video_args": ["-pix_fmt", "yuv420p"]}


def test_a_failing_hardware_actor_falls_back_to_cpu(job):
    """h264_nvenc fails for real here (no driver): its segments move to the CPU actor, with reasons."""
    segments, load = job
    broken = start_actors(nvenc_on_cpu_slot(), 1, prefix="test-broken")
    good = start_actors(cpu_spec("h264", preset="ultrafast"), 1, prefix="test-good")
    pool = EncoderPool(broken + good, max_worker_failures=2)
    try:
        done = {seg.index: result for seg, result, _ in pool.run(segments, load=load, call_options=options)}
    finally:
        stop_actors(broken + good)
    assert sorted(done) == [s.index for s in segments]
    assert {r.actor for r in done.values()} == {"test-good:cpu:0"}
    # out of rotation after 2 failures; one more may already have been in flight (depth 2)
    assert len(pool.failures) in (2, 3) and all(f.actor == "test-broken:cpu:0" for f in pool.failures)
    assert all(f.reason == "failed" and f.stderr for f in pool.failures)
    assert not pool.workers[0].alive


def test_a_killed_actor_loses_no_segment(job):
    segments, load = job
    workers = start_actors(cpu_spec("h264", preset="veryfast", threads=1), 2, prefix="test-kill")
    pool = EncoderPool(workers)
    done = {}
    try:
        for seg, result, data in pool.run(segments, load=load, call_options=options):
            if not done:
                ray.kill(workers[0].actor, no_restart=True)
            done[seg.index] = result
    finally:
        stop_actors(workers)
    assert sorted(done) == [s.index for s in segments]
    assert sum(r.frames for r in done.values()) == sum(s.frames for s in segments)
    assert any(f.reason == "actor-died" for f in pool.failures)
    assert not workers[0].alive


def test_when_every_encoder_fails_the_error_says_why(job):
    segments, load = job
    broken = start_actors(nvenc_on_cpu_slot(), 1, prefix="test-allbroken")
    pool = EncoderPool(broken, max_worker_failures=5)
    try:
        with pytest.raises(EncoderError, match="failed 3 times"):
            list(pool.run(segments[:1], load=load, call_options=options))
    finally:
        stop_actors(broken)
