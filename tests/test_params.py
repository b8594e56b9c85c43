"""Parameter records: builders take small frozen records, and their old keyword calls give the same thing."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from montage_ray.ffmpeg import commands
from montage_ray.ffmpeg.caps import FFmpegCaps
from montage_ray.util.params import records


@dataclass(frozen=True)
class Look:
    sar: str | None = None
    frame_filter: str | None = None


@dataclass(frozen=True)
class Where:
    path: str
    threads: int = 1


def build(look: Look | None = None, where: Where | None = None, **keywords):
    return records(keywords, (look, Look), (where, Where))


def test_records_from_keywords_from_records_and_both():
    assert build(sar="1:1", path="a") == [Look(sar="1:1"), Where("a")]
    assert build(Look(sar="1:1", frame_filter="f"), Where("a", 2), sar="4:3") == \
        [Look(sar="4:3", frame_filter="f"), Where("a", 2)]
    with pytest.raises(TypeError, match=r"build\(\) got an unexpected keyword argument 'tag'"):
        build(path="a", tag="x")
    with pytest.raises(TypeError, match=r"build\(\): .*'path'"):   # a required field given neither way
        build(sar="1:1")


def caps(version: str, options: frozenset[str]) -> FFmpegCaps:
    return FFmpegCaps(path="/usr/bin/ffmpeg", version=version, major=int(version.split(".")[0]), options=options,
                      bsfs=frozenset(), muxer_options=frozenset(), enc_time_base="-1")


@pytest.mark.parametrize("build_caps", [caps("7.0.2", frozenset({"display_rotation"})), caps("5.1.6", frozenset())])
@pytest.mark.parametrize("attach", [(), (commands.Attachment("/w/cover.jpg", 3, "image/jpeg", "cover.jpg"),)])
def test_join_command_records_and_old_keywords_give_the_same_command(build_caps, attach):
    old = commands.join_command("/w/list.txt", "/src/in.mkv", "/w/out.mp4", caps=build_caps, offset=0.5,
                                video_index=1, rotation=90, streams=[0, 2], stream_options={"c:a": "copy"},
                                muxer="mp4", mp4=True, tag="hvc1", attach=list(attach), moov_size=65536)
    new = commands.join_command("/w/list.txt", "/src/in.mkv", "/w/out.mp4", caps=build_caps,
                                video=commands.JoinVideo(offset=0.5, video_index=1, rotation=90),
                                others=commands.JoinStreams((0, 2), {"c:a": "copy"}, attach),
                                container=commands.JoinContainer("mp4", mp4=True, tag="hvc1", moov_size=65536))
    assert old == new
    assert "-itsoffset" in new and "0.500000000" in new and "-moov_size" in new and "hvc1" in new
    assert ("-display_rotation:v:0" in new) == build_caps.display_rotation
    assert ("-attach" in new) == bool(attach)


def test_join_command_defaults_a_video_only_source():
    args = commands.join_command("/w/list.txt", "/src/in.mp4", "/w/out.mkv", caps=caps("5.1.6", frozenset()),
                                 container=commands.JoinContainer("matroska", mp4=False))
    assert args[args.index("-noautorotate") + 2] == "file:/src/in.mp4"   # input 1, for -map_metadata 1
    assert "-movflags" not in args and args[args.index("-f", args.index("-map")) + 1] == "matroska"
    with pytest.raises(TypeError, match="muxer"):
        commands.join_command("/w/list.txt", "/src/in.mp4", "/w/out.mkv", caps=caps("5.1.6", frozenset()))


def test_encode_segment_takes_its_records_and_refuses_an_unknown_keyword():
    from montage_ray.encoders.backends import cpu_spec
    from montage_ray.encoders.segment import SegmentOutput, SegmentRun, encode_segment
    from montage_ray.media.plan import Segment

    seg = Segment(index=0, first_packet=0, end_packet=1, start=0.0, duration=0.04, start_ticks=0, duration_ticks=1)
    with pytest.raises(TypeError, match=r"encode_segment\(\) got an unexpected keyword argument 'timout'"):
        encode_segment(cpu_spec("h264"), seg, b"", SegmentOutput(sar="1:1"), SegmentRun(), timout=5)
