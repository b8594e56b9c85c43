"""The command line: bad input gets one clear line, a non-zero exit and no output; odd names work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import mediacheck as mc


def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_ADDRESS="")  # never join a cluster by accident
    return subprocess.run([sys.executable, "-m", "montage_ray", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=env)


def assert_one_line_error(done: subprocess.CompletedProcess, *needles: str) -> None:
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("montage-ray: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert "Traceback" not in done.stderr


def _unknown_codec_clip(make_clip, tmp_path: Path) -> Path:
    data = bytearray(make_clip("mpeg4").read_bytes())
    for tag in (b"FMP4", b"fmp4"):
        data = data.replace(tag, b"ZZZZ")
    out = tmp_path / "unknown.avi"
    out.write_bytes(bytes(data))
    return out


def _truncated(make_clip, tmp_path: Path, faststart: bool) -> Path:
    full = make_clip("long")
    if faststart:
        moved = tmp_path / "fs.mp4"
        subprocess.run([mc.FFMPEG, "-v", "error", "-y", "-i", str(full), "-c", "copy", "-movflags", "+faststart",
                        str(moved)], check=True)
        full = moved
    data = full.read_bytes()
    out = tmp_path / f"trunc-{faststart}.mp4"
    out.write_bytes(data[: len(data) // 2])
    return out


BAD_INPUTS = {
    "missing": (lambda mk, tmp: tmp / "nope.mp4", ["does not exist"]),
    "empty": (lambda mk, tmp: _file(tmp / "empty.mp4", b""), ["empty"]),
    "text": (lambda mk, tmp: _file(tmp / "notes.mp4", b"hello\n" * 100), ["cannot be read as video"]),
    "truncated-moov-at-end": (lambda mk, tmp: _truncated(mk, tmp, False), ["cannot be read as video"]),
    "truncated-faststart": (lambda mk, tmp: _truncated(mk, tmp, True), ["truncated"]),
    "audio-only": (lambda mk, tmp: _audio_only(tmp), ["no video stream"]),
    "unknown-codec": (lambda mk, tmp: _unknown_codec_clip(mk, tmp), ["codec"]),
    "folder": (lambda mk, tmp: tmp, ["folder"]),
    "concat-protocol": (lambda mk, tmp: "concat:a.mp4|b.mp4", ["not a local file"]),
    "http": (lambda mk, tmp: "http://127.0.0.1:9/x.mp4", ["not a local file"]),
}


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _audio_only(tmp: Path) -> Path:
    out = tmp / "audio.m4a"
    subprocess.run([mc.FFMPEG, "-v", "error", "-y", "-f", "lavfi", "-i", "sine=duration=1", str(out)], check=True)
    return out


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_is_one_line_and_writes_nothing(case, make_clip, tmp_path):
    make, needles = BAD_INPUTS[case]
    src = make(make_clip, tmp_path)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    done = cli("encode", str(src), str(out_dir / "o.mp4"), cwd=tmp_path)
    assert_one_line_error(done, *needles)
    assert done.returncode == 2
    assert list(out_dir.iterdir()) == []
    if case != "truncated-faststart":  # (found by the packet scan, which runs while Ray starts)
        assert "starting a local Ray" not in done.stdout + done.stderr  # refused before a Ray was started


def test_a_local_ray_that_cannot_start_is_one_line_and_writes_nothing(make_clip, tmp_path):
    """Ray's own failures to start (here a RAY_TMPDIR that does not exist; on a machine too busy, its node
    timing out) are one line, exit 6, not Ray's traceback."""
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, RAY_ADDRESS="", RAY_TMPDIR=str(tmp_path / "no-such-folder"))
    done = subprocess.run([sys.executable, "-m", "montage_ray", "encode", str(make_clip("noaudio")),
                           str(out / "o.mp4")], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert_one_line_error(done, "a local Ray could not start", "no-such-folder", "--address")
    assert done.returncode == 6 and list(out.iterdir()) == []


def test_existing_destination_needs_overwrite(make_clip, tmp_path):
    dst = tmp_path / "keep.mp4"
    dst.write_bytes(b"precious")
    done = cli("encode", str(make_clip("bframes")), str(dst), cwd=tmp_path)
    assert_one_line_error(done, "already exists", "--overwrite")
    assert dst.read_bytes() == b"precious"


@pytest.mark.parametrize("dst,needle", [("missing/o.mp4", "does not exist"), ("o.avi", "cannot write")])
def test_bad_destination(dst, needle, make_clip, tmp_path):
    done = cli("encode", str(make_clip("bframes")), dst, cwd=tmp_path)
    assert_one_line_error(done, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("args,needle", [(["--quality", "99"], "quality"),
                                         (["--segment-seconds", "0"], "segment length")])
def test_bad_options(args, needle, make_clip, tmp_path):
    done = cli("encode", str(make_clip("bframes")), "o.mp4", *args, cwd=tmp_path)
    assert_one_line_error(done, needle)
    assert not (tmp_path / "o.mp4").exists()


def test_odd_file_names_work_and_overwrite_replaces(make_clip, tmp_path):
    """A leading '-', quotes, spaces, unicode and a protocol-looking name are just names."""
    src = tmp_path / "-x 'q\" ünï concat:a|b.mp4"
    shutil.copy(make_clip("bframes"), src)
    dst = tmp_path / "-out é.mp4"
    dst.write_bytes(b"old")
    report = tmp_path / "report.json"
    done = cli("encode", "./" + src.name, "./" + dst.name, "--overwrite", "--preset", "ultrafast",
               "--segment-seconds", "2", "--report", str(report), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout
    assert mc.decoded_frames(dst) == 180 and mc.decode_errors(dst) == ""
    data = json.loads(report.read_text())
    assert data["frames"] == 180 and len(data["segments"]) == 3
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".montage-ray-")]
    assert leftovers == []


@pytest.mark.parametrize("flag,name", [("--report", "src"), ("--report", "keep.json"), ("--timeline", "keep.png"),
                                       ("--report", "dst")])
def test_report_and_timeline_never_replace_a_file(flag, name, make_clip, tmp_path):
    """`--report in.mp4` once turned the source into JSON and exited 0; an existing file needs --overwrite,
    and the source or destination is never one of them, checked before any work."""
    src = tmp_path / "in.mp4"
    shutil.copy(make_clip("bframes"), src)
    before = src.read_bytes()
    (tmp_path / "keep.json").write_text("precious")
    (tmp_path / "keep.png").write_text("precious")
    target = {"src": "in.mp4", "dst": "o.mp4"}.get(name, name)
    done = cli("encode", "in.mp4", "o.mp4", flag, target, "--preset", "ultrafast", cwd=tmp_path)
    assert_one_line_error(done, "same file" if name in ("src", "dst") else "already exists")
    assert done.returncode == 2
    assert src.read_bytes() == before and not (tmp_path / "o.mp4").exists()
    assert (tmp_path / "keep.json").read_text() == "precious" and (tmp_path / "keep.png").read_text() == "precious"


@pytest.mark.parametrize("args,needle", [
    (["--priority", "1.5"], "argument --priority: must be a whole number from -100 to 100, not '1.5'"),
    (["--codec", "vp9"], "argument --codec: invalid choice: 'vp9'"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_a_usage_error_is_one_line_not_the_whole_usage(args, needle, tmp_path):
    done = cli("encode", "in.mp4", "o.mp4", *args, cwd=tmp_path, timeout=60)
    assert_one_line_error(done, needle, "--help`)")
    assert done.returncode == 2 and done.stdout == ""


def test_h265_is_hevc():
    from montage_ray._cli import build_parser
    from montage_ray.job.options import EncodeOptions

    args = build_parser().parse_args(["encode", "a.mp4", "b.mp4", "--codec", "h265"])
    assert args.codec == "hevc"
    assert EncodeOptions(codec="H265").codec == "hevc" and EncodeOptions().replace(codec="h265").codec == "hevc"


def test_encode_help_describes_the_cuts_and_the_priorities(tmp_path):
    done = cli("encode", "--help", cwd=tmp_path, timeout=60)
    text = " ".join(done.stdout.split())
    assert "GOP-aligned" not in text and "at any frame" in text
    assert "two segments" in text and "never stopped" in text and "h265" in text


@pytest.mark.parametrize("command,address,env,needle", [
    ("encode", "127.0.0.1", "", "--address 127.0.0.1 has no port: give HOST:PORT"),
    ("status", "127.0.0.1", "", "--address 127.0.0.1 has no port: give HOST:PORT"),
    ("encode", "", "http://127.0.0.1:8265", "RAY_ADDRESS=http://127.0.0.1:8265 is the address of Ray's job API"),
    ("status", "https://head:8265", "", "RAY_API_SERVER_ADDRESS"),
    ("status", "redis://head:6379", "", "does not know the scheme 'redis://'"),
])
def test_an_address_that_cannot_work_is_one_line_before_anything_starts(command, address, env, needle, make_clip,
                                                                        tmp_path):
    args = ["encode", str(make_clip("bframes")), "o.mp4"] if command == "encode" else ["status"]
    if address:
        args += ["--address", address]
    done = subprocess.run([sys.executable, "-m", "montage_ray", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, RAY_ADDRESS=env))
    assert_one_line_error(done, needle)
    assert done.returncode == 2 and not (tmp_path / "o.mp4").exists()
