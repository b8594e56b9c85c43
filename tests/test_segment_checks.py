"""The segment-check policy (--verify): which check each segment gets, and which cached pieces a job takes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from montage_ray.encoders.checks import Check, Verify, accepts, segment_check


@pytest.mark.parametrize("facts, check, why", [
    ({}, Check.PACKETS, "software encoder"),
    ({"standin": True}, Check.DECODE, "stand-in"),
    ({"hardware": True}, Check.DECODE, "hardware encoder"),
    ({"remote": True}, Check.DECODE, "remote node"),
    ({"failed": True}, Check.DECODE, "failed before in this job"),
])
def test_auto_decodes_where_faults_happen(facts, check, why):
    given = {"hardware": False, "standin": False, "remote": False, "failed": False, **facts}
    assert segment_check(Verify.AUTO, **given) == (check, why)
    # the explicit choices hold whatever the encoder
    assert segment_check(Verify.DECODE, **given)[0] == Check.DECODE
    assert segment_check(Verify.PACKETS, **given)[0] == Check.PACKETS


def test_the_policy_is_a_type_that_takes_its_names():
    assert Verify.parse("auto") is Verify.AUTO and Verify("packets") == "packets"
    with pytest.raises(ValueError, match="auto, decode, packets"):
        Verify.parse("none")
    from montage_ray.errors import InputError
    from montage_ray.job.options import EncodeOptions

    assert EncodeOptions().verify is Verify.AUTO and EncodeOptions(verify="decode").verify is Verify.DECODE
    with pytest.raises(InputError, match="verify must be one of auto, decode, packets"):
        EncodeOptions(verify="all").check_values()


@pytest.mark.parametrize("verify, checked, hardware, standin, taken", [
    (Verify.AUTO, "packets", False, False, True),    # software: counted is what auto gives it anyway
    (Verify.AUTO, "packets", False, True, False),    # a stand-in's piece must have been decoded
    (Verify.AUTO, "packets", True, False, False),
    (Verify.AUTO, "decode", True, False, True),
    (Verify.DECODE, "packets", False, False, False),
    (Verify.PACKETS, "packets", True, False, True),
    (Verify.AUTO, "", False, False, False),           # unknown: not taken
])
def test_a_cached_piece_is_taken_only_when_checked_as_this_job_would(verify, checked, hardware, standin, taken):
    assert accepts(verify, checked, hardware=hardware, standin=standin) is taken


def test_the_pool_decodes_stand_ins_other_nodes_failed_actors_and_retries_not_local_software():
    from montage_ray.cluster.nodes import Placement
    from montage_ray.cluster.pool import EncoderPool, _Run
    from montage_ray.cluster.workers import Worker
    from montage_ray.encoders.records import FailedAttempt
    from montage_ray.media.plan import Segment

    here, there = "node-a", "node-b"
    cpu = Worker(actor=None, name="cpu0", label="cpu", placement=Placement("cpu", here, "local", 0, node_cpus=2))
    far = Worker(actor=None, name="cpu1", label="cpu", placement=Placement("cpu", there, "far", 0, node_cpus=2))
    standin = Worker(actor=None, name="vaapi0", label="vaapi", standin=True,
                     placement=Placement("vaapi", here, "local", 0, node_cpus=2))
    flaky = Worker(actor=None, name="cpu2", label="cpu", placement=Placement("cpu", here, "local", 1, node_cpus=2))
    pool = EncoderPool([cpu, far, standin, flaky])
    pool.driver_node = here
    pool.failures.append(FailedAttempt(segment=0, attempt=1, encoder="cpu:libx264", actor="cpu2", reason="crash",
                                       message="x"))
    run = _Run(pool, settings=SimpleNamespace(verify=Verify.AUTO), load=lambda s: b"", threads={},  # type: ignore[arg-type]
               total=2)
    seg = Segment(1, 0, 10, 0.0, 1.0, 0, 30)
    assert run.check_for(cpu, seg, 1) == (Check.PACKETS, "software encoder")
    assert run.check_for(far, seg, 1) == (Check.DECODE, "remote node")
    assert run.check_for(standin, seg, 1) == (Check.DECODE, "stand-in")
    assert run.check_for(flaky, seg, 1) == (Check.DECODE, "failed before in this job")
    assert run.check_for(cpu, seg, 2) == (Check.DECODE, "failed before in this job")  # a retried segment
    run.settings = SimpleNamespace(verify=Verify.PACKETS)
    assert run.check_for(standin, seg, 1) == (Check.PACKETS, "--verify packets")
