"""The final verification counts what the output shows, independently of the job's own figures; the join ends
the video where the source's ends; --quality 0 encodes. Real ffmpeg builds, no Ray (one segment's encode and
the join run here as the actors and the driver run them)."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest

from montage_ray.encoders.backends import cpu_spec
from montage_ray.encoders.segment import encode_segment, video_output_args
from montage_ray.errors import VerificationError
from montage_ray.media.cut import split_source
from montage_ray.media.info import inspect
from montage_ray.media.join import container_for, join_segments, verify_output
from montage_ray.media.plan import plan_segments
from tests import genclips
from tests import mediacheck as mc
from tests.genclips import Kind


def encode_and_join(src: Path, dst: Path, *, preset: str = "ultrafast", seconds: float = 1.0, quality: int = 23):
    """What a job does to ``src`` without Ray: cut, encode each segment, join; the join's plan."""
    work = dst.parent / (dst.name + ".work")
    work.mkdir()
    media = inspect(str(src))
    segments = plan_segments(media.packets, media.video.time_base, seconds)
    spec = cpu_spec("h264", preset=preset, quality=quality)
    encoded = []
    for seg, piece in zip(segments, split_source(media, segments, str(work))):
        _, data = encode_segment(spec, seg, Path(piece).read_bytes(), video_args=video_output_args(media.video, spec),
                                 workdir=str(work))
        encoded.append(work / f"enc-{seg.index:06d}.mp4")
        encoded[-1].write_bytes(data)
    return join_segments(media, segments, [str(p) for p in encoded], str(dst), str(work),
                         container=container_for(str(dst)))


def shorten_edit(path: Path, seconds: float) -> None:
    """Cut the video track's edit list by ``seconds`` (a test's own box walk, not montage-ray's): what ffmpeg
    4.2's join wrote, an edit list that ends before the last frame."""
    data = bytearray(path.read_bytes())
    at = data.index(b"elst")
    version = data[at + 4]
    count = struct.unpack_from(">I", data, at + 8)[0]
    entry = at + 12 + (count - 1) * (20 if version else 12)
    mvhd = data.index(b"mvhd")
    scale = struct.unpack_from(">I", data, mvhd + 4 + (20 if data[mvhd + 4] else 12))[0]
    fmt = ">Q" if version else ">I"
    duration = struct.unpack_from(fmt, data, entry)[0]
    struct.pack_into(fmt, data, entry, duration - int(seconds * scale))
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def vfr_output(tmp_path_factory):
    """A VFR MP4 (uneven spacing, an odd last frame) encoded with B-frames and joined by Debian's ffmpeg."""
    tmp = tmp_path_factory.mktemp("vfr")
    src = Path(genclips.make(Kind("mp4", "h264", "oddlast", 41), str(tmp / "src.mp4"), mc.FFMPEG))
    dst = tmp / "out.mp4"
    plan = encode_and_join(src, dst, preset="medium")
    return src, dst, plan


def test_the_verification_counts_the_frames_the_output_shows_not_its_packets(vfr_output, tmp_path):
    src, dst, plan = vfr_output
    assert verify_output(str(dst), plan, decode=False).frames == mc.decoded_frames(src) == 41
    hidden = tmp_path / "hidden.mp4"
    shutil.copy(dst, hidden)
    shorten_edit(hidden, 0.2)   # the edit list now ends before the last frame: 41 packets, 40 frames shown
    assert mc.decoded_frames(hidden) == 40
    with pytest.raises(VerificationError, match="shows 40 video frames"):
        verify_output(str(hidden), plan, decode=False)


def test_the_verification_compares_with_the_source_counted_again_not_with_the_plan(vfr_output, tmp_path):
    src, dst, plan = vfr_output
    other = tmp_path / "other.mp4"   # a source one frame longer than the plan says
    genclips.make(Kind("mp4", "h264", "oddlast", 42), str(other), mc.FFMPEG)
    from dataclasses import replace
    with pytest.raises(VerificationError, match="the output shows 41 video frames, the source 42"):
        verify_output(str(dst), replace(plan, source=str(other)), decode=False)


@pytest.mark.parametrize("version", ["5.1", "9.0.2"])
def test_the_last_frame_of_a_vfr_source_keeps_its_duration(version, ffmpeg_builds, tmp_path, monkeypatch):
    if version != "5.1":
        monkeypatch.setenv("MONTAGE_FFMPEG", str(ffmpeg_builds[version]))
    src = Path(genclips.make(Kind("mp4", "h264", "oddlast", 41), str(tmp_path / "src.mp4"), mc.FFMPEG))
    dst = tmp_path / "out.mp4"
    plan = encode_and_join(src, dst, preset="medium")
    verify_output(str(dst), plan, decode=False)
    duration = [float(s["duration"]) for s in mc.streams(dst) if s["codec_type"] == "video"][0]
    source = [float(s["duration"]) for s in mc.streams(src) if s["codec_type"] == "video"][0]
    # the source's last frame lasts 77 ms; the encoders' nominal frame would end the stream 54 ms early
    assert abs(duration - source) < 0.002, (duration, source)


def test_quality_0_with_h264_is_lossless_and_encodes(tmp_path):
    src = Path(genclips.make(Kind("mp4", "h264", "cfr", 20), str(tmp_path / "src.mp4"), mc.FFMPEG))
    dst = tmp_path / "out.mp4"
    plan = encode_and_join(src, dst, quality=0, seconds=10)
    verify_output(str(dst), plan)
    profile = [s.get("profile") for s in mc.streams(dst) if s["codec_type"] == "video"][0]
    assert profile == "High 4:4:4 Predictive" and mc.decoded_frames(dst) == 20
