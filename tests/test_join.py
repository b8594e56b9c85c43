"""Joining: segments from differently configured encoders make one clean stream; verification catches lies."""

from __future__ import annotations

import shutil
from dataclasses import replace

import numpy as np
import pytest
import ray

from montage_ray.encoders.config import LabelConfig
from montage_ray.cluster.nodes import Placement
from montage_ray.cluster.pool import EncoderPool
from montage_ray.cluster.session import connected
from montage_ray.encoders.records import JobSettings
from montage_ray.errors import VerificationError
from montage_ray.media.join import DecodeDelays, check_structure, container_for, join_segments, verify_output
from montage_ray.media.info import inspect
from montage_ray.media.plan import plan_segments
from montage_ray.media.cut import split_source
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


def test_decode_delays_read_as_the_pieces_land_give_the_same_join(mixed_output, tmp_path):
    """A join at the end of mixed encoders whose pieces' decode delays were read in the background as they
    landed (DecodeDelays, what a job does) is, byte for byte, the join that reads them at the end; the
    delays differ (the B-frame encoder's pieces are shown later than decoded), so the alignment was needed."""
    info, out, plan, _, segments, encoded = mixed_output
    delays = DecodeDelays()
    try:
        for path in encoded:
            delays.offer(path)
        assert len({round(delays.get(path)[0], 6) for path in encoded}) == 2
        again = str(tmp_path / "again.mp4")
        join_segments(info, segments, encoded, again, str(tmp_path), container=container_for(again), mixed=True,
                      codec="h264", delays=delays)
    finally:
        delays.close()
    with open(again, "rb") as a, open(out, "rb") as b:
        assert a.read() == b.read()


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


# -- the streamed join -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoded_pieces(make_clip, tmp_path_factory):
    """The 'long' clip cut into 2 s segments, each encoded as the actors encode (no Ray needed)."""
    from montage_ray.encoders.backends import cpu_spec
    from montage_ray.encoders.segment import encode_segment

    work = tmp_path_factory.mktemp("streamed")
    info = inspect(make_clip("long"))
    segments = plan_segments(info.packets, info.video.time_base, 2)
    pieces = split_source(info, segments, str(work))
    spec = cpu_spec("h264", preset="ultrafast")
    paths = []
    for seg, piece in zip(segments, pieces):
        _, data = encode_segment(spec, seg, open(piece, "rb").read())
        paths.append(str(work / f"enc-{seg.index:06d}.mp4"))
        open(paths[-1], "wb").write(data)
    return info, segments, paths


def _offer_late(join, paths, order, delay):
    """Offer the pieces from another thread, in ``order``, ``delay`` s apart (as encoders finish them)."""
    import threading
    import time

    def run():
        for i in order:
            time.sleep(delay)
            join.offer(i, paths[i])

    t = threading.Thread(target=run)
    t.start()
    return t


def test_a_streamed_join_is_the_join_of_the_finished_files_byte_for_byte(encoded_pieces, tmp_path):
    """Pieces offered out of order while the join runs: the same file as joining them all at the end."""
    from montage_ray.media.join import StreamingJoin, streamable

    info, segments, paths = encoded_pieces
    assert all(streamable(p) for p in paths)  # the encoders write the sample tables first
    whole = str(tmp_path / "whole.mp4")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plan = join_segments(info, segments, paths, whole, str(tmp_path / "a"), container=container_for(whole))
    streamed = str(tmp_path / "streamed.mp4")
    order = [1, 0, 3, 2, 5, 4, 7, 6, 9, 8]
    with StreamingJoin(info, segments, streamed, str(tmp_path / "b"), container=container_for(streamed)) as join:
        feeder = _offer_late(join, paths, order, 0.05)
        feeder.join()
        got = join.finish()
    assert got == plan
    assert open(streamed, "rb").read() == open(whole, "rb").read()
    assert verify_output(streamed, got, decode=True).frames == 600


def test_a_piece_written_with_its_samples_first_is_remuxed_for_the_streamed_join(encoded_pieces, tmp_path):
    from montage_ray.media.join import StreamingJoin, streamable

    info, segments, paths = encoded_pieces
    plain = str(tmp_path / "plain-3.mp4")
    mc.run_ffmpeg(["-i", paths[3], "-c", "copy", plain])  # no +faststart: moov after mdat
    assert not streamable(plain)
    pieces = list(paths)
    pieces[3] = plain
    out = str(tmp_path / "out.mp4")
    with StreamingJoin(info, segments, out, str(tmp_path), container=container_for(out)) as join:
        for i, p in enumerate(pieces):
            join.offer(i, p)
        plan = join.finish()
    checked = verify_output(out, plan, decode=True)
    assert checked.frames == info.video.frames == 600


def test_a_streamed_join_stopped_midway_leaves_nothing_running(encoded_pieces, tmp_path):
    """An encode failed: the join, blocked on a pipe no piece will come to, is killed, its feeder ends, and
    finishing without every piece is an error, not a hang."""
    from montage_ray.errors import FFmpegError
    from montage_ray.media.join import StreamingJoin

    info, segments, paths = encoded_pieces
    out = str(tmp_path / "out.mp4")
    join = StreamingJoin(info, segments, out, str(tmp_path), container=container_for(out))
    for i in (0, 1, 3):
        join.offer(i, paths[i])
    import time
    deadline = time.monotonic() + 60
    while join.fed < 2 and time.monotonic() < deadline:  # 0 and 1 go in; 3 waits for 2
        time.sleep(0.05)
    assert join.fed == 2
    with pytest.raises(FFmpegError, match="never got segment 2"):
        join.finish()
    assert join._run.returncode() is not None
    assert not join._feeder.is_alive()


def _boxes(path) -> list[bytes]:
    """The top-level MP4 boxes of ``path``, in file order."""
    import os
    import struct

    kinds, at, end = [], 0, os.path.getsize(path)
    with open(path, "rb") as fh:
        while at < end:
            fh.seek(at)
            size, kind = struct.unpack(">I4s", fh.read(8))
            if size == 1:
                size = struct.unpack(">Q", fh.read(8))[0]
            kinds.append(kind)
            at += size if size else end
    return kinds


def test_the_sample_tables_go_first_into_space_kept_for_them_and_a_short_guess_is_caught(encoded_pieces, tmp_path,
                                                                                        monkeypatch):
    """The join writes moov into room kept at the start (no second pass over the file); when the room is too
    small (ffmpeg before 9.0 still exits 0, without the tables), the join is done again with them moved."""
    import montage_ray.media.join as join_module
    from montage_ray.errors import FFmpegError
    from montage_ray.media.join import StreamingJoin

    info, segments, paths = encoded_pieces
    out = str(tmp_path / "kept.mp4")
    plan = join_segments(info, segments, paths, out, str(tmp_path), container=container_for(out))
    # the room left over is a free box (ffmpeg always puts an 8-byte one before mdat as well)
    assert _boxes(out) == [b"ftyp", b"moov", b"free", b"free", b"mdat"]
    assert verify_output(out, plan, decode=False).frames == 600

    monkeypatch.setattr(join_module, "moov_reserve", lambda media, segs: 2000)  # far too small
    short = str(tmp_path / "short.mp4")
    plan = join_segments(info, segments, paths, short, str(tmp_path), container=container_for(short))
    assert _boxes(short) == [b"ftyp", b"moov", b"free", b"mdat"]  # moved up at the end: +faststart
    assert verify_output(short, plan, decode=False).frames == 600
    streamed = str(tmp_path / "streamed.mp4")
    (tmp_path / "s").mkdir()
    with StreamingJoin(info, segments, streamed, str(tmp_path / "s"), container=container_for(streamed)) as join:
        for i, p in enumerate(paths):
            join.offer(i, p)
        with pytest.raises(FFmpegError, match="sample tables was too small"):  # the job then joins the files
            join.finish()                                                        # with +faststart (test_job)
