"""Edges of one job: odd destination folders, leftovers of killed jobs, full disks, odd sources.

Every case runs the real job on the session's local Ray with real ffmpeg."""

from __future__ import annotations

import os
import shutil

import pytest

from montage_ray import encode
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
