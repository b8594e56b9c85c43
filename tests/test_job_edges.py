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
