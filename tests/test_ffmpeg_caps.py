"""What an ffmpeg can do is asked once per binary and kept on disk: the next process (an encoder actor, a
driver) reads the answers instead of starting nine ffmpeg processes; a binary changed in place, a damaged or
unwritable cache folder only cost the questions again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# One fresh process: the capabilities it got and the ffmpeg processes it started to get them.
_ASK = """
import json, sys
from montage_ray.ffmpeg import tool
from montage_ray.ffmpeg.caps import ffmpeg_caps, ffmpeg_build
with tool.watch() as started:
    caps = ffmpeg_caps(sys.argv[1])
    build = ffmpeg_build(sys.argv[1])
print(json.dumps({"started": len(started), "caps": caps.to_json(), "build": build, "bsfs": sorted(caps.bsfs),
                  "options": len(caps.options), "filters": sorted(caps.filters)}))
"""


def _ask(ffmpeg: Path, cache: Path | str) -> dict:
    env = dict(os.environ, MONTAGE_RAY_CAPS_CACHE=str(cache))
    done = subprocess.run([sys.executable, "-c", _ASK, str(ffmpeg)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def _own_ffmpeg(tmp_path: Path) -> Path:
    """A copy of the system's ffmpeg at a path of this test's own (its answers are this test's alone)."""
    copy = tmp_path / "bin" / "ffmpeg"
    copy.parent.mkdir()
    shutil.copy2(shutil.which(os.environ.get("MONTAGE_FFMPEG", "ffmpeg")), copy)
    return copy


def test_the_next_process_reads_the_answers_and_asks_nothing(tmp_path):
    ffmpeg, cache = _own_ffmpeg(tmp_path), tmp_path / "caps"
    first = _ask(ffmpeg, cache)
    assert first["started"] >= 7   # -version, -h full, -bsfs, -filters, three muxers' help, a real frame
    assert first["options"] > 100 and "dump_extra" in first["bsfs"]
    assert len(list(cache.glob("*.json"))) == 1 and not list(cache.glob(".*"))   # whole, no temporary left
    second = _ask(ffmpeg, cache)
    assert second["started"] == 0
    assert second == {**first, "started": 0}   # the same answers, to the last filter


def test_a_changed_binary_or_a_damaged_answer_is_asked_again(tmp_path):
    ffmpeg, cache = _own_ffmpeg(tmp_path), tmp_path / "caps"
    first = _ask(ffmpeg, cache)
    (kept,) = cache.glob("*.json")
    kept.write_text("{not json", encoding="utf-8")
    again = _ask(ffmpeg, cache)
    assert again["started"] >= 7 and again == {**first, "started": again["started"]}
    assert json.loads(kept.read_text(encoding="utf-8"))["version"] == first["caps"]["version"]   # written anew
    # the binary replaced in place (an upgrade): its old answers are not read
    stat = ffmpeg.stat()
    os.utime(ffmpeg, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert _ask(ffmpeg, cache)["started"] >= 7
    assert len(list(cache.glob("*.json"))) == 2


def test_a_cache_that_cannot_be_written_or_is_off_only_costs_the_questions(tmp_path):
    ffmpeg = _own_ffmpeg(tmp_path)
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder\n", encoding="utf-8")
    for cache in (blocked / "caps", "off"):
        first, second = _ask(ffmpeg, cache), _ask(ffmpeg, cache)
        assert first["started"] >= 7 and second["started"] >= 7 and first == second
    assert blocked.read_text(encoding="utf-8") == "not a folder\n"
