"""End to end through a real local Ray: every input kind comes out frame-exact, in sync and complete."""

from __future__ import annotations

import json

import numpy as np
import pytest

from montage_ray import encode
from tests import mediacheck as mc

pytestmark = pytest.mark.usefixtures("ray_cluster")

# clip -> (output extension, segment seconds, expect more than one segment)
MATRIX = {
    "bframes": (".mp4", 2, True),
    "opengop": (".mp4", 2, True),    # open-GOP keyframes are not clean cuts: cut there anyway, still exact
    "vfr": (".mp4", 2, True),
    "noaudio": (".mp4", 2, True),
    "twoaudio": (".mp4", 2, True),
    "odd": (".mp4", 2, True),
    "startoffset": (".mp4", 2, True),
    "rotation": (".mp4", 2, True),
    "ntsc": (".mp4", 2, True),
    "mpeg4": (".mp4", 2, True),
    "vp8": (".mp4", 2, True),
    "mkvsubs": (".mkv", 2, True),
    "singlekey": (".mp4", 2, True),  # one keyframe: cut between keyframes (test_anyframe.py)
    "allintra": (".mp4", 2, True),
    "meta": (".mkv", 2, True),
}


def _av_offset(path) -> float | None:
    kinds = [s["codec_type"] for s in mc.streams(path)]
    if "audio" not in kinds:
        return None
    return mc.first_time(path, "a:0") - mc.first_time(path, "v:0")


@pytest.mark.parametrize("name", sorted(MATRIX))
def test_output_is_frame_exact_and_in_sync(name, make_clip, tmp_path):
    ext, seconds, multi = MATRIX[name]
    src = make_clip(name)
    dst = tmp_path / f"out{ext}"
    report = encode(src, dst, preset="ultrafast", segment_seconds=seconds)

    assert (len(report.segments) > 1) == multi, [s.frames for s in report.segments]
    assert mc.decode_errors(dst) == ""
    assert mc.decoded_frames(dst) == mc.decoded_frames(src)
    a, b = mc.video_times(src), mc.video_times(dst)
    assert a.shape == b.shape
    # same presentation times relative to the first frame (VFR gaps included), within a millisecond
    np.testing.assert_allclose(b - b[0], a - a[0], atol=1e-3)
    src_offset, out_offset = _av_offset(src), _av_offset(dst)
    assert (src_offset is None) == (out_offset is None)
    if src_offset is not None:
        assert abs(src_offset - out_offset) < 1024 / 44100, (src_offset, out_offset)
    mc.assert_same_frames_in_order(src, dst)
    out_video = [s for s in mc.streams(dst) if s["codec_type"] == "video"]
    assert len(out_video) == 1 and out_video[0]["codec_name"] == "h264"
    assert sum(s.frames for s in report.segments) == report.frames


def test_audio_tracks_subtitles_chapters_and_metadata_are_kept(make_clip, tmp_path):
    two = tmp_path / "two.mp4"
    encode(make_clip("twoaudio"), two, preset="ultrafast", segment_seconds=2)
    audio = [s for s in mc.streams(two) if s["codec_type"] == "audio"]
    assert [s["tags"].get("language") for s in audio] == ["eng", "fra"]
    assert [int(s["sample_rate"]) for s in audio] == [48000, 44100]

    subs = tmp_path / "subs.mkv"
    encode(make_clip("mkvsubs"), subs, preset="ultrafast", segment_seconds=2)
    kinds = {s["codec_type"]: s for s in mc.streams(subs)}
    assert kinds["subtitle"]["codec_name"] == "subrip"
    assert len(mc.ffprobe(subs, "-show_chapters")["chapters"]) == 2

    as_mp4 = tmp_path / "subs.mp4"
    report = encode(make_clip("mkvsubs"), as_mp4, preset="ultrafast", segment_seconds=2)
    assert [s["codec_name"] for s in mc.streams(as_mp4) if s["codec_type"] == "subtitle"] == ["mov_text"]
    assert report.notes == []

    meta = tmp_path / "meta.mp4"
    encode(make_clip("meta"), meta, preset="ultrafast", segment_seconds=2)
    v = [s for s in mc.streams(meta) if s["codec_type"] == "video"][0]
    assert v["sample_aspect_ratio"] == "4:3"
    assert (v["color_primaries"], v["color_transfer"], v["color_space"], v["color_range"]) == \
        ("bt709", "bt709", "bt709", "tv")
    assert len(mc.ffprobe(meta, "-show_chapters")["chapters"]) == 2


def test_rotation_is_kept(make_clip, tmp_path):
    src = make_clip("rotation")
    dst = tmp_path / "rot.mp4"
    encode(src, dst, preset="ultrafast", segment_seconds=2)

    def rotation(path):
        v = [s for s in mc.streams(path) if s["codec_type"] == "video"][0]
        return [d.get("rotation") for d in v.get("side_data_list", []) if "rotation" in d]

    assert rotation(src) != [] and rotation(dst) == rotation(src)
    v = [s for s in mc.streams(dst) if s["codec_type"] == "video"][0]
    assert (v["width"], v["height"]) == (320, 240)  # pixels not rotated: the player applies the matrix


def test_uncopyable_audio_is_encoded_once(make_clip, tmp_path):
    dst = tmp_path / "m4.mp4"
    report = encode(make_clip("mpeg4"), dst, preset="ultrafast", segment_seconds=2)
    audio = [s for s in mc.streams(dst) if s["codec_type"] == "audio"]
    assert [a["codec_name"] for a in audio] == ["aac"]
    assert any("encoded once to AAC" in n for n in report.notes)
    # one continuous audio stream: packet times step evenly, no gap at the segment joins
    data = mc.ffprobe(dst, "-select_streams", "a:0", "-show_entries", "packet=pts_time")
    t = np.array([float(p["pts_time"]) for p in data["packets"]])
    steps = np.diff(t)
    assert steps.max() - steps.min() < 1e-3


def test_all_intra_groups_gops_near_segment_length(make_clip, tmp_path):
    report = encode(make_clip("allintra"), tmp_path / "ai.mp4", preset="ultrafast", segment_seconds=2)
    assert len(report.segments) == 3
    assert [s.frames for s in report.segments] == [60, 60, 60]


@pytest.mark.parametrize("seconds", [None, 4])
def test_short_job_is_one_segment_on_one_actor(make_clip, tmp_path, seconds):
    """A 6 s clip is shorter than two segments (10 s by default, or 4 s asked for): one actor starts."""
    report = encode(make_clip("bframes"), tmp_path / "short.mp4", preset="ultrafast", segment_seconds=seconds)
    assert len(report.segments) == 1 and len(report.workers) == 1
    assert report.segments[0].actor == report.workers[0]["name"]
    assert mc.decoded_frames(tmp_path / "short.mp4") == 180


def test_hevc_and_report_file(make_clip, tmp_path):
    dst, rep = tmp_path / "h.mp4", tmp_path / "r.json"
    report = encode(make_clip("long"), dst, codec="hevc", preset="ultrafast", segment_seconds=4, report=rep)
    v = [s for s in mc.streams(dst) if s["codec_type"] == "video"][0]
    assert v["codec_name"] == "hevc"
    assert mc.decoded_frames(dst) == 600 and mc.decode_errors(dst) == ""
    data = json.loads(rep.read_text())
    assert data["frames"] == 600 and len(data["segments"]) == len(report.segments) == 5
    assert {"probe", "plan", "encode", "join", "verify"} <= set(data["timings"])  # cutting overlaps encoding
    assert len({s["actor"] for s in data["segments"]}) == 2  # both actors took work
    # software encoders on the driver's node: counted and read where encoded, not decoded (verify auto)
    assert {(s["check"], s["check_why"]) for s in data["segments"]} == {("packets", "software encoder")}
    assert "segment checks: 5 counted and read (software encoder)" in report.summary()


def test_actors_are_reused_across_jobs_and_serve_another_setup_without_a_restart(make_clip, tmp_path):
    first = encode(make_clip("long"), tmp_path / "1.mp4", preset="ultrafast", segment_seconds=4)
    second = encode(make_clip("long"), tmp_path / "2.mp4", preset="ultrafast", segment_seconds=4)
    same = lambda r: sorted((w["name"], w["pid"]) for w in r.workers)  # noqa: E731
    assert len(first.workers) == 2 and all(w["pid"] > 0 for w in first.workers)
    assert same(first) == same(second)                   # the same actor processes took the second job
    config = tmp_path / "encoders.yaml"
    config.write_text("labels:\n  cpu: {preset: superfast}\n")
    third = encode(make_clip("long"), tmp_path / "3.mp4", segment_seconds=4, encoders_config=config, quality=30,
                   verify="decode")
    # the encoder service's actors build each segment's command: another config and quality, no restart
    assert same(third) == same(first)
    assert {s.encoder for s in third.segments} == {"cpu:libx264 [superfast]"}
    assert {(s.check, s.check_why) for s in third.segments} == {("decode", "--verify decode")}
    assert mc.decoded_frames(tmp_path / "3.mp4") == 600


def test_the_driver_starts_no_process_per_segment(make_clip, tmp_path):
    """Ten segments, and the driver still starts only its fixed handful: probe, cut, join (started with the job,
    fed as the pieces come), structure, the source's frames counted again, joins and the end decoded."""
    from montage_ray.ffmpeg import tool
    from montage_ray.ffmpeg.caps import ffmpeg_caps

    ffmpeg_caps()  # what this ffmpeg can do is asked once per process, not per job or segment
    with tool.watch() as started:
        report = encode(make_clip("long"), tmp_path / "out.mp4", segment_seconds=2)
    assert len(report.segments) == 10
    from montage_ray.media.join import WINDOW_PROCESSES

    windows = [a for a in started if "-read_intervals" in a and "-count_frames" in a]
    assert 1 <= len(windows) <= WINDOW_PROCESSES  # the join windows, split over a bounded few runs
    assert len(started) - len(windows) <= 7, [a[:3] for a in started]
    recounts = [a for a in started if "+genpts" in a and "packet=pts,dts,flags:stream=time_base" in a]
    assert len(recounts) == 1  # the verification's own count of the source's frames
    # one join, started with the job and fed each piece as it came (its list names pipes, not pieces)
    assert [a for a in started if any(x.endswith(".ffconcat") for x in a)] == \
        [a for a in started if any(x.endswith("stream.ffconcat") for x in a)] != []
    pieces = [a for a in started if any(("src-" in x or "enc-" in x) and not x.endswith(".ffconcat") for x in a)]
    assert pieces == [] or all("-segment_list" in a for a in pieces)  # only the one cutter names pieces


def test_the_join_falls_back_to_joining_the_files_and_can_be_turned_off(make_clip, tmp_path, monkeypatch):
    """A streamed join that fails (here: the room kept for the MP4's sample tables is made far too small)
    is done again from the encoded files, with the tables moved up at the end; MONTAGE_RAY_STREAM_JOIN=0
    joins only at the end. Both outputs are frame-exact."""
    import montage_ray.media.join as join_module
    from montage_ray.ffmpeg import tool

    src = make_clip("bframes")

    def lists(started):
        return sorted(x.rsplit("/", 1)[-1] for a in started for x in a if x.endswith(".ffconcat"))

    monkeypatch.setattr(join_module, "moov_reserve", lambda media, segments: 2000)
    with tool.watch() as started:
        encode(src, tmp_path / "fallback.mp4", segment_seconds=2, preset="ultrafast")
    assert lists(started) == ["segments.ffconcat", "stream.ffconcat"]  # streamed, then once more, not twice
    assert mc.decoded_frames(tmp_path / "fallback.mp4") == mc.decoded_frames(src)
    mc.assert_same_frames_in_order(src, tmp_path / "fallback.mp4")
    monkeypatch.undo()

    monkeypatch.setenv("MONTAGE_RAY_STREAM_JOIN", "0")
    with tool.watch() as started:
        encode(src, tmp_path / "at-end.mp4", segment_seconds=2, preset="ultrafast")
    assert lists(started) == ["segments.ffconcat"]
    mc.assert_same_frames_in_order(src, tmp_path / "at-end.mp4")
