"""Edges of one job: odd destination folders, leftovers of killed jobs, full disks, odd sources.

Every case runs the real job on the session's local Ray with real ffmpeg."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from montage_ray import encode
from montage_ray.util import workdirs
from tests import mediacheck as mc
from tests.helpers import child_pids, mount_tmpfs

pytestmark = pytest.mark.usefixtures("ray_cluster")


@pytest.mark.parametrize("folder", ["100%d %s %06d", "line\nbreak 'q'"], ids=["percent", "newline"])
def test_destination_folder_names_are_data_not_patterns(folder, make_clip, tmp_path):
    out_dir = tmp_path / folder
    out_dir.mkdir()
    src = out_dir / "in%d.mp4"
    shutil.copy(make_clip("bframes"), src)
    dst = out_dir / "out%s.mp4"
    report = encode(src, dst, preset="ultrafast", segment_seconds=2)
    assert len(report.segments) == 3
    assert mc.decoded_frames(dst) == 180 and mc.decode_errors(dst) == ""
    assert sorted(os.listdir(out_dir)) == ["in%d.mp4", "out%s.mp4"]


def _leftover(parent, prefix: str) -> str:
    """A work folder as a job killed with SIGKILL leaves it: made by a process that is gone."""
    code = ("import sys; from montage_ray.util.workdirs import make_workdir; "
            "d = make_workdir(sys.argv[1], sys.argv[2]); open(d + '/src-000000.nut', 'wb').write(b'x' * 1000); "
            "print(d)")
    done = subprocess.run([sys.executable, "-c", code, str(parent), prefix], capture_output=True, text=True,
                          check=True)
    return done.stdout.strip()


def test_next_run_removes_a_killed_jobs_folders_and_keeps_a_live_ones(make_clip, tmp_path):
    dead_job = _leftover(tmp_path, ".montage-ray-")
    dead_encode = _leftover(tempfile.gettempdir(), "montage-seg-")
    live = workdirs.make_workdir(str(tmp_path), ".montage-ray-")   # this process: a job still running
    encode(make_clip("bframes"), tmp_path / "o.mp4", preset="ultrafast", segment_seconds=2)
    assert not os.path.exists(dead_job) and not os.path.exists(dead_encode)
    assert os.path.isdir(live)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["o.mp4", os.path.basename(live)])


@pytest.fixture
def tiny_disk(tmp_path):
    """mount_tiny(size) -> a folder on a fresh tmpfs of that size (unmounted afterwards)."""
    mounted = []

    def mount_tiny(size: str):
        folder = mount_tmpfs(tmp_path / f"disk-{size}", size)
        mounted.append(folder)
        return folder

    yield mount_tiny
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)


# 64k: the cut fails ("Invalid argument" from ffmpeg); 400k: the cut fits, the encoded pieces or the join
# do not (Python's ENOSPC, or ffmpeg's).
@pytest.mark.parametrize("size", ["64k", "400k", "700k"])
def test_a_full_disk_is_one_line_exit_4_and_leaves_nothing(size, tiny_disk, make_clip):
    from montage_ray.errors import FFmpegError

    folder = tiny_disk(size)
    with pytest.raises(FFmpegError) as err:
        encode(make_clip("bframes"), folder / "o.mp4", preset="ultrafast", segment_seconds=2)
    message = str(err.value)
    assert err.value.exit_code == 4 and "\n" not in message
    assert "no space left" in message and repr(str(folder)) in message, message
    assert os.listdir(folder) == []


def test_cli_says_disk_full_in_one_line(tiny_disk, make_clip, tmp_path):
    from tests.test_cli import assert_one_line_error, cli

    folder = tiny_disk("64k")
    done = cli("encode", str(make_clip("bframes")), str(folder / "o.mp4"), "--preset", "ultrafast", cwd=tmp_path)
    assert_one_line_error(done, "no space left", str(folder))
    assert done.returncode == 4 and os.listdir(folder) == []


@pytest.fixture(scope="module")
def uneven_webm(tmp_path_factory):
    """VP8/Vorbis WebM, 30 fps container clock, frames mostly 1/6 s apart and 1/30 s at the end: the
    typical gap (1/6 s) is not how long the last frame lasts (its block duration, 1/30 s)."""
    out = tmp_path_factory.mktemp("webm") / "uneven.webm"
    subprocess.run([mc.FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30:duration=12",
                    "-f", "lavfi", "-i", "sine=duration=12",
                    "-vf", r"select='not(mod(n\,5))+gt(n\,330)',setpts='N/6/TB'", "-fps_mode", "vfr", "-r", "30",
                    "-c:v", "libvpx", "-b:v", "300k", "-g", "30", "-c:a", "libvorbis", str(out)], check=True)
    return out


def test_uneven_vp8_vorbis_webm_joins_and_passes_verification(uneven_webm, tmp_path):
    dst = tmp_path / "o.mp4"
    report = encode(uneven_webm, dst, preset="ultrafast", segment_seconds=2)
    assert len(report.segments) > 1
    assert mc.decoded_frames(dst) == mc.decoded_frames(uneven_webm) and mc.decode_errors(dst) == ""
    a, b = mc.video_times(uneven_webm), mc.video_times(dst)
    np.testing.assert_allclose(b - b[0], a - a[0], atol=1e-3)


def test_odd_sized_yuv444p_source_is_padded_before_dispatch_and_exact(tmp_path):
    src = tmp_path / "odd444.mp4"
    subprocess.run([mc.FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=640x360:rate=30:duration=6",
                    "-vf", "scale=641:361,format=yuv444p", "-c:v", "libx264", "-g", "30", str(src)], check=True)
    dst = tmp_path / "o.mp4"
    report = encode(src, dst, preset="ultrafast", segment_seconds=2)
    assert report.failures == [] and len(report.segments) == 3
    assert any("641x361 padded to 642x362" in n for n in report.notes), report.notes
    assert mc.decoded_frames(dst) == 180 and mc.decode_errors(dst) == ""
    assert [(s["width"], s["height"]) for s in mc.streams(dst) if s["codec_type"] == "video"] == [(642, 362)]


def test_quiet_run_prints_nothing_not_even_rays_token_notice(make_clip, tmp_path):
    from tests.test_cli import cli

    done = cli("encode", str(make_clip("bframes")), "o.mp4", "--quiet", "--preset", "ultrafast", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""
    # --verbose logs the same either way: it joins the session's Ray instead of starting a private one (a
    # private Ray's start is what the quiet run above is about)
    import ray

    verbose = cli("encode", str(make_clip("bframes")), "v.mp4", "--verbose", "--preset", "ultrafast", "--address",
                  ray.get_runtime_context().gcs_address, cwd=tmp_path)
    assert verbose.returncode == 0 and "montage_ray" in verbose.stderr, verbose.stderr


def test_sigterm_exits_143_with_one_line_and_leaves_nothing(make_clip, tmp_path):
    env = dict(os.environ, RAY_ADDRESS="")
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "montage_ray", "encode", str(make_clip("long")),
                             str(out / "o.mp4"), "--preset", "veryslow", "--segment-seconds", "2"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # SIGTERM while segments are being encoded (the progress printer's "encoding ..." line, and a moment): the
    # driver waits in Ray's calls then, which turn a signal handler's exception into a KeyboardInterrupt
    for line in proc.stdout:
        if line.startswith("encoding "):
            break
    else:
        pytest.fail(proc.stderr.read())
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == ["montage-ray: terminated (SIGTERM); nothing was written"], err
    assert [n for n in os.listdir(out) if n != ".montage-ray.cache"] == []  # (verified pieces are kept for a re-run)


def test_a_full_tmpdir_is_one_line_that_names_it(tiny_disk, make_clip, tmp_path):
    from tests.test_cli import assert_one_line_error

    tiny = tiny_disk("300k")  # the encoders' temporary files (TMPDIR) fill it; the output's folder has room
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, RAY_ADDRESS="", TMPDIR=str(tiny), RAY_TMPDIR=tempfile.gettempdir())
    done = subprocess.run([sys.executable, "-m", "montage_ray", "encode", str(make_clip("long")), str(out / "o.mp4"),
                           "--preset", "ultrafast", "--segment-seconds", "4", "--quiet"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert_one_line_error(done, "no space left", repr(str(tiny)), "TMPDIR")
    assert done.returncode == 4 and os.listdir(out) == [] and os.listdir(tiny) == []


def _ray_children(pid: int) -> list[str]:
    """The names of the processes that ``pid`` started (Ray's gcs_server and raylet, ffmpeg, ...)."""
    names = []
    for child in child_pids(pid):
        try:
            with open(f"/proc/{child}/comm") as fh:
                names.append(fh.read().strip())
        except OSError:
            continue
    return names


@pytest.mark.parametrize("phase", ["ray-start", "after-ray"])
def test_sigterm_in_every_phase_exits_143_with_one_line_and_leaves_nothing(phase, make_clip, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "montage_ray", "encode", str(make_clip("long")), str(out / "o.mp4"),
                             "--preset", "ultrafast", "--segment-seconds", "1"], cwd=tmp_path,
                            env=dict(os.environ, RAY_ADDRESS=""), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        ray_seen = False
        while proc.poll() is None:
            ray = {"gcs_server", "raylet"} & set(_ray_children(proc.pid))
            if phase == "ray-start" and ray:
                break  # Ray is starting (its GCS is up; ray.init has not returned)
            if phase == "after-ray" and ray_seen and not ray:
                break  # Ray was stopped: the join's end and the verification
            ray_seen = ray_seen or bool(ray)
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == ["montage-ray: terminated (SIGTERM); nothing was written"], err
    assert [n for n in os.listdir(out) if n != ".montage-ray.cache"] == []  # (verified pieces are kept for a re-run)


@pytest.fixture(scope="module")
def cover_art_source(tmp_path_factory):
    """MP4: main video, audio, a second (small) video stream and PNG cover art."""
    folder = tmp_path_factory.mktemp("cover")
    cover = folder / "cover.png"
    subprocess.run([mc.FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=red:size=64x64", "-frames:v", "1",
                    str(cover)], check=True)
    src = folder / "covered.mp4"
    subprocess.run([mc.FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30:duration=6",
                    "-f", "lavfi", "-i", "sine=duration=6", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=30:duration=6",
                    "-i", str(cover), "-map", "0", "-map", "1", "-map", "2", "-map", "3",
                    "-c:v:0", "libx264", "-g", "30", "-c:v:1", "libx264", "-c:v:2", "png",
                    "-disposition:v:2", "attached_pic", "-c:a", "aac", str(src)], check=True)
    return src


@pytest.mark.parametrize("ext", [".mp4", ".mkv"])
def test_cover_art_is_kept_and_every_dropped_stream_is_noted(ext, cover_art_source, tmp_path):
    dst = tmp_path / f"o{ext}"
    report = encode(cover_art_source, dst, preset="ultrafast", segment_seconds=2)
    streams = mc.streams(dst)
    pictures = [s for s in streams if s["codec_type"] == "video" and s.get("disposition", {}).get("attached_pic")]
    assert [p["codec_name"] for p in pictures] == ["png"], streams
    assert sum(1 for s in streams if s["codec_type"] == "video" and not s["disposition"].get("attached_pic")) == 1
    assert any("video stream 2 (h264) dropped" in n for n in report.notes), report.notes
    assert mc.decoded_frames(dst) == 180
