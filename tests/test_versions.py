"""Every supported ffmpeg (4.2.2, Debian's 5.1, 7.0.2, 9.0.2) encodes the messy clips exactly: one driver
per version (tests/version_job.py with MONTAGE_FFMPEG set), checked here with the system's tools.
Every clip kind runs on the oldest (but the TS one its build cannot demux), the kinds whose handling
changed across versions on the newest; 9.0.2 also reads with the static ffprobe 8.0. The drivers share
the session's Ray (their actors get the version's ffmpeg through the job's environment). And one job
on a simulated cluster whose nodes run 5.1, 4.2.2 and 9.0.2 joins into one file that plays to the end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from montage_ray.ffmpeg import commands
from montage_ray.ffmpeg import tool
from montage_ray.encoders.backends import cpu_spec
from montage_ray.ffmpeg.caps import ffmpeg_caps
from montage_ray.encoders.segment import video_output_args
from montage_ray.probe import TEST_VIDEO, explain, make_test_clip, run_probe
from tests import browser
from tests import mediacheck as mc
from tests.helpers import run_bounded

ROOT = Path(__file__).resolve().parent.parent
ALL = {"rotation": ".mp4", "vfr": ".mp4", "startoffset": ".mp4", "meta": ".mp4", "mkvsubs": ".mkv",
       "opengop": ".mp4", "tenbit": ".mp4", "odd": ".mp4", "twoaudio": ".mp4"}
# The start-offset clip is MPEG-TS: the static 4.2.2 and 7.0.2 builds (johnvansickle.com) crash with SIGSEGV
# demuxing ANY MPEG-TS file (measured: `ffmpeg -i x.ts -f null -`), a defect of those builds, not of
# montage-ray's commands; montage-ray reports it as a crash. The offset itself is kept on 5.1 and 9.0.2.
# 9.0.2 runs the kinds whose handling changed across versions (the display matrix, VFR time bases, the TS
# offset, 10-bit HEVC, open GOPs). The mux-level kinds it leaves out (meta, mkvsubs, odd, twoaudio: streams,
# tags, SAR/colour, subtitles) run on 4.2.2 here and on Debian's 5.1 in tests/test_job.py
# (test_output_is_frame_exact_and_in_sync[...] and test_audio_tracks_subtitles_chapters_and_metadata_are_kept).
# "tenbit@2": the same clip in 2 s segments (the others run in 1 s ones): the cut's segment muxer gave its
# pieces a time base from the frame rate on 4.2 and 7.0 (1/960 against Matroska's 1/1000) and the first
# join came out a frame off, until the cut asked for the source's own (-copytb 1)
MATRIX = {"4.2.2": {**{k: v for k, v in ALL.items() if k != "startoffset"}, "tenbit@2": ".mp4"},
          "9.0.2": {k: ALL[k] for k in ("rotation", "vfr", "startoffset", "tenbit", "opengop")},
          "7.0.2": {**{k: ALL[k] for k in ("rotation", "vfr", "meta", "tenbit")}, "tenbit@2": ".mp4"}}


def _rotation(path) -> int:
    from montage_ray.media.info import stream_rotation
    return stream_rotation([s for s in mc.streams(path) if s["codec_type"] == "video"][0])


def _check(name: str, src: Path, dst: Path) -> None:
    assert mc.decode_errors(dst) == ""
    assert mc.decoded_frames(dst) == mc.decoded_frames(src)
    a, b = mc.video_times(src), mc.video_times(dst)
    np.testing.assert_allclose(b - b[0], a - a[0], atol=1e-3)
    kinds = [s["codec_type"] for s in mc.streams(src)]
    if "audio" in kinds:
        off_src = mc.first_time(src, "a:0") - mc.first_time(src, "v:0")
        off_dst = mc.first_time(dst, "a:0") - mc.first_time(dst, "v:0")
        assert abs(off_src - off_dst) < 1024 / 44100, (off_src, off_dst)
    out = mc.streams(dst)
    assert [s["codec_type"] for s in out].count("audio") == kinds.count("audio")
    assert _rotation(dst) == _rotation(src)
    v = [s for s in out if s["codec_type"] == "video"][0]
    if name == "meta":
        assert v["sample_aspect_ratio"] == "4:3"
        assert (v["color_primaries"], v["color_transfer"], v["color_space"]) == ("bt709",) * 3
    if name == "mkvsubs":
        assert [s["codec_name"] for s in out if s["codec_type"] == "subtitle"] == ["subrip"]


@pytest.mark.parametrize("version", sorted(MATRIX))
def test_every_clip_kind_encodes_exactly_on_this_ffmpeg(version, ffmpeg_builds, make_clip, session_ray, tmp_path):
    clips = MATRIX[version]
    env = dict(os.environ, MONTAGE_FFMPEG=str(ffmpeg_builds[version]))
    if version == "9.0.2":
        env["MONTAGE_FFPROBE"] = str(ffmpeg_builds["ffprobe-8.0"])
    jobs = [f"{name}={make_clip(name.split('@')[0])}:{ext}" for name, ext in clips.items()]
    # one driver per version on the session's Ray (its actors get this version's ffmpeg in their environment)
    done = subprocess.run([sys.executable, str(ROOT / "tests" / "version_job.py"), "--address", session_ray,
                           str(tmp_path), *jobs], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    failures = {}
    for name in clips:
        result = results[name]
        if not result["ok"]:
            failures[name] = result["error"]
            continue
        assert result["ffmpeg"] == [version], result
        assert result["segments"] >= 2, result   # really cut and joined on this version
        try:
            _check(name, make_clip(name.split("@")[0]), Path(result["dst"]))
        except AssertionError as err:
            failures[name] = str(err)[:300]
    assert failures == {}, failures


def _spelt_for(binary: str, caps_of: str, tmp_path: Path) -> list[str]:
    """The test encode's command spelt for ``caps_of``'s ffmpeg but run by ``binary``."""
    src = tmp_path / "src.nut"
    make_test_clip(binary, str(src))
    spec = cpu_spec("h264", preset="ultrafast")
    cmd = commands.probe_encode_command(spec, str(src), str(tmp_path / "out.mp4"), caps=ffmpeg_caps(caps_of),
                                        video_args=video_output_args(TEST_VIDEO, spec))
    return [binary, *cmd[1:]]


def test_probe_adapts_to_4_2_and_names_what_5_1_spelling_lacks(ffmpeg_builds, tmp_path):
    old = str(ffmpeg_builds["4.2.2"])
    node = run_probe(old, backends=["cpu"])
    assert node.backends["cpu"].available, node.backends["cpu"]
    lines = [d.line for d in node.ffmpeg_diagnoses()]
    assert "this ffmpeg (4.2.2) lacks -fps_mode; montage-ray uses -vsync passthrough instead" in lines
    assert any("-readrate" in line and "5.0" in line for line in lines)
    done = tool.run(_spelt_for(old, tool.ffmpeg(), tmp_path), timeout=60, check=False)
    assert done.returncode != 0
    diagnosis = explain(done.stderr, returncode=done.returncode)
    assert diagnosis.cause == "ffmpeg-version" and "-fps_mode" in diagnosis.fix and "5.1" in diagnosis.fix


def test_probe_adapts_to_9_0_and_names_the_refused_time_base(ffmpeg_builds, tmp_path):
    new = str(ffmpeg_builds["9.0.2"])
    node = run_probe(new, backends=["cpu"])
    assert node.backends["cpu"].available, node.backends["cpu"]
    assert node.caps.enc_time_base == "demux" and node.caps.display_rotation
    assert any("refuses -enc_time_base -1" in d.line for d in node.ffmpeg_diagnoses())
    done = tool.run(_spelt_for(new, tool.ffmpeg(), tmp_path), timeout=60, check=False)
    assert done.returncode != 0
    diagnosis = explain(done.stderr, returncode=done.returncode)
    assert diagnosis.cause == "ffmpeg-version" and "demux" in diagnosis.fix, diagnosis


def test_one_job_on_nodes_of_different_ffmpeg_versions_joins_exactly_and_plays(ffmpeg_builds, make_clip,
                                                                                 tmp_path):
    """Head (the CPU slot) on Debian's 5.1, a vaapi-labelled node on 4.2.2, an nvenc-labelled node on 9.0.2:
    the rotated clip's segments are encoded by all three, the report names each segment's ffmpeg, and the
    joined file has every frame, in order, with the rotation, and plays to its end in Chromium."""
    src, dst, report_path = make_clip("rotation"), tmp_path / "mixed.mp4", tmp_path / "report.json"
    system = shutil.which("ffmpeg")
    done = run_bounded([sys.executable, str(ROOT / "tests" / "version_job.py"), "--mixed", str(src), str(dst),
                         str(report_path), system, str(ffmpeg_builds["4.2.2"]), str(ffmpeg_builds["9.0.2"])],
                        timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    report = json.loads(report_path.read_text())

    # every segment once, in order, with the version of the ffmpeg that encoded it, on its node's build
    segs = report["segments"]
    assert sorted(s["segment"] for s in segs) == list(range(len(segs))) and len(segs) >= 3
    by_label = {s["resource"]: s["ffmpeg"] for s in segs}
    assert by_label == {"cpu": ffmpeg_caps(system).version, "vaapi": "4.2.2", "nvenc": "9.0.2"}, \
        [(s["segment"], s["resource"], s["ffmpeg"]) for s in segs]
    assert all(len({s["ffmpeg"] for s in segs if s["node"] == node}) == 1 for node in {s["node"] for s in segs})
    assert [[s["segment"], s["ffmpeg"]] for s in segs] == [p[:2] for p in printed["segments"]]

    # exact frames, in order, the rotation kept, audio kept in sync
    assert sum(s["frames"] for s in segs) == printed["frames"] == mc.decoded_frames(src) == mc.decoded_frames(dst)
    mc.assert_same_frames_in_order(src, dst)
    _check("rotation", src, dst)

    if browser.CHROMIUM is None:
        pytest.skip("chromium is not installed (scripts/test.sh installs it)")
    outcome = browser.play_to_end(dst)
    assert outcome.startswith("ended "), outcome
    _, duration, frames, _dropped, size = outcome.split()
    assert int(frames) == printed["frames"] and abs(float(duration) - 6.0) < 0.1 and size == "240x320"
