"""Cutting in the background: pieces come out in order as the segment muxer closes them, each goes to the
pool before the cut is over, and the driver starts no process per piece."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import threading

import pytest
import ray

from montage_ray.ffmpeg import tool
from montage_ray.ffmpeg.caps import ffmpeg_caps
from montage_ray.cluster.nodes import Placement
from montage_ray.cluster.pool import EncoderPool
from montage_ray.cluster.session import connected
from montage_ray.errors import EncoderError
from montage_ray.media.info import inspect
from montage_ray.media.plan import plan_segments
from montage_ray.encoders.segment import count_packets
from montage_ray.encoders.records import JobSettings
from montage_ray.media.cut import start_cut, split_source


@pytest.fixture(scope="module")
def mkv_source(make_clip, tmp_path_factory):
    """The 'long' clip as Matroska (readable from a pipe), its info and a 2 s plan."""
    out = tmp_path_factory.mktemp("mkv") / "long.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(make_clip("long")), "-map", "0:v", "-c", "copy",
                    str(out)], check=True, timeout=60)
    info = inspect(out)
    return out, info, plan_segments(info.packets, info.video.time_base, 2)


def test_cut_lists_every_piece_in_order_with_one_process(mkv_source, tmp_path):
    src, info, segments = mkv_source
    ffmpeg_caps()  # what this ffmpeg can do is asked once per process, not per cut
    with tool.watch() as started:
        cut = start_cut(info, segments, str(tmp_path))
        paths = cut.wait()
    assert len(started) == 1  # one ffmpeg for all pieces, nothing per piece
    assert [e for e in cut.events if e[0] == "listed"] == [("listed", i) for i in range(len(segments))]
    assert cut.events[-1] == ("exited", 0) and cut.finished
    assert [count_packets(p) for p in paths] == [s.frames for s in segments]


def test_a_cut_that_disagrees_with_the_plan_fails(mkv_source, tmp_path):
    src, info, segments = mkv_source
    shifted = [dataclasses.replace(s, start=s.start + (0.5 if s.index == 3 else 0.0)) for s in segments]
    with pytest.raises(EncoderError, match="cutting segment 3"):
        split_source(info, shifted, str(tmp_path))


def test_pieces_go_to_the_pool_while_the_cutter_still_runs(mkv_source, tmp_path, ray_cluster):
    """The source reaches the cutter through a pipe that the test holds open: the second half is written
    only once segment 0 has been handed to an actor, so the order is certain, whatever the machine's load."""
    src, info, segments = mkv_source
    fifo = str(tmp_path / "source.mkv")
    os.mkfifo(fifo)
    data = src.read_bytes()
    dispatched = threading.Event()
    order: list[str] = []

    def feed() -> None:
        with open(fifo, "wb") as fh:
            fh.write(data[: len(data) * 2 // 3])  # enough for the first pieces, not for the last
            fh.flush()
            if not dispatched.wait(timeout=300):
                order.append("gave up waiting for segment 0")
            order.append("rest of the source written")
            fh.write(data[len(data) * 2 // 3:])

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    cut = start_cut(dataclasses.replace(info, path=fifo), segments, str(tmp_path))

    def load(seg):
        if seg.index == 0:
            order.append(f"segment 0 sent, cutter running={cut.running}")
            dispatched.set()
        with open(cut.paths[seg.index], "rb") as fh:
            return fh.read()

    settings = JobSettings(codec="h264", quality=23, preset="ultrafast", video=info.video)
    node = ray.get_runtime_context().get_node_id()
    w = connected().registry.start([Placement("cpu", node, "pipe", 0, node_cpus=2)], {})
    try:
        done = {seg.index for seg, _, _ in EncoderPool(w).run(segments, load=load, settings=settings,
                                                               ready=cut.ready)}
    finally:
        cut.close()
        connected().registry.stop(w)
    writer.join(timeout=60)
    assert order[:2] == ["segment 0 sent, cutter running=True", "rest of the source written"]
    assert done == {s.index for s in segments} and cut.finished
