"""The segment cache: a killed job run again reuses what it had encoded and verified; a
changed source or setting reuses nothing; a damaged piece is never trusted; nothing piles up."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from montage_ray import encode
from montage_ray.job.cache import CACHE_DIRNAME, SegmentCache, maker_id
from montage_ray.errors import InputError
from montage_ray.job.options import EncodeOptions
from montage_ray.media.plan import Segment
from montage_ray.encoders.records import EncodeResult
from tests import mediacheck as mc



def _entries(folder: Path) -> list[Path]:
    """Complete entries (sidecars: written after their piece) in a cache folder."""
    return sorted(p for p in folder.glob("*.json") if not p.name.startswith(("plan-", "."))) if folder.is_dir() \
        else []


# -- the cache alone (a real encoded file as the piece, no Ray) ----------------------------------------------

@pytest.fixture
def piece(make_clip, tmp_path):
    """A real 180-packet H.264 file standing for an encoded segment, and its segment and result."""
    path = tmp_path / "enc.mp4"
    shutil.copyfile(make_clip("noaudio"), path)
    seg = Segment(index=0, first_packet=0, end_packet=180, start=0.0, duration=6.0, start_ticks=0,
                  duration_ticks=6 * 15360)
    result = EncodeResult(segment=0, frames=180, bytes_in=1, bytes_out=path.stat().st_size, seconds=1.5,
                          encoder="cpu:libx264", backend="cpu", resource="cpu", standin=False, node="n", actor="a")
    return path, seg, result


SOURCE = {"size": 1, "mtime_ns": 1, "stream": 0, "packets": "abc"}
CPU = maker_id("cpu", "cpu:libx264", None)


def test_a_stored_piece_comes_back_for_the_same_range_and_encoder_only(piece, tmp_path):
    path, seg, result = piece
    cache = SegmentCache(str(tmp_path / "c"), SOURCE, {"quality": 23})
    assert cache.store(seg, result, str(path), maker=CPU, verified="decode")
    got = cache.take(seg, str(tmp_path / "back.mp4"), makers={CPU}, verify="decode")
    assert got is not None and got.reused and got.encoder == "cpu:libx264" and got.frames == 180
    assert (tmp_path / "back.mp4").read_bytes() == path.read_bytes()
    # the same range at another index (another plan) hits too; another range, encoder or check does not
    assert cache.take(Segment(**{**seg.__dict__, "index": 3}), str(tmp_path / "b3.mp4"), makers={CPU},
                      verify="decode").segment == 3
    assert cache.take(Segment(**{**seg.__dict__, "end_packet": 179}), str(tmp_path / "x1.mp4"), makers={CPU},
                      verify="decode") is None
    assert cache.take(seg, str(tmp_path / "x2.mp4"), makers={maker_id("nvenc", "nvenc:h264_nvenc", None)},
                      verify="decode") is None
    assert cache.take(seg, str(tmp_path / "x3.mp4"), makers={CPU}, verify="packets") is not None
    cache.store(seg, result, str(path), maker=CPU, verified="packets")  # only counted: not for --verify decode
    assert cache.take(seg, str(tmp_path / "x4.mp4"), makers={CPU}, verify="decode") is None
    # another source or setting is another key: nothing found
    for source, settings in ((dict(SOURCE, mtime_ns=2), {"quality": 23}), (SOURCE, {"quality": 24})):
        other = SegmentCache(str(tmp_path / "c"), source, settings)
        assert other.take(seg, str(tmp_path / "x5.mp4"), makers={CPU}, verify="packets") is None
    cache.clear([seg])
    assert not (tmp_path / "c").exists()


def test_a_damaged_piece_is_not_trusted_and_is_removed(piece, tmp_path):
    path, seg, result = piece
    folder = tmp_path / "c"
    cache = SegmentCache(str(folder), SOURCE, {})
    cache.store(seg, result, str(path), maker=CPU, verified="decode")
    stored = [p for p in folder.glob("*.mp4")]
    data = stored[0].read_bytes()
    stored[0].unlink()  # (a hard link of the test's file: write a new inode)
    stored[0].write_bytes(data[: len(data) // 2] + bytes(len(data) - len(data) // 2))  # same size, half zeros
    assert cache.take(seg, str(tmp_path / "back.mp4"), makers={CPU}, verify="decode") is None
    assert not (tmp_path / "back.mp4").exists() and _entries(folder) == []


def test_discard_removes_what_the_job_stored_or_took_and_nothing_else(piece, tmp_path):
    path, seg, result = piece
    folder = tmp_path / "c"
    other = Segment(**{**seg.__dict__, "index": 1, "first_packet": 180, "end_packet": 360})
    SegmentCache(str(folder), SOURCE, {}).store(seg, result, str(path), maker=CPU, verified="decode")
    SegmentCache(str(folder), SOURCE, {"another": "job"}).store(other, result, str(path), maker=CPU,
                                                                 verified="decode")
    rerun = SegmentCache(str(folder), SOURCE, {})
    assert rerun.take(seg, str(tmp_path / "back.mp4"), makers={CPU}, verify="decode") is not None
    rerun.discard()  # (its joined file failed verification)
    assert rerun.take(seg, str(tmp_path / "again.mp4"), makers={CPU}, verify="decode") is None
    assert len(_entries(folder)) == 1 and len(list(folder.glob("*.mp4"))) == 1  # the other job's entry


def test_a_piece_a_kill_left_without_its_sidecar_does_not_pile_up(piece, tmp_path):
    path, seg, result = piece
    folder = tmp_path / "c"
    cache = SegmentCache(str(folder), SOURCE, {})
    cache.store(seg, result, str(path), maker=CPU, verified="decode")
    (folder / (cache.key(seg) + ".json")).unlink()  # killed between the piece and its sidecar
    assert cache.take(seg, str(tmp_path / "back.mp4"), makers={CPU}, verify="decode") is None
    cache.store(seg, result, str(path), maker=CPU, verified="decode")  # the re-run stores it again ...
    assert len(list(folder.glob("*.mp4"))) == 1                       # ... and the orphan goes
    (folder / (cache.key(seg) + ".json")).unlink()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    (folder / f".{cache.key(seg)}.json.tmp-{dead}-abc.json").write_text("{")  # a write a kill cut short
    cache.clear([seg])
    assert not folder.exists()


def test_the_plan_of_an_earlier_run_is_kept_and_checked(piece, tmp_path):
    path, seg, result = piece
    cache = SegmentCache(str(tmp_path / "c"), SOURCE, {})
    halves = [Segment(0, 0, 90, 0.0, 3.0, 0, 3), Segment(1, 90, 180, 3.0, 3.0, 3, 3)]
    assert cache.plan(None, 180) is None
    cache.store(seg, result, str(path), maker=CPU, verified="decode", plan=(None, halves))
    assert cache.plan(None, 180) == halves
    assert cache.plan(2.0, 180) is None    # another segment length asked for: plan afresh
    assert cache.plan(None, 181) is None   # does not cover the stream: plan afresh


def test_cache_options_are_checked_in_one_line(tmp_path):
    (tmp_path / "in.mp4").write_bytes(b"video")
    (tmp_path / "afile").write_text("x")
    for options, needle in (({"cache": False, "keep_cache": True}, "--no-cache contradicts --keep-cache"),
                            ({"cache": False, "cache_dir": str(tmp_path)}, "--no-cache contradicts --cache-dir"),
                            ({"cache_dir": str(tmp_path / "afile")}, "is not a folder"),
                            ({"cache_dir": str(tmp_path / "afile" / "sub")}, "is not a folder")):
        with pytest.raises(InputError, match=needle):
            EncodeOptions(**options).validate(tmp_path / "in.mp4", tmp_path / "o.mp4")
    job = EncodeOptions().validate(tmp_path / "in.mp4", tmp_path / "o.mp4")
    assert job.cache == str(tmp_path / CACHE_DIRNAME)
    assert EncodeOptions(cache=False).validate(tmp_path / "in.mp4", tmp_path / "o.mp4").cache is None
    made = EncodeOptions(cache_dir=str(tmp_path / "new" / "deeper")).validate(tmp_path / "in.mp4", tmp_path / "o.mp4")
    assert made.cache == str(tmp_path / "new" / "deeper") and not (tmp_path / "new").exists()  # made when used


# -- jobs on a real Ray -------------------------------------------------------------------------------------

@pytest.mark.usefixtures("ray_cluster")
def test_a_changed_source_or_setting_reuses_nothing(make_clip, tmp_path):
    src = tmp_path / "src.mp4"
    shutil.copyfile(make_clip("bframes"), src)
    cache = tmp_path / "cache"
    run = dict(preset="ultrafast", segment_seconds=2, cache_dir=str(cache), keep_cache=True)
    first = encode(src, tmp_path / "o1.mp4", **run)
    assert first.segments_reused == 0 and len(first.segments) == 3 and len(_entries(cache)) == 3
    again = encode(src, tmp_path / "o2.mp4", **run)  # the same job: everything reused, output exact
    assert again.segments_reused == 3 and all(s.reused for s in again.segments)
    assert mc.decoded_frames(tmp_path / "o2.mp4") == 180 and mc.decode_errors(tmp_path / "o2.mp4") == ""
    mc.assert_same_frames_in_order(src, tmp_path / "o2.mp4")
    assert encode(src, tmp_path / "o3.mp4", **dict(run, quality=24)).segments_reused == 0   # a setting changed
    os.utime(src, ns=(time.time_ns(), src.stat().st_mtime_ns + 10**9))                      # the source changed
    assert encode(src, tmp_path / "o4.mp4", **run).segments_reused == 0
    off = encode(src, tmp_path / "o5.mp4", preset="ultrafast", segment_seconds=2, cache=False)  # --no-cache
    assert off.segments_reused == 0 and not (tmp_path / CACHE_DIRNAME).exists()
    # without --keep-cache the job's entries go once DST is written; the others' stay
    before = len(_entries(cache))
    assert encode(src, tmp_path / "o6.mp4", preset="ultrafast", segment_seconds=2,
                  cache_dir=str(cache)).segments_reused == 3
    assert len(_entries(cache)) == before - 3


def test_a_killed_job_run_again_encodes_only_the_rest(make_clip, tmp_path):
    src = make_clip("long")  # 20 s: ten 2 s segments, one encoder held to 3x realtime (>= 0.6 s each)
    out = tmp_path / "out"
    out.mkdir()
    config = tmp_path / "encoders.yaml"
    config.write_text("labels:\n  cpu: {readrate: 3, preset: ultrafast}\n")
    cmd = [sys.executable, "-m", "montage_ray", "encode", str(src), str(out / "o.mp4"), "--quiet", "--workers", "1",
           "--segment-seconds", "2", "--encoders-config", str(config)]
    env = dict(os.environ, RAY_ADDRESS="")
    cache = out / CACHE_DIRNAME
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        while not _entries(cache) and proc.poll() is None:  # the first verified piece is in the cache
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the private Ray it started
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err
    kept = len(_entries(cache))
    assert kept >= 1 and not (out / "o.mp4").exists()
    assert any(p.name.startswith(".montage-ray-") for p in out.iterdir())  # the killed job's work folder

    done = subprocess.run(cmd + ["--report", str(tmp_path / "r.json")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    total = len(report["segments"])
    assert total >= 4 and report["segments_reused"] == kept < total, (kept, report["segments_reused"])
    assert sum(s["reused"] for s in report["segments"]) == report["segments_reused"]
    dst = out / "o.mp4"
    assert mc.decode_errors(dst) == "" and mc.decoded_frames(dst) == 600
    a, b = mc.video_times(src), mc.video_times(dst)
    np.testing.assert_allclose(b - b[0], a - a[0], atol=1e-3)
    mc.assert_same_frames_in_order(src, dst)
    # the killed job's work folder was swept, the cache cleared after the publish: only DST is left
    assert sorted(p.name for p in out.iterdir()) == ["o.mp4"]
