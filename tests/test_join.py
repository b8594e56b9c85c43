"""Joining: segments from differently configured encoders make one clean stream; verification catches lies."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import ray

from montage_ray.config import LabelConfig
from montage_ray.cluster.nodes import Placement
from montage_ray.cluster.pool import EncoderPool
from montage_ray.cluster.session import connected
from montage_ray.segment_encode import JobSettings
from montage_ray.errors import VerificationError
from montage_ray.join import check_structure, container_for, join_segments, verify_output
from montage_ray.media import inspect
from montage_ray.plan import plan_segments
from montage_ray.split import split_source
from tests import browser
from tests import mediacheck as mc

MIXED = [
    {"preset": "ultrafast"},                                              # no B-frames, CAVLC
    {"preset": "medium", "extra_args": ("-bf", "3")},                     # B-frames, pyramid
    {"preset": "veryfast", "extra_args": ("-bf", "0", "-refs", "1")},     # no B-frames, other SPS
]


@pytest.fixture(scope="module")
def mixed_output(make_clip, tmp_path_factory, ray_cluster):
    """The 'long' clip cut into 2 s segments, round-robin over three differently configured encoders."""
    work = tmp_path_factory.mktemp("mixed")
    info = inspect(make_clip("long"))
    segments = plan_segments(info.packets, info.video.time_base, 2)
    paths = split_source(info, segments, str(work))
    node = ray.get_runtime_context().get_node_id()
    settings = JobSettings(codec="h264", quality=23, preset="medium", video=info.video)
    encoded = [str(work / f"enc-{s.index}.mp4") for s in segments]
    results = []
    registry = connected().registry  # the session's: one actor per slot
    for n, config in enumerate(MIXED):
        mine = segments[n::3]
        w = registry.start([Placement("cpu", node, "mix", n, 2)], {"cpu": LabelConfig("cpu", **config)})
        try:
            for seg, result, data in EncoderPool(w).run(mine, load=lambda s: open(paths[s.index], "rb").read(),
                                                        settings=settings):
                open(encoded[seg.index], "wb").write(data)
                results.append(result)
        finally:
            registry.stop(w)
    out = str(work / "mixed.mp4")
    plan = join_segments(info, segments, encoded, out, str(work), container=container_for(out), mixed=True,
                         codec="h264")
    return info, out, plan, results, segments, encoded


def test_three_encoders_join_into_one_clean_stream(mixed_output, make_clip):
    info, out, plan, results, *_ = mixed_output
    assert len({r.encoder for r in results}) == 3
    verify_output(out, plan)
    assert mc.decode_errors(out) == ""
    assert mc.decoded_frames(out) == info.video.frames
    times = mc.video_times(out)
    src = mc.video_times(make_clip("long"))
    assert (abs((times - times[0]) - (src - src[0])) < 1e-3).all()
    mc.assert_same_frames_in_order(make_clip("long"), out)
    v = [s for s in mc.streams(out) if s["codec_type"] == "video"][0]
    assert v["codec_tag_string"] == "avc3"  # parameter sets may change in-band


def test_verification_refuses_a_truncated_join(mixed_output, tmp_path):
    info, out, plan, *_ = mixed_output
    cut = tmp_path / "cut.mp4"
    data = open(out, "rb").read()
    cut.write_bytes(data[: int(len(data) * 0.7)])
    with pytest.raises(VerificationError):
        verify_output(str(cut), plan)


def test_verification_refuses_a_missing_frame(mixed_output, tmp_path):
    info, out, plan, *_ = mixed_output
    fewer = tmp_path / "fewer.mp4"
    mc.run_ffmpeg(["-i", out, "-map", "0", "-c", "copy", "-frames:v", str(info.video.frames - 1), str(fewer)])
    with pytest.raises(VerificationError, match="video frames"):
        verify_output(str(fewer), plan, decode=False)
    shutil.copy(out, tmp_path / "same.mp4")
    assert verify_output(str(tmp_path / "same.mp4"), plan, decode=False).frames == info.video.frames


def test_the_structure_check_catches_a_timestamp_gap_at_a_join(mixed_output, tmp_path):
    """Segment 3 joined 0.1 s too long and segment 5 0.1 s too short: every frame is there and decodes, the
    length is right, but the joins after segment 3 have a gap (and the one after 5 closes it)."""
    info, out, plan, _, segments, encoded = mixed_output
    assert check_structure(out, plan).frames == info.video.frames
    moved = {3: 0.1, 5: -0.1}
    gapped = [replace(s, duration=s.duration + moved.get(s.index, 0.0)) for s in segments]
    bad = str(tmp_path / "gap.mp4")
    join_segments(info, gapped, encoded, bad, str(tmp_path), container=container_for(bad), mixed=True, codec="h264")
    assert mc.decoded_frames(bad) == info.video.frames
    with pytest.raises(VerificationError, match="not continuous after join 4"):
        check_structure(bad, plan)


def test_the_join_windows_catch_a_damaged_picture_at_the_last_join(mixed_output, tmp_path):
    """The structure is intact (every packet is there, same sizes), but the first picture after the last join
    is damaged: the windows decoded around the joins (several ffprobe runs side by side) must catch it."""
    info, out, plan, *_ = mixed_output
    assert len(plan.joins) >= 3  # more windows than one process takes, so the damaged one is not the first
    packets = mc.ffprobe(out, "-select_streams", "v:0", "-show_entries", "packet=pts_time,pos,size")["packets"]
    at = plan.first_time + plan.joins[-1]
    victim = min(packets, key=lambda p: abs(float(p["pts_time"]) - at))
    pos, size = int(victim["pos"]), int(victim["size"])
    data = bytearray(open(out, "rb").read())
    rng = np.random.default_rng(7)
    data[pos + size // 4: pos + size * 3 // 4] = rng.integers(0, 256, size * 3 // 4 - size // 4, dtype=np.uint8).tobytes()
    bad = tmp_path / "damaged.mp4"
    bad.write_bytes(bytes(data))
    assert check_structure(str(bad), plan).frames == info.video.frames  # nothing a demuxer could see
    with pytest.raises(VerificationError, match="decoding the joins"):
        verify_output(str(bad), plan, decode=False)
    assert verify_output(out, plan, decode=False).frames == info.video.frames


@pytest.mark.skipif(browser.CHROMIUM is None, reason="chromium is not installed (scripts/test.sh installs it)")
def test_chromium_plays_the_mixed_join_to_the_end(mixed_output):
    info, out, plan, *_ = mixed_output
    outcome = browser.play_to_end(out)
    assert outcome.startswith("ended "), outcome
    _, duration, frames, _dropped, size = outcome.split()
    assert abs(float(duration) - plan.duration) < 0.1
    assert int(frames) == info.video.frames
    assert size == f"{info.video.width}x{info.video.height}"
