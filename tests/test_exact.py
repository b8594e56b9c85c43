"""Exact or refused, on the oldest, Debian's and the newest supported ffmpeg: a property test over generated clips.

Property: a job that exits 0 wrote an output whose frame count and last frame's time (from its first) equal the
source's, within one frame; any other job ended with a documented error (a MontageError: exit 2, 4, 5 or 7),
never a crash. Both files are counted here by decoding them with the system's ffprobe (every frame's time),
not by anything montage-ray reports.

Each ffmpeg version runs a few clips drawn from a seeded generator (tests/genclips.py: MP4/MKV/WebM, H.264
with and without B-frames and open GOPs, VP8/VP9, variable frame rate, dropped frames, an odd last frame, odd
start times, 23.976 fps, 1-5 frame clips, AAC/Vorbis/Opus audio longer or shorter than the video, into .mp4 or
.mkv, at ultrafast (no B-frames) or medium (B-frames)) and the fixed clips below, which once broke it, each version's
in one driver on the session's Ray (tests/version_job.py --cases --address). The seed is the day's date unless ``MONTAGE_EXACT_SEED``
names one (``MONTAGE_EXACT_CASES``: clips drawn per version, default 2); a failure prints it.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests import genclips
from tests import mediacheck as mc
from tests.genclips import Kind
from tests.helpers import run_bounded

ROOT = Path(__file__).resolve().parent.parent
SEED = int(os.environ.get("MONTAGE_EXACT_SEED") or datetime.date.today().strftime("%Y%m%d"))
DRAWN = int(os.environ.get("MONTAGE_EXACT_CASES", "2"))

#: Exit codes a refused job may end with (README: 2 bad input, 4 ffmpeg failure, 5 encoder failure, 7 failed
#: verification); anything else, or a traceback, breaks the property.
REFUSALS = {2, 4, 5, 7}


@dataclass(frozen=True)
class Case:
    kind: Kind
    preset: str = "ultrafast"
    must_be_exact: bool = False    # a fixed case: refusing it is a failure too

    @property
    def name(self) -> str:
        return f"{self.kind.name}-{self.preset}"


#: Clips that once broke exactness, each on the versions it broke on (and the newest), and why.
FIXED = {
    # 4.2.2: the encoded pieces' last packet had no duration, so the joined MP4's edit list ended before its
    # last frame (B-frames: the last frame shown is not the last decoded): 89 packets, 88 frames, exit 0
    "vfr-bframes-last-frame": (Case(Kind("mp4", "h264", "vfr", 89, 0.517), "medium", True),
                               ("4.2.2", "5.1", "9.0.2")),
    # 4.2.2: a one-frame clip came out with an edit list of 0 s and no frame shown, exit 0
    "one-frame": (Case(Kind("mp4", "h264", "cfr", 1), "ultrafast", True), ("4.2.2", "9.0.2")),
    # 4.2.2: a piece's own edit list ended exactly on its last frame (a millisecond clock), so the join's
    # demuxer dropped that frame: 2 frames in, 1 out
    "two-frames-odd-last": (Case(Kind("mp4", "h264-bf", "oddlast", 2), "medium", True), ("4.2.2",)),
    # issue 21's kind: VFR VP8 WebM with Vorbis, a frame short on 4.2.2
    "vp8-vorbis-vfr-webm": (Case(Kind("webm", "vp8", "vfr", 100, 0.0, "vorbis", 0.0), "medium", True),
                            ("4.2.2", "9.0.2")),
    # 4.2.2: Opus into MP4 failed at the join, after every segment was encoded (exit 4): now AAC from the start
    "opus-into-mp4": (Case(Kind("webm", "vp9", "vfr", 40, 1.234, "opus", -0.4), "ultrafast", True), ("4.2.2",)),
    # every version: a VFR Matroska source says 1000 fps, and the duration check allowed 1.5 ms (exit 7)
    "vfr-mkv-duration": (Case(Kind("mkv", "vp9", "vfr", 60, 0.517, "aac", 0.7, ".mkv"), "ultrafast", True),
                         ("4.2.2", "5.1")),
}

VERSIONS = ("4.2.2", "5.1", "9.0.2")


def drawn(version: str) -> list[Case]:
    """The clips drawn for ``version`` from the seed."""
    rng = random.Random(f"{SEED}-{version}")
    return [Case(genclips.draw(rng), rng.choice(["ultrafast", "medium"])) for _ in range(DRAWN)]


def cases_for(version: str) -> list[Case]:
    return [case for case, versions in FIXED.values() if version in versions] + drawn(version)


def shown(path: Path) -> tuple[int, float, float]:
    """(frames decoded, the last one's time from the first, the typical gap) of the first video stream, by
    decoding it (the system's ffprobe)."""
    frames = mc.ffprobe(path, "-select_streams", "v:0", "-show_entries", "frame=best_effort_timestamp_time")["frames"]
    times = np.sort(np.array([float(f["best_effort_timestamp_time"]) for f in frames
                              if f.get("best_effort_timestamp_time") not in (None, "N/A")]))
    if times.size == 0:
        return len(frames), 0.0, 0.0
    gaps = np.diff(times)
    return len(frames), float(times[-1] - times[0]), float(np.median(gaps)) if gaps.size else 0.0


@pytest.mark.parametrize("version", VERSIONS)
def test_exit_0_means_every_frame_and_the_last_frame_where_the_source_has_it(version, ffmpeg_builds, session_ray,
                                                                             tmp_path):
    env = dict(os.environ)
    if version == "5.1":
        env["MONTAGE_FFMPEG"] = shutil.which("ffmpeg") or "ffmpeg"
    else:
        env["MONTAGE_FFMPEG"] = str(ffmpeg_builds[version])
    if version == "9.0.2":
        env["MONTAGE_FFPROBE"] = str(ffmpeg_builds["ffprobe-8.0"])
    cases = cases_for(version)
    jobs = []
    for n, case in enumerate(cases):
        src = tmp_path / f"src{n}.{case.kind.container}"
        genclips.make(case.kind, str(src), mc.FFMPEG)
        jobs.append({"name": f"{n}-{case.name}", "src": str(src), "dst": str(tmp_path / f"out{n}{case.kind.output}"),
                     "seconds": 1.0, "preset": case.preset})
    (tmp_path / "cases.json").write_text(json.dumps(jobs))
    # one driver per version on the session's Ray (its actors get this version's ffmpeg in their environment)
    done = run_bounded([sys.executable, str(ROOT / "tests" / "version_job.py"), "--cases", "--address", session_ray,
                        str(tmp_path / "cases.json")], 240, env=env, what=f"the jobs (seed {SEED})")
    assert done.returncode == 0, f"seed {SEED}: {done.stderr[-3000:]}"
    results = json.loads(done.stdout.strip().splitlines()[-1])
    failures = {}
    for case, job in zip(cases, jobs):
        result = results[job["name"]]
        if "crash" in result:
            failures[job["name"]] = "crashed: " + result["crash"]
        elif not result["ok"]:
            if case.must_be_exact or result["code"] not in REFUSALS:
                failures[job["name"]] = f"refused (exit {result['code']}): {result['error']}"
        else:
            frames, span, gap = shown(Path(job["src"]))
            out_frames, out_span, _ = shown(Path(job["dst"]))
            if out_frames != frames or abs(out_span - span) > max(gap, 0.001):
                failures[job["name"]] = (f"exit 0 with {out_frames} frames (source {frames}), the last at {out_span:.3f} s "
                                       f"from the first (source {span:.3f} s)")
    assert not failures, (f"seed {SEED} (MONTAGE_EXACT_SEED={SEED} repeats it) on {version}: "
                          + json.dumps({name: {**case.kind.to_json(), "preset": case.preset, "why": failures[name]}
                                        for case, name in ((c, j["name"]) for c, j in zip(cases, jobs))
                                        if name in failures}, indent=1))
