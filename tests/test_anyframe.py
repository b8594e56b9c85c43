"""Splits at any frame: one-keyframe and open-GOP sources are cut into several segments, each
decoding from the keyframe it needs and dropping the frames before its cut, and the output stays frame-exact."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from montage_ray import encode
from montage_ray.ffmpeg import tool
from montage_ray.encoders.backends import cpu_spec
from montage_ray.ffmpeg.caps import ffmpeg_caps
from montage_ray.media.info import PacketIndex, inspect
from montage_ray.media.plan import DECODE_COST, MAX_EXTRA_WORK, plan_segments
from montage_ray.encoders.segment import count_packets, encode_segment
from montage_ray.media.cut import cut_lanes, split_source
from tests import mediacheck as mc
from tests.test_plan import closed_gops, open_gops

TB = Fraction(1, 30)


@pytest.fixture(scope="module")
def one_key(tmp_path_factory):
    """20 s of 320x240 with a single keyframe (a screen recording's shape), B-frames, and audio."""
    out = tmp_path_factory.mktemp("anyframe") / "onekey.mp4"
    mc.run_ffmpeg(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30:duration=20", "-f", "lavfi", "-i",
                   "sine=frequency=440:sample_rate=48000:duration=20", "-c:v", "libx264", "-preset", "veryfast",
                   "-bf", "3", "-g", "100000", "-sc_threshold", "0", "-c:a", "aac", "-b:a", "96k", out])
    return out


@pytest.fixture(scope="module")
def x265_open_gop(tmp_path_factory):
    """6 s of open-GOP HEVC (x265's default): a CRA every second whose leading pictures refer to the GOP before."""
    out = tmp_path_factory.mktemp("anyframe") / "opengop265.mkv"
    mc.run_ffmpeg(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30:duration=6", "-c:v", "libx265",
                   "-preset", "ultrafast", "-x265-params", "keyint=30:min-keyint=30:bframes=3:open-gop=1:log-level=error",
                   out])
    return out


def _check_plan(idx: PacketIndex, segs) -> None:
    """Segments cover every frame once, each piece starts at a keyframe, and the counts add up."""
    assert sum(s.frames for s in segs) == len(idx)
    for a, b in zip(segs, segs[1:]):
        assert a.start_ticks + a.duration_ticks == b.start_ticks
    for s in segs:
        assert idx.key[s.first_packet] or s.first_packet == 0
        piece = idx.pts[s.first_packet:s.end_packet]
        end = s.start_ticks + s.duration_ticks
        assert s.skip_frames == np.count_nonzero(piece < s.start_ticks)
        assert s.tail_frames == np.count_nonzero(piece >= end)
        # every frame shown in the segment is in its piece
        assert np.count_nonzero((idx.pts >= s.start_ticks) & (idx.pts < end)) == s.frames


def test_a_single_keyframe_stream_is_cut_and_the_extra_decode_is_weighed():
    idx = closed_gops(600, 600, bframes=2)                 # 20 s, one keyframe
    assert plan_segments(idx, TB, 2, any_frame=False)[0].frames == 600   # what keyframe-only cutting can do
    segs = plan_segments(idx, TB, 2)
    _check_plan(idx, segs)
    # each at least as long as all before it, the last one the second half (it decodes the first to drop it)
    assert [s.frames for s in segs] == [60, 60, 180, 300]
    assert all(s.first_packet == 0 for s in segs)           # everything decodes from the one keyframe
    assert [s.skip_frames for s in segs] == [0, 60, 120, 300]
    for s in segs:                                          # the rule: dropped work <= a quarter of the encode
        assert s.dropped * DECODE_COST <= MAX_EXTRA_WORK * s.frames + DECODE_COST


def test_open_gops_are_cut_at_their_keyframes_and_the_leading_pictures_go_with_the_gop_before():
    idx = open_gops(300, 30)                               # 2 leading B-frames after every I but the first
    segs = plan_segments(idx, TB, 2)
    _check_plan(idx, segs)
    assert len(segs) == 5
    for before, s in zip(segs, segs[1:]):
        assert idx.key[s.first_packet] and int(idx.pts[s.first_packet]) == s.start_ticks  # cut at a keyframe
        assert s.skip_frames == 2                              # its leading pictures belong before the cut
        assert before.tail_frames == 1                         # the segment before decodes the keyframe
        assert before.end_packet == s.first_packet + 3         # ... and the pictures that refer to it


def test_a_leading_picture_after_the_cut_brings_the_previous_gop():
    """A cut among an open-GOP keyframe's leading pictures: they refer to the GOP before, which comes along."""
    from montage_ray.media.plan import _Table

    idx = open_gops(300, 30)                               # the I at packet 60 is shown at 62, after 60 and 61
    assert idx.key[60] and int(idx.pts[60]) == 62
    seg = _Table(idx).segment(1, 61, 120, TB, last=False)
    assert int(idx.pts[seg.first_packet]) == 32 and idx.key[seg.first_packet]   # the keyframe before 62's
    assert seg.frames == 59 and seg.skip_frames == 61 - 32 + 2    # 32..60 and 32's own 2 leading pictures
    assert seg.tail_frames == 0 and seg.keep == pytest.approx(((60.5 - 32) / 30, (120.5 - 32) / 30))


def test_overlapping_pieces_go_to_lanes():
    segs = plan_segments(closed_gops(600, 600, bframes=2), TB, 2)
    assert cut_lanes(segs) == [[0], [1], [2], [3]]         # every piece starts at packet 0
    segs = plan_segments(open_gops(300, 30), TB, 2)
    assert cut_lanes(segs) == [[0, 2, 4], [1, 3]]          # neighbours share a few packets


def test_one_cut_gives_every_overlapping_piece(one_key, tmp_path):
    info = inspect(one_key)
    segs = plan_segments(info.packets, info.video.time_base, 2)
    assert len(segs) >= 3 and len(cut_lanes(segs)) >= 3
    ffmpeg_caps()  # what this ffmpeg can do is asked once per process, not per cut
    with tool.watch() as started:
        paths = split_source(info, segs, str(tmp_path))
    assert len(started) == 1                               # one ffmpeg for every lane
    assert [count_packets(p) for p in paths] == [s.packets for s in segs]
    assert sorted(p.name for p in tmp_path.glob("src*.nut")) == sorted(p.rsplit("/", 1)[1] for p in paths)


@pytest.mark.parametrize("build", ["4.2.2", "9.0.2"])
def test_the_encoder_drops_exactly_the_frames_before_the_cut_on_old_and_new_ffmpeg(build, one_key, ffmpeg_builds,
                                                                                   tmp_path):
    info = inspect(one_key)
    segs = plan_segments(info.packets, info.video.time_base, 2)
    seg = segs[2]                                          # frames 120..299, decoded from frame 0
    assert (seg.skip_frames, seg.frames, seg.first_packet) == (120, 180, 0) and seg.keep is not None
    path = split_source(info, segs, str(tmp_path))[2]
    caps = ffmpeg_caps(str(ffmpeg_builds[build]))
    result, encoded = encode_segment(cpu_spec("h264", preset="ultrafast"), seg, open(path, "rb").read(),
                                     video_args=["-pix_fmt", "yuv420p"], caps=caps, decode=True)
    out = tmp_path / "seg.mp4"
    out.write_bytes(encoded)
    assert result.frames == mc.decoded_frames(out) == 180
    # the output's frames are the source's 120..299 (each nearest its own source frame)
    src, got = mc.frame_signatures(one_key)[120:300], mc.frame_signatures(out)
    for i in range(len(got)):
        errors = [float(np.mean((src[j] - got[i]) ** 2)) for j in range(len(src))]
        assert int(np.argmin(errors)) == i


def _assert_frame_exact(src, dst) -> None:
    assert mc.decode_errors(dst) == ""
    assert mc.decoded_frames(dst) == mc.decoded_frames(src)
    a, b = mc.video_times(src), mc.video_times(dst)
    assert a.shape == b.shape
    np.testing.assert_allclose(b - b[0], a - a[0], atol=1e-4)   # the source's timestamps
    mc.assert_same_frames_in_order(src, dst)


@pytest.mark.usefixtures("ray_cluster")
def test_a_one_keyframe_20s_clip_runs_on_two_workers_frame_exact(one_key, tmp_path):
    dst = tmp_path / "out.mp4"
    report = encode(one_key, dst, preset="ultrafast", workers=2)
    assert len(report.segments) >= 2
    assert len({s.actor for s in report.segments}) == 2, [(s.segment, s.actor) for s in report.segments]
    _assert_frame_exact(one_key, dst)
    assert abs((mc.first_time(dst, "a:0") - mc.first_time(dst, "v:0"))
               - (mc.first_time(one_key, "a:0") - mc.first_time(one_key, "v:0"))) < 1024 / 48000


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("clip", ["x264", "x265"])
def test_open_gop_clips_are_split_and_frame_exact(clip, make_clip, x265_open_gop, tmp_path):
    src = make_clip("opengop") if clip == "x264" else x265_open_gop
    info = inspect(src)
    assert info.packets.key.sum() > 1 and info.clean_cuts().tolist() == [0]   # open GOP throughout
    dst = tmp_path / "out.mp4"
    report = encode(src, dst, preset="ultrafast", segment_seconds=2)
    assert len(report.segments) == 3
    _assert_frame_exact(src, dst)
