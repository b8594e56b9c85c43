"""Work folders: a killed job's folder is removed by the next run; a live or foreign one never is."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from montage_ray.util import workdirs


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _folder(parent: Path, name: str, record: dict | None) -> Path:
    path = parent / name
    path.mkdir()
    (path / "piece.nut").write_bytes(b"x" * 100)
    if record is not None:
        (path / workdirs.OWNER_FILE).write_text(json.dumps(record))
    return path


def _me(**changes) -> dict:
    record = workdirs.owner_record()
    record.update(changes)
    return record


CASES = {
    "owner process gone": (lambda: _me(pid=_dead_pid(), start="1"), True),
    "pid reused by another process": (lambda: _me(start="1"), True),
    "made before the last reboot": (lambda: _me(boot_id="00000000-dead-beef-0000-000000000000"), True),
    "owner alive (this process)": (lambda: _me(), False),
    "another host": (lambda: _me(pid=_dead_pid(), host="elsewhere"), False),
    "another pid namespace": (lambda: _me(pid=_dead_pid(), pid_ns="pid:[1]"), False),
    "no owner file (being made, or not ours)": (lambda: None, False),
    "owner file unreadable": (lambda: "not json", False),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sweep_removes_only_folders_whose_owner_is_gone(case, tmp_path: Path):
    make, removed = CASES[case]
    record = make()
    path = _folder(tmp_path, ".montage-ray-abc", record if isinstance(record, dict) or record is None else None)
    if isinstance(record, str):
        (path / workdirs.OWNER_FILE).write_text(record)
    assert workdirs.sweep(str(tmp_path), ".montage-ray-") == ([str(path)] if removed else [])
    assert path.exists() is not removed


def test_sweep_never_follows_links_or_touches_other_names(tmp_path: Path):
    target = _folder(tmp_path, "precious", _me(pid=_dead_pid(), start="1"))
    os.symlink(target, tmp_path / ".montage-ray-link")
    other = _folder(tmp_path, "montage-ray-not-hidden", _me(pid=_dead_pid(), start="1"))
    assert workdirs.sweep(str(tmp_path), ".montage-ray-") == []
    assert (target / "piece.nut").exists() and other.exists()


def test_make_workdir_is_private_and_names_its_owner(tmp_path: Path):
    path = workdirs.make_workdir(str(tmp_path), ".montage-ray-")
    assert os.stat(path).st_mode & 0o777 == 0o700
    record = json.loads(Path(path, workdirs.OWNER_FILE).read_text())
    assert record["pid"] == os.getpid() and record["start"] == workdirs.process_start(os.getpid())
    assert workdirs.sweep(str(tmp_path), ".montage-ray-") == [] and os.path.isdir(path)


def test_make_private_tightens_our_token_file_and_leaves_links_alone(tmp_path: Path):
    token = tmp_path / "auth_token"
    token.write_text("secret\n")
    os.chmod(token, 0o644)
    assert workdirs.make_private(str(token)) and os.stat(token).st_mode & 0o777 == 0o600
    link = tmp_path / "link"
    other = tmp_path / "other"
    other.write_text("x")
    os.chmod(other, 0o644)
    os.symlink(other, link)
    assert not workdirs.make_private(str(link)) and os.stat(other).st_mode & 0o777 == 0o644


def test_a_job_leaves_rays_token_file_private(make_clip, tmp_path: Path, monkeypatch):
    """encode() with no Ray running starts a local one, whose token file Ray writes 0644."""
    from tests.test_cli import cli

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    done = cli("encode", str(make_clip("bframes")), "o.mp4", "--quiet", "--preset", "ultrafast", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    token = home / ".ray" / "auth_token"
    assert token.exists() and os.stat(token).st_mode & 0o777 == 0o600
