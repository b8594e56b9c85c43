"""The segment cache: a killed job run again reuses what it had encoded and verified; a
changed source or setting reuses nothing; a damaged piece is never trusted; nothing piles up."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from montage_ray import encode
from montage_ray.job.cache import CACHE_DIRNAME, SegmentCache, maker_id
from montage_ray.errors import InputError
from montage_ray.util.reaper import node_processes
from montage_ray.job.options import EncodeOptions
from montage_ray.media.plan import Segment
from montage_ray.encoders.records import EncodeResult
from tests import mediacheck as mc
from tests.helpers import child_pids, mount_tmpfs



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


SOURCE = {"stream": 0, "packets": "abc"}
CPU = maker_id("cpu", "cpu:libx264", None, "build-a")
CUT = "c" * 64  # the hash of the cut piece the encoder was given


def test_a_stored_piece_comes_back_for_the_same_range_cut_and_encoder_only(piece, tmp_path):
    path, seg, result = piece
    cache = SegmentCache(str(tmp_path / "c"), SOURCE, {"quality": 23})
    assert cache.store(seg, result, str(path), maker=CPU, verified="decode", cut=CUT)
    got = cache.take(seg, str(tmp_path / "back.mp4"), makers={CPU}, verify="decode", cut=CUT)
    assert got is not None and got.reused and got.encoder == "cpu:libx264" and got.frames == 180
    assert (tmp_path / "back.mp4").read_bytes() == path.read_bytes()
    # the same range at another index (another plan) hits too; another range, cut piece, encoder, ffmpeg build
    # of the encoder, or check does not
    assert cache.take(Segment(**{**seg.__dict__, "index": 3}), str(tmp_path / "b3.mp4"), makers={CPU},
                      verify="decode", cut=CUT).segment == 3
    assert cache.take(Segment(**{**seg.__dict__, "end_packet": 179}), str(tmp_path / "x1.mp4"), makers={CPU},
                      verify="decode", cut=CUT) is None
    assert cache.take(seg, str(tmp_path / "x0.mp4"), makers={CPU}, verify="decode", cut="d" * 64) is None
    for other in (maker_id("nvenc", "nvenc:h264_nvenc", None, "build-a"), maker_id("cpu", "cpu:libx264", None, "build-b")):
        assert cache.take(seg, str(tmp_path / "x2.mp4"), makers={other}, verify="decode", cut=CUT) is None
    assert cache.take(seg, str(tmp_path / "x3.mp4"), makers={CPU}, verify="packets", cut=CUT) is not None
    cache.store(seg, result, str(path), maker=CPU, verified="packets", cut=CUT)  # only counted: not for --verify decode
    assert cache.take(seg, str(tmp_path / "x4.mp4"), makers={CPU}, verify="decode", cut=CUT) is None
    # another source's packet table or another setting is another key: nothing found
    for source, settings in ((dict(SOURCE, packets="abd"), {"quality": 23}), (SOURCE, {"quality": 24})):
        other = SegmentCache(str(tmp_path / "c"), source, settings)
        assert other.take(seg, str(tmp_path / "x5.mp4"), makers={CPU}, verify="packets", cut=CUT) is None
    cache.clear([seg])
    assert not (tmp_path / "c").exists()


def _same_size_bars(size: int, frames: int, folder: Path) -> bytes:
    """Another valid H.264 MP4 of ``frames`` colour-bar frames, padded to exactly ``size`` bytes (a free box)."""
    bars = folder / "bars.mp4"
    mc.run_ffmpeg(["-f", "lavfi", "-i", "smptebars=size=320x240:rate=30", "-frames:v", frames, "-c:v", "libx264",
                   "-crf", "45", "-g", "30", bars])
    data = bars.read_bytes()
    assert len(data) + 8 <= size, (len(data), size)
    pad = size - len(data)
    return data + pad.to_bytes(4, "big") + b"free" + bytes(pad - 8)


@pytest.mark.parametrize("damage", ["half-zeros", "eight-flipped-bytes", "another-valid-mp4"])
def test_a_piece_that_is_not_what_was_stored_is_encoded_again(damage, piece, tmp_path):
    path, seg, result = piece
    folder = tmp_path / "c"
    cache = SegmentCache(str(folder), SOURCE, {})
    cache.store(seg, result, str(path), maker=CPU, verified="decode", cut=CUT)
    stored = [p for p in folder.glob("*.mp4")]
    data = bytearray(stored[0].read_bytes())
    if damage == "half-zeros":
        data[len(data) // 2:] = bytes(len(data) - len(data) // 2)
    elif damage == "eight-flipped-bytes":
        middle = len(data) * 3 // 5
        data[middle:middle + 8] = bytes(b ^ 0xFF for b in data[middle:middle + 8])
    else:
        data = bytearray(_same_size_bars(len(data), 180, tmp_path))
        (tmp_path / "padded.mp4").write_bytes(bytes(data))
        assert mc.decoded_frames(tmp_path / "padded.mp4") == 180  # (as valid as the piece it replaces)
    stored[0].unlink()  # (a hard link of the test's file: write a new inode)
    stored[0].write_bytes(bytes(data))  # same size, same packet count
    assert cache.take(seg, str(tmp_path / "back.mp4"), makers={CPU}, verify="decode", cut=CUT) is None
    assert not (tmp_path / "back.mp4").exists() and _entries(folder) == []


def test_discard_removes_what_the_job_stored_or_took_and_nothing_else(piece, tmp_path):
    path, seg, result = piece
    folder = tmp_path / "c"
    other = Segment(**{**seg.__dict__, "index": 1, "first_packet": 180, "end_packet": 360})
    SegmentCache(str(folder), SOURCE, {}).store(seg, result, str(path), maker=CPU, verified="decode", cut=CUT)
    SegmentCache(str(folder), SOURCE, {"another": "job"}).store(other, result, str(path), maker=CPU,
                                                                 verified="decode", cut=CUT)
    rerun = SegmentCache(str(folder), SOURCE, {})
    assert rerun.take(seg, str(tmp_path / "back.mp4"), makers={CPU}, verify="decode", cut=CUT) is not None
    rerun.discard()  # (its joined file failed verification)
    assert rerun.take(seg, str(tmp_path / "again.mp4"), makers={CPU}, verify="decode", cut=CUT) is None
    assert len(_entries(folder)) == 1 and len(list(folder.glob("*.mp4"))) == 1  # the other job's entry


def test_a_folder_whose_tag_does_not_fit_on_a_full_disk_is_not_left_behind(piece, tmp_path):

    path, seg, result = piece
    disk = mount_tmpfs(tmp_path / "disk", "64k")
    try:
        with open(disk / "filler", "wb", buffering=0) as fh:  # the disk full to the last block
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"x" * 4096)
        cache = SegmentCache(str(disk / CACHE_DIRNAME), SOURCE, {"quality": 23})
        assert not cache.store(seg, result, str(path), maker=CPU, verified="decode", cut=CUT)
        cache.discard()
        assert sorted(os.listdir(disk)) == ["filler"]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_piece_whose_sidecar_does_not_fit_is_not_left_behind(piece, tmp_path):
    path, seg, result = piece
    disk = mount_tmpfs(tmp_path / "disk", "1m")
    try:
        pages = -(-path.stat().st_size // 4096)
        with open(disk / "filler", "wb", buffering=0) as fh:  # the disk full to the last block ...
            with contextlib.suppress(OSError):
                while True:
                    fh.write(b"x" * 4096)
            fh.truncate(fh.tell() - (1 + pages) * 4096)  # ... but for the tag and the piece: not its sidecar
        cache = SegmentCache(str(disk / CACHE_DIRNAME), SOURCE, {"quality": 23})
        assert not cache.store(seg, result, str(path), maker=CPU, verified="decode", cut=CUT) and cache.broken
        assert sorted(os.listdir(disk)) == ["filler"]
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_piece_a_kill_left_without_its_sidecar_does_not_pile_up(piece, tmp_path):
    path, seg, result = piece
    folder = tmp_path / "c"
    cache = SegmentCache(str(folder), SOURCE, {})
    key = cache.key(seg, CUT)
    cache.store(seg, result, str(path), maker=CPU, verified="decode", cut=CUT)
    (folder / (key + ".json")).unlink()  # killed between the piece and its sidecar
    assert cache.take(seg, str(tmp_path / "back.mp4"), makers={CPU}, verify="decode", cut=CUT) is None
    cache.store(seg, result, str(path), maker=CPU, verified="decode", cut=CUT)  # the re-run stores it again ...
    assert len(list(folder.glob("*.mp4"))) == 1                       # ... and the orphan goes
    (folder / (key + ".json")).unlink()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True).stdout.strip()
    (folder / f".{key}.json.tmp-{dead}-abc").write_text("{")  # a write a kill cut short
    cache.clear([seg])
    assert not folder.exists()


def test_the_plan_of_an_earlier_run_is_kept_checked_and_cleared_with_the_pieces(piece, tmp_path):
    path, seg, result = piece
    cache = SegmentCache(str(tmp_path / "c"), SOURCE, {})
    halves = [Segment(0, 0, 90, 0.0, 3.0, 0, 3), Segment(1, 90, 180, 3.0, 3.0, 3, 3)]
    assert cache.plan(None, 180) is None
    cache.store(seg, result, str(path), maker=CPU, verified="decode", cut=CUT, plan=(None, halves))
    assert cache.plan(None, 180) == halves
    assert cache.plan(2.0, 180) is None    # another segment length asked for: plan afresh
    assert cache.plan(None, 181) is None   # does not cover the stream: plan afresh
    # the automatic length (None) too: a later job clears the plan with the pieces
    SegmentCache(str(tmp_path / "c"), SOURCE, {}).clear([seg], None)
    assert not (tmp_path / "c").exists()


def test_the_cache_keeps_to_its_cap_oldest_other_jobs_first(piece, tmp_path):
    path, seg, result = piece
    size = path.stat().st_size
    folder = tmp_path / "c"
    segs = [Segment(**{**seg.__dict__, "index": i, "first_packet": 180 * i, "end_packet": 180 * (i + 1)})
            for i in range(3)]
    old = SegmentCache(str(folder), SOURCE, {"job": "old"})
    for s in segs[:2]:
        assert old.store(s, result, str(path), maker=CPU, verified="decode", cut=CUT, plan=(None, segs))
    new = SegmentCache(str(folder), SOURCE, {"job": "new"}, cap=2 * size + 4096)
    assert new.store(segs[0], result, str(path), maker=CPU, verified="decode", cut=CUT)      # the oldest goes
    assert new.store(segs[1], result, str(path), maker=CPU, verified="decode", cut=CUT)      # and the next (and
    assert not any(p.name.startswith("plan-") for p in folder.iterdir())                    # its plan with it)
    assert not new.store(segs[2], result, str(path), maker=CPU, verified="decode", cut=CUT)  # its own stay
    assert len(_entries(folder)) == 2 and new.full
    assert old.take(segs[0], str(tmp_path / "x.mp4"), makers={CPU}, verify="decode", cut=CUT) is None
    assert new.take(segs[1], str(tmp_path / "y.mp4"), makers={CPU}, verify="decode", cut=CUT) is not None
    # opening it with a lower cap ($MONTAGE_RAY_CACHE_MAX_BYTES) prunes down to it
    from montage_ray.job.cache import MAX_BYTES_ENV

    os.environ[MAX_BYTES_ENV] = str(size + 4096)
    try:
        SegmentCache(str(folder), SOURCE, {"job": "third"}).prune()
    finally:
        del os.environ[MAX_BYTES_ENV]
    assert len(_entries(folder)) == 1


def test_pieces_and_sidecars_are_private_and_nothing_else_is_ever_removed(piece, tmp_path):
    path, seg, result = piece
    folder = tmp_path / "c"
    cache = SegmentCache(str(folder), SOURCE, {})
    cache.store(seg, result, str(path), maker=CPU, verified="decode", cut=CUT, plan=(None, [seg]))
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o600}
    # in the cache's own folder: someone's file and a link named like a sidecar to a document outside, all old
    document = tmp_path / "thesis.pdf"
    document.write_text("years of work")
    (folder / "notes.txt").write_text("mine")
    (folder / ("a" * 40 + ".json")).symlink_to(document)
    month_ago = time.time() - 30 * 86400
    for p in (*folder.iterdir(), document):
        os.utime(p, (month_ago, month_ago), follow_symlinks=False)
    removed = SegmentCache(str(folder), SOURCE, {}).prune(now=time.time() + 8 * 86400)
    assert "notes.txt" not in removed and (folder / "notes.txt").read_text() == "mine"
    assert document.read_text() == "years of work"   # the link went, never what it points to
    assert sorted(p.name for p in folder.iterdir()) == ["CACHEDIR.TAG", "notes.txt"]


def test_an_empty_folder_of_the_users_is_used_and_left_as_it_was(piece, tmp_path):
    path, seg, result = piece
    folder = tmp_path / "mine"
    folder.mkdir(mode=0o700)
    assert EncodeOptions(cache_dir=str(folder)).validate(path, tmp_path / "o.mp4").cache == str(folder)
    cache = SegmentCache(str(folder), SOURCE, {})
    assert cache.store(seg, result, str(path), maker=CPU, verified="decode", cut=CUT)
    assert (folder / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")
    assert EncodeOptions(cache_dir=str(folder)).validate(path, tmp_path / "o.mp4").cache == str(folder)  # (its own)
    cache.clear([seg])
    assert folder.is_dir() and list(folder.iterdir()) == []  # the cache did not make it: it stays, untagged


@pytest.mark.parametrize("kind", ["other-user", "writable-by-others", "symlink", "foreign-files"])
def test_a_folder_that_is_not_the_caches_own_is_refused(kind, piece, tmp_path):
    path, seg, result = piece
    folder = tmp_path / "c"
    elsewhere = tmp_path / "docs"
    elsewhere.mkdir(mode=0o700)
    (elsewhere / "old.doc").write_text("keep me")
    if kind == "symlink":
        folder.symlink_to(elsewhere)
    else:
        folder.mkdir(mode=0o700)
        if kind == "other-user":
            os.chown(folder, 65534, 65534)  # nobody's (the suite runs as root)
        elif kind == "writable-by-others":
            os.chmod(folder, 0o777)
        else:
            (folder / "report.odt").write_text("the user's")
    cache = SegmentCache(str(folder), SOURCE, {})
    why = cache.refusal()
    assert why and {"other-user": "another user", "writable-by-others": "written by other users",
                    "symlink": "symbolic link", "foreign-files": "did not write"}[kind] in why
    assert not cache.store(seg, result, str(path), maker=CPU, verified="decode", cut=CUT) and cache.broken
    assert cache.prune(now=time.time() + 30 * 86400) == []
    cache.clear([seg])
    assert (elsewhere / "old.doc").read_text() == "keep me" and not list(folder.glob("*.mp4"))
    with pytest.raises(InputError, match=re.escape(why)):
        EncodeOptions(cache_dir=str(folder)).validate(path, tmp_path / "o.mp4")


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
    # the cache's folder and files are its user's only
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in cache.iterdir()} == {0o600}
    assert encode(src, tmp_path / "o3.mp4", **dict(run, quality=24)).segments_reused == 0   # a setting changed
    os.utime(src, ns=(time.time_ns(), src.stat().st_mtime_ns + 10**9))   # touched: the same bytes are encoded
    assert encode(src, tmp_path / "o4.mp4", **run).segments_reused == 3
    off = encode(src, tmp_path / "o5.mp4", preset="ultrafast", segment_seconds=2, cache=False)  # --no-cache
    assert off.segments_reused == 0 and not (tmp_path / CACHE_DIRNAME).exists()
    # without --keep-cache the job's entries go once DST is written; the others' stay
    before = len(_entries(cache))
    assert encode(src, tmp_path / "o6.mp4", preset="ultrafast", segment_seconds=2,
                  cache_dir=str(cache)).segments_reused == 3
    assert len(_entries(cache)) == before - 3


@pytest.mark.usefixtures("ray_cluster")
def test_a_job_leaves_nothing_beside_dst_at_the_automatic_segment_length(make_clip, tmp_path):
    report = encode(make_clip("long"), tmp_path / "o.mp4", preset="ultrafast")  # (its plan is kept while it runs)
    assert len(report.segments) > 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.mp4"]


def _packets(path) -> list[dict]:
    """The video packets of ``path`` in decode order: pos, size, flags."""
    return mc.ffprobe(path, "-select_streams", "v:0", "-show_entries", "packet=pos,size,flags")["packets"]


def _sidecars(folder: Path) -> dict[int, dict]:
    """The entries of a cache folder by the first packet of their segment."""
    return {e["segment"]["first_packet"]: e for e in (json.loads(p.read_text()) for p in _entries(folder))}


@pytest.mark.usefixtures("ray_cluster")
def test_an_edited_source_or_a_tampered_piece_is_encoded_again(make_clip, tmp_path):
    src = tmp_path / "src.mp4"
    shutil.copyfile(make_clip("bframes"), src)
    original = mc.frame_signatures(src)
    cache = tmp_path / "cache"
    run = dict(preset="ultrafast", segment_seconds=2, cache_dir=str(cache), keep_cache=True)
    assert encode(src, tmp_path / "o1.mp4", **run).segments_reused == 0 and len(_entries(cache)) == 3

    # 1. bytes inside a frame of the third segment overwritten, size and mtime kept (the packet table too)
    table = _packets(src)
    packet = table[150]
    start = int(packet["pos"]) + int(packet["size"]) // 4
    edit = np.random.default_rng(7).integers(0, 256, int(packet["size"]) // 2, dtype=np.uint8).tobytes()
    before = src.stat()
    with open(src, "r+b") as fh:
        fh.seek(start)
        fh.write(edit)
    os.utime(src, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert src.stat().st_size == before.st_size and _packets(src) == table
    edited = mc.frame_signatures(src)
    changed = np.flatnonzero(np.abs(edited - original).mean(axis=1) > 1.0)
    assert len(changed) and changed.min() >= 120  # (the edit shows, in the third segment only)
    second = encode(src, tmp_path / "o2.mp4", **run)
    assert [s.reused for s in second.segments] == [True, True, False]
    out = mc.frame_signatures(tmp_path / "o2.mp4")
    assert np.mean((out[changed] - edited[changed]) ** 2) < np.mean((out[changed] - original[changed]) ** 2)
    mc.assert_same_frames_in_order(src, tmp_path / "o2.mp4", damaged=changed)

    # 2. cached pieces changed in place: 8 bytes flipped in the first, the second swapped for colour bars of the
    #    same size and packet count
    entries = _sidecars(cache)
    first, middle = cache / entries[0]["piece"], cache / entries[60]["piece"]
    data = bytearray(first.read_bytes())
    at = len(data) * 3 // 5
    data[at:at + 8] = bytes(b ^ 0xFF for b in data[at:at + 8])
    first.write_bytes(bytes(data))
    middle.write_bytes(_same_size_bars(middle.stat().st_size, 60, tmp_path))
    third = encode(src, tmp_path / "o3.mp4", **run)
    assert [s.reused for s in third.segments] == [False, False, True]
    assert mc.decoded_frames(tmp_path / "o3.mp4") == 180 and mc.decode_errors(tmp_path / "o3.mp4") == ""
    mc.assert_same_frames_in_order(src, tmp_path / "o3.mp4")
    assert encode(src, tmp_path / "o4.mp4", **run).segments_reused == 3  # sound again: all taken


@pytest.mark.usefixtures("ray_cluster")
def test_pieces_of_another_ffmpeg_build_are_not_reused(make_clip, ffmpeg_builds, tmp_path, monkeypatch):
    from montage_ray.ffmpeg import tool
    from montage_ray.ffmpeg.caps import ffmpeg_caps

    src = make_clip("bframes")
    cache = tmp_path / "cache"
    run = dict(preset="ultrafast", segment_seconds=2, cache_dir=str(cache), keep_cache=True)
    first = encode(src, tmp_path / "o1.mp4", **run)
    assert {s.ffmpeg_build for s in first.segments} == {ffmpeg_caps().build}  # (what each actor encoded with)
    try:
        for version in ("4.2.2", "9.0.2"):  # the driver's ffmpeg cuts and joins: another build reuses nothing
            monkeypatch.setenv("MONTAGE_FFMPEG", str(ffmpeg_builds[version]))
            tool.ffmpeg.cache_clear()  # (the driver asks for its ffmpeg once per process)
            report = encode(src, tmp_path / f"o-{version}.mp4", **run)
            assert report.segments_reused == 0, version
            assert mc.decoded_frames(tmp_path / f"o-{version}.mp4") == 180
    finally:
        monkeypatch.delenv("MONTAGE_FFMPEG")
        tool.ffmpeg.cache_clear()
    assert encode(src, tmp_path / "o2.mp4", **run).segments_reused == 3


@pytest.mark.parametrize("where", [".", "~", "/", "/etc", "/root", "docs"])
def test_a_cache_dir_that_is_not_the_caches_own_is_refused_and_nothing_is_removed(where, make_clip, tmp_path,
                                                                                 monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("alias ll='ls -l'")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "letter.txt").write_text("dear ...")
    src = docs / "talk.mp4"
    shutil.copyfile(make_clip("bframes"), src)
    month_ago = time.time() - 30 * 86400
    for p in (home / ".bashrc", docs / "letter.txt", src):
        os.utime(p, (month_ago, month_ago))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(docs if where == "." else tmp_path)
    with pytest.raises(InputError, match="holds files that montage-ray did not write") as err:
        encode(src, tmp_path / "o.mp4", preset="ultrafast", cache_dir=where)
    assert "\n" not in str(err.value)
    assert (home / ".bashrc").exists() and (docs / "letter.txt").exists() and src.exists()
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.usefixtures("ray_cluster")
@pytest.mark.parametrize("kind", ["another-users", "symlink"])
def test_a_cache_folder_beside_dst_that_is_not_ours_is_not_used(kind, make_clip, tmp_path, caplog):
    out = tmp_path / "shared"
    out.mkdir(mode=0o777)
    folder = out / CACHE_DIRNAME
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "old.doc").write_text("keep me")
    month_ago = time.time() - 30 * 86400
    os.utime(docs / "old.doc", (month_ago, month_ago))
    if kind == "symlink":
        folder.symlink_to(docs)
    else:  # made by another user in a shared folder, open to all, with a piece planted for the victim
        folder.mkdir()
        os.chmod(folder, 0o777)
        (folder / ("b" * 40 + ".json")).write_text("{}")
        for p in (folder, *folder.iterdir()):
            os.chown(p, 65534, 65534)
    planted = sorted(p.name for p in folder.iterdir())
    with caplog.at_level(logging.WARNING, logger="montage_ray"):
        report = encode(make_clip("bframes"), out / "o.mp4", preset="ultrafast", segment_seconds=2,
                        keep_cache=True)
    assert report.segments_reused == 0 and mc.decoded_frames(out / "o.mp4") == 180
    assert sorted(p.name for p in folder.iterdir()) == planted  # nothing written there, nothing removed
    assert (docs / "old.doc").read_text() == "keep me"
    lines = [r.getMessage() for r in caplog.records if "segment cache" in r.getMessage()]
    assert len(lines) == 1 and ("another user" if kind != "symlink" else "symbolic link") in lines[0], lines


def _command(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[:120]
    return "?"


def _private_ray_node(driver: int) -> str:
    """The node id of the private Ray that process ``driver`` started (from its raylet's command line)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for pid in child_pids(driver):
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
                if argv[0].endswith("/raylet"):
                    return next(a.split("=", 1)[1] for a in argv if a.startswith("--node_id="))
        time.sleep(0.1)
    raise AssertionError(f"no raylet under the job's process {driver}")


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
        node = _private_ray_node(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)  # the driver alone, as `kill -9` does
        _, err = proc.communicate(timeout=60)
        # its private Ray goes with it at once: the raylet's agents too (they would linger a minute or two)
        deadline = time.monotonic() + 15
        while node_processes(node) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = [_command(pid) for pid in node_processes(node)]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever else the job started in its group
    assert proc.returncode == -signal.SIGKILL, err
    assert left == [], left
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
