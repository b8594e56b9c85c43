"""One segment on one backend, without Ray: real ffmpeg, real failures."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest

from montage_ray.ffmpeg import tool
from montage_ray.encoders.backends import BACKENDS, cpu_spec
from montage_ray.encoders.segment import SegmentEncodeError, count_packets, encode_segment
from montage_ray.errors import FFmpegError
from montage_ray.media.info import inspect
from montage_ray.media.plan import plan_segments
from montage_ray.media.cut import split_source


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
        tool.run([tool.ffmpeg(), "-v", "error", "-re", "-f", "lavfi", "-i", "testsrc2=duration=60",
                        "-f", "null", "-"], timeout=0.5)
    assert caught.value.timed_out


def test_a_started_process_keeps_the_same_rules_in_the_background(tmp_path):
    """tool.start: the timeout is enforced by poll/wait, the group is killed, a failure carries its
    stderr line, and watch() sees every process started."""
    with tool.watch() as started:
        slow = tool.start([tool.ffmpeg(), "-v", "error", "-re", "-f", "lavfi", "-i",
                                 "testsrc2=duration=60", "-f", "null", "-"], timeout=0.5)
        assert slow.poll() is None  # running: poll never blocks
        with pytest.raises(FFmpegError) as caught:
            slow.wait()
        assert caught.value.timed_out and slow.poll() is not None
        bad = tool.start([tool.ffmpeg(), "-v", "error", "-i", str(tmp_path / "missing.mp4"),
                                "-f", "null", "-"], timeout=30)
        with pytest.raises(FFmpegError, match="No such file"):
            bad.wait()
    assert len(started) == 2 and all(a[0] == tool.ffmpeg() for a in started)


def test_file_url_never_lets_a_name_become_a_protocol_or_option(tmp_path):
    for name in ("concat:a.mp4|b.mp4", "-x.mp4", "http:x"):
        url = tool.file_url(tmp_path / name)
        assert url.startswith("file:/") and url.endswith(name)


def _psnr(encoded: str, reference: str) -> float:
    """Average PSNR of ``encoded`` against ``reference``, frames paired by number (not by timestamp)."""
    done = tool.run([tool.ffmpeg(), "-hide_banner", "-nostdin", "-i", encoded, "-i", reference,
                           "-lavfi", "[0:v]settb=1/30,setpts=N[a];[1:v]settb=1/30,setpts=N[b];[a][b]psnr",
                           "-f", "null", "-"], timeout=120)
    return float(re.search(r"PSNR y:\S+ u:\S+ v:\S+ average:([\d.]+)", done.stderr).group(1))


def test_quality_means_the_same_on_every_cpu_encoder(tmp_path):
    """The common --quality maps to each CPU encoder's knob so that PSNR agrees within 2 dB, and a lower
    number is better on every encoder."""
    src = str(tmp_path / "mandelbrot.nut")
    tool.run([tool.ffmpeg(), "-v", "error", "-f", "lavfi", "-i",
                    "mandelbrot=size=320x240:rate=30,trim=duration=3", "-pix_fmt", "yuv420p", "-c:v", "rawvideo",
                    "-f", "nut", src], timeout=120)
    psnr: dict[tuple[str, int], float] = {}
    for codec in ("h264", "hevc", "av1"):
        for quality in (18, 23, 28):
            spec = BACKENDS["cpu"].spec(codec, quality=quality, preset="medium", threads=2)
            out = str(tmp_path / f"{codec}-{quality}.mkv")
            tool.run([tool.ffmpeg(), "-v", "error", "-i", src, *spec.codec_args, "-pix_fmt", "yuv420p",
                            out], timeout=300)
            psnr[codec, quality] = _psnr(out, src)
    for quality in (18, 23, 28):
        row = [psnr[c, quality] for c in ("h264", "hevc", "av1")]
        assert max(row) - min(row) < 2.0, (quality, row)
    for codec in ("h264", "hevc", "av1"):
        assert psnr[codec, 18] > psnr[codec, 23] + 2 > psnr[codec, 28] + 4, psnr
    assert psnr["h264", 23] > 33  # a sane picture, not a broken comparison


def test_the_actor_side_check_catches_a_truncated_or_damaged_segment(pieces, tmp_path):
    from montage_ray.encoders.segment import check_encoded

    info, segments, paths = pieces
    result, encoded = encode_segment(cpu_spec("h264", preset="ultrafast"), segments[1], open(paths[1], "rb").read())
    good = tmp_path / "good.mp4"
    good.write_bytes(encoded)
    assert check_encoded(str(good), 60, decode=True) == "" and result.check == "packets"
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(encoded[: len(encoded) * 2 // 3])
    assert check_encoded(str(truncated), 60, decode=False) != ""
    damaged = bytearray(encoded)
    mdat, moov = damaged.find(b"mdat"), damaged.find(b"moov")
    end = moov if moov > mdat else len(damaged)
    for at in range(mdat + 2000, end - 100, 997):  # scribble over the coded pictures, not the index
        damaged[at:at + 16] = b"\xff" * 16
    bad = tmp_path / "damaged.mp4"
    bad.write_bytes(bytes(damaged))
    assert check_encoded(str(bad), 60, decode=False) == ""  # the packets are all there ...
    assert "decod" in check_encoded(str(bad), 60, decode=True)  # ... but they do not decode cleanly


@pytest.mark.parametrize("packets, wrong", [
    ([{"pts": 0, "dts": -1, "flags": "K__"}, {"pts": 2, "dts": 0, "flags": "___"}, {"pts": 1, "dts": 1, "flags": "___"}],
     ""),
    ([], "has no video packets"),
    ([{"pts": 0, "dts": 0, "flags": "___"}], "does not start with a keyframe"),
    ([{"pts": 0, "dts": 0, "flags": "K_"}, {"pts": 1, "flags": "__"}], "has packets without timestamps"),
    ([{"pts": 0, "dts": 0, "flags": "K_"}, {"pts": 1, "dts": 0, "flags": "__"}], "has decode times that do not rise"),
    ([{"pts": 0, "dts": 0, "flags": "K_"}, {"pts": 0, "dts": 1, "flags": "__"}], "has two packets shown at the same time"),
])
def test_the_packet_check_reads_the_structure(packets, wrong):
    """What the check of a segment that is not decoded still catches: ffprobe's packet list, read."""
    from montage_ray.encoders.segment import packet_structure

    assert packet_structure(packets) == wrong


def test_a_piece_cut_wrong_is_a_bad_input_not_an_encoder_failure(pieces):
    info, segments, paths = pieces
    wrong = replace(segments[0], end_packet=segments[0].end_packet + 5)  # the plan says 65 packets, the piece has 60
    with pytest.raises(SegmentEncodeError) as caught:
        encode_segment(cpu_spec("h264", preset="ultrafast"), wrong, open(paths[0], "rb").read())
    assert caught.value.reason == "bad-input" and "given 60 packets instead of 65" in str(caught.value)
