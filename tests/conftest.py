"""Shared fixtures: real clips made once per session with ffmpeg's lavfi sources, and one local Ray.

Clips are small (320x240 or so, a few seconds) so the whole suite stays quick on two cores, and encodes use
short segments so that every clip is really cut and joined.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FFMPEG = os.environ.get("MONTAGE_FFMPEG", "ffmpeg")
ROOT = Path(__file__).resolve().parent.parent

V = ["-f", "lavfi", "-i"]
X264 = ["-c:v", "libx264", "-preset", "veryfast"]
AAC = ["-c:a", "aac", "-b:a", "96k"]


def _testsrc(seconds: float, size: str = "320x240", rate: str = "30") -> list[str]:
    return V + [f"testsrc2=size={size}:rate={rate}:duration={seconds}"]


def _sine(seconds: float, freq: int = 440, rate: int = 48000) -> list[str]:
    return V + [f"sine=frequency={freq}:sample_rate={rate}:duration={seconds}"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def clip_recipes(tmp: Path) -> dict[str, tuple]:
    """name -> (file name, ffmpeg arguments after the global options[, arguments of a copy pass])."""
    srt = _write(tmp / "subs.srt", "1\n00:00:00,500 --> 00:00:02,000\nHello\n\n"
                                   "2\n00:00:03,000 --> 00:00:05,000\nWorld\n")
    chapters = _write(tmp / "chapters.txt", ";FFMETADATA1\ntitle=montage test\n"
                      "[CHAPTER]\nTIMEBASE=1/1000\nSTART=0\nEND=3000\ntitle=One\n"
                      "[CHAPTER]\nTIMEBASE=1/1000\nSTART=3000\nEND=6000\ntitle=Two\n")
    return {
        "bframes": ("bframes.mp4", _testsrc(6) + _sine(6) + X264 + ["-bf", "3", "-g", "30"] + AAC),
        "opengop": ("opengop.mp4", _testsrc(6) + _sine(6) + X264 + ["-bf", "3", "-x264-params",
                                                                      "open_gop=1:keyint=30"] + AAC),
        "vfr": ("vfr.mp4", _testsrc(6) + _sine(6) + ["-vf", "select='lt(mod(n\\,10)\\,7)'",
                                                        "-fps_mode", "vfr", "-g", "20"] + X264 + AAC),
        "noaudio": ("noaudio.mp4", _testsrc(6) + X264 + ["-g", "30"]),
        "twoaudio": ("twoaudio.mp4", _testsrc(6) + _sine(6, 440) + _sine(6, 880, 44100)
                     + ["-map", "0:v", "-map", "1:a", "-map", "2:a", "-g", "30"] + X264 + AAC
                     + ["-metadata:s:a:0", "language=eng", "-metadata:s:a:1", "language=fra"]),
        "odd": ("odd.mp4", _testsrc(6, size="638x358") + _sine(6) + X264 + ["-g", "30", "-pix_fmt",
                                                                               "yuv420p"] + AAC),
        "startoffset": ("startoffset.ts", _testsrc(6) + _sine(6) + X264 + ["-g", "30"] + AAC
                        + ["-output_ts_offset", "10"]),
        # ffmpeg 5.1 turns the rotate tag into a display matrix only on stream copy: see make_clip
        "rotation": ("rotation.mp4", _testsrc(6) + _sine(6) + X264 + ["-g", "30"] + AAC,
                     ["-c", "copy", "-metadata:s:v:0", "rotate=90"]),
        "ntsc": ("ntsc.mp4", _testsrc(6, rate="30000/1001") + _sine(6) + X264 + ["-g", "15"] + AAC),
        "mpeg4": ("mpeg4.avi", _testsrc(6) + _sine(6, rate=44100) + ["-c:v", "mpeg4", "-bf", "2", "-g", "30",
                                                                     "-flags", "+cgop", "-sc_threshold", "1000000000",
                                                                     "-q:v", "5", "-c:a", "pcm_s16le"]),
        "vp8": ("vp8.webm", _testsrc(6) + _sine(6) + ["-c:v", "libvpx", "-b:v", "400k", "-g", "30",
                                                       "-c:a", "libopus"]),
        "mkvsubs": ("mkvsubs.mkv", _testsrc(6) + _sine(6) + ["-i", str(srt), "-i", str(chapters),
                    "-map", "0:v", "-map", "1:a", "-map", "2:s", "-map_metadata", "3", "-map_chapters", "3",
                    "-g", "30"] + X264 + AAC + ["-c:s", "srt", "-metadata:s:s:0", "language=eng"]),
        "singlekey": ("singlekey.mp4", _testsrc(6) + _sine(6) + X264 + ["-g", "100000", "-sc_threshold", "0"]
                      + AAC),
        "allintra": ("allintra.mp4", _testsrc(6) + X264 + ["-g", "1"]),
        "meta": ("meta.mp4", _testsrc(6) + _sine(6) + ["-i", str(chapters), "-map", "0:v", "-map", "1:a",
                 "-map_chapters", "2", "-vf", "setsar=4/3", "-color_primaries", "bt709", "-color_trc",
                 "bt709", "-colorspace", "bt709", "-color_range", "tv", "-g", "30"] + X264 + AAC),
        "tenbit": ("tenbit.mkv", _testsrc(4) + _sine(4) + ["-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt",
                   "yuv420p10le", "-x265-params", "keyint=30:min-keyint=30:log-level=error"] + AAC),
        # motion with temporal noise, near-lossless with a keyframe every 15 frames: PSNR moves with the knob
        # and the preset (the quality target's tests)
        "noisy": ("noisy.mp4", V + ["testsrc2=size=320x240:rate=30:duration=6,noise=alls=12:allf=t", "-c:v",
                  "libx264", "-preset", "veryfast", "-crf", "8", "-g", "15"]),
        "long": ("long.mp4", _testsrc(20) + _sine(20) + X264 + ["-g", "30"] + AAC),
    }


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="session")
def make_clip(clip_dir: Path):
    """make_clip(name) -> Path of a generated clip (made on first use, then reused)."""
    recipes = clip_recipes(clip_dir)
    made: dict[str, Path] = {}

    def make(name: str) -> Path:
        if name not in made:
            filename, args, *second_pass = recipes[name]
            out = clip_dir / filename
            first = out.with_name("pass1-" + filename) if second_pass else out
            subprocess.run([FFMPEG, "-hide_banner", "-v", "error", "-y", *args, str(first)], check=True,
                           timeout=120)
            if second_pass:
                subprocess.run([FFMPEG, "-hide_banner", "-v", "error", "-y", "-i", str(first), *second_pass[0],
                                str(out)], check=True, timeout=120)
            made[name] = out
        return made[name]

    return make


@pytest.fixture(autouse=True)
def ledger_path(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own spending ledger file (not made until something is charged): ``$MONTAGE_RAY_LEDGER``,
    which its drivers, subprocesses and private Rays inherit and the ledger actor is told, so that no test
    reads another's spending or writes the user's ledger."""
    path = tmp_path_factory.mktemp("ledger", numbered=True) / "ledger.sqlite"
    monkeypatch.setenv("MONTAGE_RAY_LEDGER", str(path))
    return path


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray for the session (two CPUs); encode() uses it instead of starting its own."""
    import ray

    # address="local": a Ray of its own, never one that Ray's temp dir names (a `ray start` left there). Metrics
    # are reported at Ray's default interval (10 s; the metrics tests wait for them): reporting every second cost
    # each worker's idle Ray a further 4 % of a core for the whole suite.
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def simulated_cluster(tmp_path_factory: pytest.TempPathFactory):
    """scripts/simulate_cluster.py's mixed cluster (a head with a CPU slot, vaapi, nvenc and nvmpi stand-in
    nodes), started once in a process of its own and shared by the jobs that run on it (the script's
    ``--address``/``--control`` arguments, which it gives); each job leaves it as it found it."""
    control = tmp_path_factory.mktemp("simulated") / "control"
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "service_cluster.py"), "--simulated",
                             str(control)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
                            env=env)
    address = proc.stdout.readline().strip()
    assert address, "the simulated cluster did not start"
    yield ["--address", address, "--control", str(control)]
    proc.stdin.close()
    proc.wait(timeout=120)


#: The modules that take longest (clusters of their own, jobs held to a rate, node timeouts), in the order
#: they start under ``pytest -n N --dist loadfile`` (scripts/test.sh: each module runs whole on one worker, so
#: its module fixtures are made once) so that none of them starts last and runs alone. test_simulate, every
#: test on the session's simulated cluster, comes last: the cluster starts for it and stops with the session,
#: and never idles beside the other tests.
LONG_FIRST = ("test_netns_cluster", "test_service", "test_versions", "test_ledger_restart", "test_job_edges",
              "test_cache", "test_deploy", "test_readme", "test_chaos", "test_exact", "test_job", "test_observe")
LAST = ("test_simulate",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules longest first (LONG_FIRST), test_simulate last; a module's tests keep their order."""
    def rank(item: pytest.Item) -> int:
        stem = Path(item.nodeid.split("::", 1)[0]).stem
        if stem in LAST:
            return len(LONG_FIRST) + 1
        return LONG_FIRST.index(stem) if stem in LONG_FIRST else len(LONG_FIRST)

    items.sort(key=rank)  # stable


@pytest.fixture
def session_ray(ray_cluster) -> str:
    """The session's Ray, its CPU slots freed of this process's actors, for a driver of another process
    (tests/version_job.py --address)."""
    from montage_ray.cluster.session import connected

    connected().registry.stop()
    return ray_cluster.get_runtime_context().gcs_address


BUILDS = Path(os.environ.get("MONTAGE_FFMPEG_BUILDS") or Path.home() / ".cache" / "montage-ray" / "ffmpeg") / "bin"


@pytest.fixture(scope="session")
def ffmpeg_builds() -> dict[str, Path]:
    """Static ffmpeg builds by version ("4.2.2", "7.0.2", "9.0.2", and "ffprobe-8.0"), fetched by
    scripts/ffmpeg-builds.sh (run by `scripts/setup.sh --test`). Missing builds fail the tests that need them."""
    found = {p.name.split("-", 1)[1] if p.name.startswith("ffmpeg-") else p.name: p
             for p in BUILDS.glob("*") if os.access(p, os.X_OK)}
    missing = {"4.2.2", "7.0.2", "9.0.2", "ffprobe-8.0"} - set(found)
    if missing:
        pytest.fail(f"static ffmpeg builds {sorted(missing)} are missing in {BUILDS}: run scripts/ffmpeg-builds.sh")
    return found
