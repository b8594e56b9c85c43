"""EncodeOptions: every option and path checked once, before any work (table tests on real files)."""

from __future__ import annotations

import os

import pytest

from montage_ray.errors import InputError
from montage_ray.job.options import EncodeOptions


@pytest.fixture
def files(tmp_path):
    """A source, a folder to write into, and an existing file that must never be replaced."""
    (tmp_path / "in.mp4").write_bytes(b"video")
    (tmp_path / "keep.json").write_text("precious")
    (tmp_path / "sub").mkdir()
    return tmp_path


BAD = [  # (options, needle of the one-line error)
    ({"codec": "vp9"}, "unknown codec"),
    ({"quality": 52}, "quality must be"),
    ({"quality": 2.5}, "quality must be"),
    ({"quality": True}, "quality must be"),
    ({"preset": "fastest"}, "unknown preset"),
    ({"segment_seconds": 0}, "segment length"),
    ({"segment_seconds": -1.0}, "segment length"),
    ({"verify": "none"}, "verify must be"),
    ({"profile": "best"}, "unknown profile"),
    ({"workers": 0}, "workers must be at least 1"),
    ({"labels": ()}, "labels must be"),
    ({"labels": ("cpu", "")}, "labels must be"),
    ({"timeline": "t.jpg"}, "must be a .png"),
    ({"report": "missing/r.json"}, "report folder 'missing' does not exist"),
    ({"report": "sub"}, "report 'sub' is a folder"),
    ({"encoders_config": "nope.yaml"}, "does not exist"),
    # --report and --timeline never name the job's other files, and never replace one without --overwrite
    ({"report": "in.mp4"}, "report 'in.mp4' is the same file as the input"),
    ({"report": "in.mp4", "overwrite": True}, "is the same file as the input"),
    ({"report": "out.mp4"}, "report 'out.mp4' is the same file as the output"),
    ({"timeline": "out.mp4"}, "must be a .png"),
    ({"report": "r.png", "timeline": "r.png"}, "timeline 'r.png' is the same file as the report"),
    ({"report": "keep.json"}, "report 'keep.json' already exists (pass --overwrite"),
    ({"report": "./sub/../in.mp4", "overwrite": True}, "same file as the input"),
]


@pytest.mark.parametrize("changes,needle", BAD, ids=[f"{k}" for k, _ in BAD])
def test_validate_refuses(changes, needle, files, monkeypatch):
    monkeypatch.chdir(files)
    with pytest.raises(InputError) as err:
        EncodeOptions().replace(**changes).validate("in.mp4", "out.mp4")
    assert needle in str(err.value) and "\n" not in str(err.value)
    assert (files / "keep.json").read_text() == "precious" and (files / "in.mp4").read_bytes() == b"video"


def test_validate_refuses_a_link_to_the_source_as_report(files, monkeypatch):
    monkeypatch.chdir(files)
    os.symlink("in.mp4", "link.json")
    with pytest.raises(InputError, match="same file as the input"):
        EncodeOptions(report="link.json", overwrite=True).validate("in.mp4", "out.mp4")


def test_validate_resolves_paths_and_keeps_values(files, monkeypatch):
    monkeypatch.chdir(files)
    job = EncodeOptions(codec="hevc", report="keep.json", timeline="sub/t.png", overwrite=True,
                        labels=["cpu"]).validate("in.mp4", "out.mkv")
    assert job.source == str(files / "in.mp4") and job.target == str(files / "out.mkv")
    assert job.report == str(files / "keep.json") and job.timeline == str(files / "sub" / "t.png")
    assert job.container == ("matroska", "mkv") and job.options.labels == ("cpu",)


def test_options_are_frozen_and_replace_names_unknown_options():
    options = EncodeOptions()
    with pytest.raises(Exception):
        options.codec = "hevc"  # type: ignore[misc]
    with pytest.raises(InputError, match="unknown option.*colour"):
        options.replace(colour="red")
    assert options.replace(codec="hevc").codec == "hevc" and options.codec == "h264"


def test_submit_job_builds_the_same_options_and_refuses_a_bad_one_before_submitting(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "scripts" / "submit_job.py"
    spec = importlib.util.spec_from_file_location("submit_job_under_test", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)  # type: ignore[union-attr]
    script.check_encode_options(["encode", "/media/in.mp4", "/media/out.mp4", "--quality", "24"])  # fine
    script.check_encode_options(["probe", "--json"])                                             # not encode
    with pytest.raises(SystemExit) as done:
        script.check_encode_options(["encode", "/media/in.mp4", "/media/out.mp4", "--timeline", "t.jpg"])
    assert done.value.code == script.EXIT_USAGE
    assert capsys.readouterr().err.strip() == "submit_job: timeline 't.jpg' must be a .png file"
