"""WorkerRegistry on a real local Ray: one actor per slot, reused for the same setup, replaced, stopped."""

from __future__ import annotations

import pytest
import ray

from montage_ray.cluster.nodes import Placement
from montage_ray.cluster.session import connected
from montage_ray.cluster.workers import WorkerRegistry
from montage_ray.encoders.config import LabelConfig
from montage_ray.encoders.records import JobSettings
from montage_ray.media.info import inspect


@pytest.fixture(autouse=True)
def free_slots(ray_cluster):
    """Registries of their own, so the CPU slots that earlier jobs' actors hold are freed first."""
    connected().registry.stop()


def _pid(worker) -> int:
    return ray.get(worker.actor.describe.remote(), timeout=120)["pid"]


def _slot(index: int = 0) -> Placement:
    return Placement("cpu", ray.get_runtime_context().get_node_id(), "reg", index, node_cpus=2)


def test_the_same_setup_reuses_the_actor_and_another_replaces_it():
    registry = WorkerRegistry()
    try:
        [first] = registry.start([_slot()], {})
        pid = _pid(first)
        first.in_flight, first.failures = 3, 1                 # left over from a job
        [again] = registry.start([_slot()], {})
        assert again is first and _pid(again) == pid            # the same process took the next job
        assert (again.in_flight, again.failures) == (0, 0)
        [other] = registry.start([_slot()], {"cpu": LabelConfig("cpu", preset="superfast")})
        assert other is not first and not first.alive           # another setup: the slot's actor replaced
        assert _pid(other) != pid and other.name != first.name   # a fresh name (the old may still be held)
        assert registry.workers == [other]
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(first.actor.describe.remote(), timeout=60)  # the replaced actor was stopped
    finally:
        registry.stop()


def test_a_dead_actor_is_not_reused_and_stop_frees_every_slot():
    registry = WorkerRegistry()
    try:
        workers = registry.start([_slot(0), _slot(1)], {})
        assert len(registry.workers) == 2
        workers[0].alive = False                                # the pool saw it die
        renewed = registry.start([_slot(0), _slot(1)], {})
        assert renewed[0] is not workers[0] and renewed[1] is workers[1]
    finally:
        registry.stop()
    assert registry.workers == [] and not any(w.alive for w in renewed)
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(renewed[1].actor.describe.remote(), timeout=60)


def test_registries_are_independent():
    one, two = WorkerRegistry(), WorkerRegistry()
    try:
        [a] = one.start([_slot(0)], {})
        assert two.workers == [] and one.workers == [a]
    finally:
        one.stop()
        two.stop()


def test_wait_first_is_back_with_one_ready_actor_and_the_others_still_starting(make_clip):
    registry = WorkerRegistry()
    settings = JobSettings(codec="h264", quality=23, preset="ultrafast", video=inspect(make_clip("noaudio")).video)
    try:
        fresh = registry.start([_slot(0), _slot(1)], {})
        ready, bad, starting = registry.wait_first(fresh, settings, grace=0.0)
        assert not bad and 1 <= len(ready) <= 2
        assert {w.name for w in ready + starting.workers} == {w.name for w in fresh}  # none lost, none twice
        assert all(w.encoder for w in ready) and starting.encoder == {ready[0].encoder}
        for ref, w in list(starting.pending.items()):  # the other answers as soon as its process is up
            ray.wait([ref], timeout=120)
            assert starting.take(ref) is w and w.encoder == ready[0].encoder
        assert not starting and not starting.unavailable
    finally:
        registry.stop()
