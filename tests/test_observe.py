"""Observability: progress (inside segments too), the report, Ray metrics, the timeline picture, the CLI bar."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import sys
import time
import zlib

import numpy as np
import pytest
import ray

from montage_ray import encode
from montage_ray.encoders.config import LabelConfig
from montage_ray.cluster.nodes import Placement
from montage_ray.cluster.pool import EncoderPool
from montage_ray.cluster.session import connected
from montage_ray.encoders.records import EncodeResult, JobSettings
from montage_ray.media.info import inspect
from montage_ray.media.plan import plan_segments
from montage_ray.job.progress import JobProgress, ProgressPrinter
from montage_ray.job.report import JobReport
from montage_ray.encoders.records import FailedAttempt
from montage_ray.media.cut import split_source
from montage_ray.job.timeline import FAILED_COLOUR, LABEL_COLOURS, draw_timeline
from tests.raycheck import exported_total

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def result(index: int, frames: int, actor: str = "a", seconds: float = 1.0, started: float = 0.0,
           label: str = "cpu") -> EncodeResult:
    return EncodeResult(segment=index, frames=frames, bytes_in=1000, bytes_out=500, seconds=seconds,
                        encoder=f"{label}:x", backend="cpu", resource=label, standin=False, node="n/1", actor=actor,
                        started=started)


# -- progress arithmetic and drawing (pure) ------------------------------------------------------------

def test_progress_counts_finished_and_running_frames_once():
    now = [100.0]
    p = JobProgress(frames=300, segments=3, encoders=2, clock=lambda: now[0])
    p.update({0: 40, 1: 10}, busy=2)
    assert p.done == 50 and p.eta is None      # no time has passed: no speed yet
    now[0] = 102.0
    assert p.fps == pytest.approx(25.0) and p.eta == pytest.approx(10.0)
    p.segment_done(0, 100)
    p.segment_done(0, 100)                 # a duplicate that finished too counts once
    p.update({0: 90, 1: 30}, busy=1)       # a late poll of a finished segment is ignored
    assert p.done == 130 and len(p.finished) == 1 and p.busy == 1
    line = p.line(100)
    assert "130/300 frames" in line and " 43%" in line and "1/2 encoders busy" in line and "1/3 segments" in line
    assert len(line) == 100 and line.startswith("[") and line.count("#") == round(len(line.split("]")[0][1:]) * 130 / 300)


def test_printer_redraws_a_bar_on_a_terminal_and_prints_lines_otherwise():
    term = io.StringIO()
    bar = ProgressPrinter(term, tty=True, columns=121)
    bar.start(frames=200, segments=2, encoders=2)
    bar.tick({0: 50}, 2)
    bar.failure(FailedAttempt(1, 1, "cpu:x", "enc:1", "crash", "ffmpeg was killed by SIGABRT"))
    bar.segment_done(result(0, 100))
    bar.close()
    text = term.getvalue()
    assert text.count("\r[") >= 4 and "50/200 frames" in text and "100/200 frames" in text
    # the bar is cleared, the failure printed on a line of its own, the bar drawn again below it
    assert "\r\x1b[2Ksegment 1 attempt 1 failed on enc:1 (crash): ffmpeg was killed by SIGABRT\n\r[" in text
    assert text.endswith("\n") and "1 failed" in text
    assert all(len(drawn.split("\n")[0]) <= 120 for drawn in text.split("\r"))

    log = io.StringIO()
    lines = ProgressPrinter(log, tty=False)
    lines.start(frames=200, segments=2, encoders=2)
    lines.tick({0: 50}, 2)                 # no line per tick in a log
    lines.segment_done(result(0, 100))
    lines.close()
    assert "\r" not in log.getvalue()
    assert log.getvalue().splitlines() == [
        "encoding 200 frames in 2 segments on 2 encoders",
        "segment 0 done (1/2): 100 frames in 1.0 s (100.0 fps) on a; 100/200 frames (50%)"]

    one = io.StringIO()
    single = ProgressPrinter(one, tty=False)
    single.begin(job_id="1a2b3c4d", source="in.mp4", destination="out.mp4")
    single.stage("starting a local Ray ...")
    single.start(frames=1, segments=1, encoders=1)
    assert one.getvalue().splitlines() == ["job 1a2b3c4d: in.mp4 -> out.mp4", "starting a local Ray ...",
                                           "encoding 1 frame in 1 segment on 1 encoder"]


@pytest.mark.parametrize("failures", [0, 3])
def test_the_bar_fits_any_width_and_the_finished_bar_names_no_busy_encoders(failures):
    now = [100.0]
    p = JobProgress(frames=123456, segments=140, encoders=16, clock=lambda: now[0])
    p.failures = failures
    p.update({0: 4000, 1: 3000}, busy=16)
    now[0] = 161.0
    for width in range(1, 200):
        line = p.line(width)
        assert len(line) <= width, (width, line)
        if width >= 40:
            assert line.startswith("[") and "%" in line and "ETA" in line
    assert "16/16 encoders busy" in p.line(120) and "busy 16/16" in p.line(79)
    for i in range(140):
        p.segment_done(i, 123456 // 140 + (1 if i < 123456 % 140 else 0))
    p.update({}, busy=16)                         # the last poll before the end still saw every actor busy
    for width in (40, 79, 120):
        line = p.line(width)
        assert len(line) <= width and "busy" not in line and "ETA" not in line and "1:01" in line, line
        assert "100%" in line
    assert "140/140 segments" in p.line(120) and "123456/123456 frames" in p.line(120)


# -- progress from inside a running segment (real Ray, real ffmpeg) ----------------------------------------

@pytest.mark.usefixtures("ray_cluster")
def test_pool_reports_frames_inside_a_running_segment(make_clip, tmp_path):
    info = inspect(make_clip("long"))
    segments = plan_segments(info.packets, info.video.time_base, 4)   # 120 frames each
    paths = split_source(info, segments, str(tmp_path))
    segments = segments[:2]
    settings = JobSettings(codec="h264", quality=23, preset="ultrafast", video=info.video, job_id="t1")
    node = ray.get_runtime_context().get_node_id()
    # at most 2x realtime: a 4 s segment takes about 2 s, so a poll every 0.3 s sees it half done
    registry = connected().registry  # the session's: one actor per slot
    slow = registry.start([Placement("cpu", node, "progress", 0, node_cpus=2)],
                          {"cpu": LabelConfig("cpu", readrate=2.0)})
    seen: list[dict[int, int]] = []
    try:
        pool = EncoderPool(slow)
        done = [r for _, r, _ in pool.run(segments, load=lambda s: open(paths[s.index], "rb").read(),
                                          settings=settings, on_tick=lambda p, busy: seen.append(p), tick=0.3)]
    finally:
        registry.stop(slow)
    assert sorted(r.segment for r in done) == [0, 1]
    partial = [f for p in seen for f in p.values()]
    assert any(0 < f < 120 for f in partial), seen   # frames counted while the segment ran
    assert all(f <= 120 for f in partial)


# -- the report, metrics and timeline of a real job ---------------------------------------------------------

@pytest.fixture(scope="module")
def observed(make_clip, tmp_path_factory, ray_cluster):
    out = tmp_path_factory.mktemp("observed")
    report = encode(make_clip("long"), out / "o.mp4", preset="ultrafast", segment_seconds=4,
                    report=out / "r.json", timeline=out / "t.png")
    return report, out


def test_report_lists_every_segment_with_who_where_and_how_much(observed):
    report, out = observed
    data = json.loads((out / "r.json").read_text())
    assert data["job_id"] == report.job_id and re.fullmatch(r"[0-9a-f]{8}", data["job_id"])
    segs = data["segments"]
    assert [s["segment"] for s in segs] == list(range(5)) and sum(s["frames"] for s in segs) == 600
    names = {w["name"] for w in data["workers"]}
    for s in segs:
        assert s["attempts"] == 1 and s["failure_causes"] == []
        assert s["resource"] == "cpu" and s["encoder"].startswith("cpu:libx264") and s["actor"] in names
        assert "/" in s["node"] and s["bytes_in"] > 0 and s["bytes_out"] > 0 and s["seconds"] > 0
        assert data["started"] <= s["started"] <= data["started"] + data["wall_seconds"]
    assert [p[0] for p in data["phases"]][:2] == ["probe", "ray"] or data["phases"][0][0] == "probe"
    assert "cpu:libx264" in report.summary() and "100%" in report.summary()


def test_metrics_reach_the_nodes_exporter_tagged_by_label_and_node(observed):
    report, _ = observed
    frames, text = exported_total("ray_montage_frames_encoded", 'label="cpu"', at_least=report.frames)
    assert frames >= report.frames, "montage frames counter not exported"
    assert re.search(r'ray_montage_segments_encoded\S*\{[^}]*label="cpu"[^}]*node="[^"]+/[0-9a-f]{8}"', text)
    assert "ray_montage_segment_fps_bucket" in text and 'direction="out"' in text


def _png_pixels(path) -> np.ndarray:
    """RGB(A) pixels of a non-interlaced 8-bit PNG (what matplotlib writes), read with zlib alone."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks, ihdr = 8, [], None
    while pos < len(data):
        size = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + size]
        if kind == b"IHDR":
            ihdr = body
        elif kind == b"IDAT":
            chunks.append(body)
        pos += 12 + size
    width, height = int.from_bytes(ihdr[:4], "big"), int.from_bytes(ihdr[4:8], "big")
    channels = {2: 3, 6: 4}[ihdr[9]]
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    img = np.zeros((height, stride), dtype=np.int32)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        f, line = raw[y * (stride + 1)], np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int32)
        if f == 0:
            cur = line
        elif f == 2:
            cur = (line + prev) & 255
        else:  # sub, average, paeth: byte by byte
            cur = np.zeros(stride, dtype=np.int32)
            for x in range(stride):
                a = cur[x - channels] if x >= channels else 0
                b, c = prev[x], (prev[x - channels] if x >= channels else 0)
                if f == 1:
                    pred = a
                elif f == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[x] = (line[x] + pred) & 255
        img[y], prev = cur, cur
    return img.reshape(height, width, channels)[:, :, :3]


def _has_colour(pixels: np.ndarray, hex_colour: str, alpha: float = 0.9) -> bool:
    rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
    blended = alpha * rgb + (1 - alpha) * 255  # bars are drawn at 90 % over white
    return bool((np.abs(pixels - blended).max(axis=2) <= 3).sum() > 50)


def test_timeline_of_a_real_job_shows_each_encoder(observed):
    report, out = observed
    pixels = _png_pixels(out / "t.png")
    assert pixels.shape[1] == 1200 and pixels.shape[0] >= 250
    assert _has_colour(pixels, LABEL_COLOURS["cpu"]) and not _has_colour(pixels, FAILED_COLOUR)


def test_timeline_marks_failed_attempts(tmp_path):
    job = JobReport(source="in.mp4", output="out.mp4", codec="h264", frames=300, duration=10.0, started=1000.0,
                    wall_seconds=6.0, workers=[{"name": "encoder:vaapi:n:0"}, {"name": "encoder:cpu:n:0"}],
                    phases=[("probe", 0.0, 0.5), ("encode", 0.5, 5.5), ("join", 5.5, 6.0)])
    job.segments = [result(0, 150, "encoder:cpu:n:0", 2.0, 1000.6), result(1, 150, "encoder:cpu:n:0", 2.0, 1002.7)]
    job.failures = [FailedAttempt(1, 1, "vaapi:h264_vaapi", "encoder:vaapi:n:0", "crash", "killed", started=1000.6,
                            seconds=1.5, node="n/1", label="vaapi")]
    draw_timeline(job, str(tmp_path / "t.png"))
    pixels = _png_pixels(tmp_path / "t.png")
    assert _has_colour(pixels, FAILED_COLOUR) and _has_colour(pixels, LABEL_COLOURS["cpu"])
    job.failures = []
    draw_timeline(job, str(tmp_path / "ok.png"))
    assert not _has_colour(_png_pixels(tmp_path / "ok.png"), FAILED_COLOUR)


# -- the CLI on a terminal ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_draws_a_progress_bar_that_fits_an_80_column_terminal(make_clip, tmp_path):
    """`montage-ray encode` in an 80-column pseudo-terminal: the job id first, "starting a local Ray ..." while
    it starts, then one bar redrawn in place that never reaches the last column (a line that wraps stacks up
    at every redraw), a finished bar without busy encoders, then the summary."""
    import fcntl
    import struct
    import termios

    exe = os.path.join(os.path.dirname(sys.executable), "montage-ray")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "RAY_ADDRESS")}
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI, with an 80x24 pty as its terminal
        fcntl.ioctl(1, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        os.chdir(tmp_path)
        os.execve(exe, [exe, "encode", str(make_clip("long")), "o.mp4", "--preset", "ultrafast",
                        "--segment-seconds", "4", "--workers", "2"], env)
    out, deadline = b"", time.monotonic() + 240
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    _, status = os.waitpid(pid, 0)
    text = out.decode(errors="replace").replace("\r\n", "\n")  # the pty's line discipline adds \r to \n
    assert os.waitstatus_to_exitcode(status) == 0, text
    assert re.match(r"job [0-9a-f]{8}: \S+long.mp4 -> o.mp4\n", text), text[:200]
    assert "starting a local Ray ..." in text
    draws = [piece.split("\n")[0].replace("\x1b[2K", "") for piece in text.split("\r")[1:]]
    bars = [d for d in draws if d.startswith("[")]
    assert len(bars) >= 3 and all(len(d) <= 79 for d in draws), [d for d in draws if len(d) > 79]
    assert any("ETA" in b and "busy" in b for b in bars)
    final = bars[-1]
    assert "600/600" in final and "100%" in final and "5/5" in final and "done in" in final, final
    assert "busy" not in final and "ETA" not in final, final
    assert "wrote o.mp4" in text and (tmp_path / "o.mp4").exists()
