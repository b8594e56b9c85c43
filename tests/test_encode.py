"""One segment on one backend, without Ray: real ffmpeg, real failures."""

from __future__ import annotations

from dataclasses import replace

import pytest

from montage_ray import ffmpeg_cli
from montage_ray.backends import BACKENDS, cpu_spec
from montage_ray.encode import SegmentEncodeError, count_packets, encode_segment
from montage_ray.errors import FFmpegError
from montage_ray.media import inspect
from montage_ray.plan import plan_segments
from montage_ray.split import split_source


@pytest.fixture(scope="module")
def pieces(make_clip, tmp_path_factory):
    info = inspect(make_clip("bframes"))
    segments = plan_segments(info.packets, info.video.time_base, 2)
    paths = split_source(info, segments, str(tmp_path_factory.mktemp("split")))
    return info, segments, paths


def test_split_gives_exact_packet_counts(pieces):
    info, segments, paths = pieces
    assert [count_packets(p) for p in paths] == [s.frames for s in segments] == [60, 60, 60]


def test_encode_segment_keeps_every_frame(pieces, tmp_path):
    info, segments, paths = pieces
    data = open(paths[1], "rb").read()
    result, encoded = encode_segment(cpu_spec("h264", preset="ultrafast"), segments[1], data)
    out = tmp_path / "seg.nut"
    out.write_bytes(encoded)
    assert result.frames == count_packets(str(out)) == 60
    assert result.bytes_in == len(data) and result.bytes_out == len(encoded) > 0
    assert result.encoder == "cpu:libx264" and not result.standin


def test_a_real_hardware_encoder_failure_is_reported_with_its_stderr(pieces):
    """This machine's ffmpeg lists h264_nvenc but has no NVIDIA driver: the failure must surface."""
    info, segments, paths = pieces
    spec = BACKENDS["nvenc"].spec("h264")
    with pytest.raises(SegmentEncodeError) as caught:
        encode_segment(spec, segments[0], open(paths[0], "rb").read(), timeout=60)
    assert caught.value.reason == "failed"
    assert caught.value.stderr.strip() != ""


def test_a_wrong_frame_count_fails_even_when_ffmpeg_exits_zero(pieces):
    info, segments, paths = pieces
    spec = replace(cpu_spec("h264", preset="ultrafast"), video_filter="select='not(eq(n\\,3))'")
    with pytest.raises(SegmentEncodeError) as caught:
        encode_segment(spec, segments[0], open(paths[0], "rb").read())
    assert caught.value.reason == "frame-count"
    assert "59 frames, expected 60" in str(caught.value)


def test_a_hang_is_killed_at_the_timeout(pieces):
    info, segments, paths = pieces
    spec = cpu_spec("h264", preset="veryslow")
    with pytest.raises(SegmentEncodeError) as caught:
        encode_segment(spec, segments[0], open(paths[0], "rb").read(), timeout=0.2)
    assert caught.value.reason == "timeout"


def test_run_kills_the_process_group_on_timeout():
    with pytest.raises(FFmpegError) as caught:
        ffmpeg_cli.run([ffmpeg_cli.ffmpeg(), "-v", "error", "-re", "-f", "lavfi", "-i", "testsrc2=duration=60",
                        "-f", "null", "-"], timeout=0.5)
    assert caught.value.timed_out


def test_file_url_never_lets_a_name_become_a_protocol_or_option(tmp_path):
    for name in ("concat:a.mp4|b.mp4", "-x.mp4", "http:x"):
        url = ffmpeg_cli.file_url(tmp_path / name)
        assert url.startswith("file:/") and url.endswith(name)
