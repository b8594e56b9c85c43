"""Edges of one job: odd destination folders, leftovers of killed jobs, full disks, odd sources.

Every case runs the real job on the session's local Ray with real ffmpeg."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from montage_ray import encode, workdirs
from tests import mediacheck as mc

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
    code = ("import sys; from montage_ray.workdirs import make_workdir; "
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
        folder = tmp_path / f"disk-{size}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'not permitted'}): needs root")
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
