"""The encoder service on a simulated cluster (a CPU slot and a vaapi stand-in, in a process of their own),
used by separate driver processes as on a real cluster: jobs at once share the actors fairly, a
high-priority job goes first, a killed driver's work is dropped and its re-run finishes exact, a
notebook's jobs and a CLI job share the slots (a re-run once found every slot held), idle actors
stop. The scheduler's pure fair-share rules are table-tested first."""

from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from montage_ray.cluster.scheduler import FairShare
from tests import mediacheck as mc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDLE, GRACE = 60, 5   # the idle test starts a service of its own with a short idle time


# -- fair share, pure ------------------------------------------------------------------------------------

def _share(*jobs: tuple[str, int]) -> FairShare:
    share = FairShare(depth=2, grace=GRACE)
    for name in ("a", "b"):
        share.register(name, node="n", label="cpu", now=0)
    for i, (job, priority) in enumerate(jobs):
        share.open(job, priority=priority, now=i)
    return share


def test_two_jobs_of_one_priority_end_with_half_the_tickets_each():
    share = _share(("render", 0), ("other", 0))
    both = {"a": 2, "b": 2}
    assert share.grant("render", both, now=1) == both                          # alone: everything
    assert share.grant("other", both, now=1) == {}                              # nothing free yet
    share.release("render", "a", now=2)
    share.release("render", "b", now=2)                                         # render's segments answer
    assert share.grant("render", {"a": 1, "b": 1}, now=2) == {}                 # kept for the job holding less
    assert share.grant("other", both, now=2) == {"a": 1, "b": 1}
    share.release("render", "a", now=3)
    assert share.grant("other", both, now=3) == {}                              # render holds less now
    assert share.grant("render", {"a": 1}, now=3) == {"a": 1}
    assert {j["job"]: j["tickets"] for j in share.status(3)["jobs"]} == {"render": 2, "other": 2}


def test_a_higher_priority_goes_first_and_stale_demand_keeps_nothing():
    share = _share(("render", 0), ("preview", 10))
    assert share.grant("render", {"a": 2}, now=1) == {"a": 2}
    assert share.grant("preview", {"a": 2}, now=1) == {}
    share.release("render", "a", now=2)
    assert share.grant("render", {"a": 1}, now=2) == {}                          # the preview asked lately
    assert share.grant("preview", {"a": 2}, now=2) == {"a": 1}
    share.release("render", "a", now=3)
    share.grant("preview", {"b": 1}, now=3)                                      # no room on a: asks for b
    assert share.grant("render", {"a": 1}, now=3) == {}                          # a is still the preview's
    assert share.grant("render", {"a": 1}, now=10) == {"a": 1}                   # its driver silent for 7 s
    share.grant("preview", {}, now=10)                                           # nothing more to send
    assert share.grant("render", {"b": 2}, now=10) == {"b": 1}                   # the one the preview left


def test_a_silent_job_is_closed_and_says_where_it_held_tickets():
    share = _share(("dead", 0), ("alive", 0))
    share.grant("dead", {"a": 1}, now=1)
    share.heartbeat("alive", now=GRACE + 2)
    assert share.silent(GRACE + 2) == ["dead"]
    assert share.close("dead", now=GRACE + 2) == ["a"]
    assert share.grant("alive", {"a": 2}, now=GRACE + 2) == {"a": 2}
    assert share.grant("dead", {"a": 1}, now=GRACE + 2) == {}                    # unknown now


def test_idle_slots_are_those_no_open_job_uses():
    share = _share(("job", 0))
    share.register("a", job="job", now=0)
    assert share.idle(5, now=100) == ["b"]                                       # a: the open job's
    share.close("job", now=100)
    assert share.idle(5, now=106) == ["a", "b"]


# -- on a simulated cluster, with driver processes -----------------------------------------------------------

#: The simulated cluster's temp folder (TMPDIR of its Ray and so of its actors): where their encodes' scratch
#: folders (montage-seg-*) are, apart from other test sessions' on this machine.
SCRATCH = Path(tempfile.gettempdir()) / f"mrsvc-{os.getpid()}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    folder = tmp_path_factory.mktemp("service")
    config = folder / "encoders.yaml"
    SCRATCH.mkdir(exist_ok=True)
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "TMPDIR": str(SCRATCH)}
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "service_cluster.py"), str(config), "2"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    address = proc.stdout.readline().strip()
    assert address, "the simulated cluster did not start"
    yield address, config
    proc.stdin.close()
    proc.wait(timeout=120)
    shutil.rmtree(SCRATCH, ignore_errors=True)


@pytest.fixture(scope="module")
def render_clip(tmp_path_factory):
    """40 s of 320x240: a long job (40 segments of 1 s)."""
    out = tmp_path_factory.mktemp("render") / "render.mp4"
    subprocess.run([os.environ.get("MONTAGE_FFMPEG", "ffmpeg"), "-v", "error", "-y", "-f", "lavfi", "-i",
                    "testsrc2=size=320x240:rate=30:duration=40", "-c:v", "libx264", "-preset", "ultrafast", "-g",
                    "30", str(out)], check=True, timeout=120)
    return out


def _env(idle: float = IDLE) -> dict[str, str]:
    return {**os.environ, "MONTAGE_SERVICE_IDLE": str(idle), "MONTAGE_SERVICE_GRACE": str(GRACE),
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _encode(cluster, src, dst, *extra: str, idle: float = IDLE) -> subprocess.Popen:
    address, config = cluster
    cmd = [sys.executable, "-m", "montage_ray", "encode", str(src), str(dst), "--address", address,
           "--encoders-config", str(config), "--segment-seconds", "1", "--preset", "ultrafast", "--verify",
           "packets", "--report", str(dst) + ".json", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=_env(idle), start_new_session=True)


def _wait_for(proc: subprocess.Popen, prefix: str) -> None:
    """Wait until the driver prints a progress line starting with ``prefix`` ("encoding " when its encode
    phase starts, "segment " when a segment is done)."""
    for line in proc.stdout:
        if line.startswith(prefix):
            return
    raise AssertionError(f"the driver ended before {prefix!r}: {proc.stderr.read()[-2000:]}")


def _finish(proc: subprocess.Popen, dst) -> dict:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert mc.decode_errors(dst) == ""
    with open(str(dst) + ".json", encoding="utf-8") as fh:
        return json.load(fh)


def _status(cluster) -> dict:
    done = subprocess.run([sys.executable, "-m", "montage_ray", "status", "--json", "--address", cluster[0]],
                          capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def _span(report: dict) -> tuple[float, float]:
    segs = report["segments"]
    return min(s["started"] for s in segs), max(s["started"] + s["seconds"] for s in segs)


def _exact(src, dst) -> None:
    a, b = mc.video_times(src), mc.video_times(dst)
    assert a.shape == b.shape and abs((b - b[0]) - (a - a[0])).max() < 1e-3


@pytest.mark.timing
def test_two_drivers_at_once_both_make_progress(cluster, make_clip, tmp_path):
    src = make_clip("long")
    one, two = _encode(cluster, src, tmp_path / "1.mp4"), _encode(cluster, src, tmp_path / "2.mp4")
    first, second = _finish(one, tmp_path / "1.mp4"), _finish(two, tmp_path / "2.mp4")
    (a0, a1), (b0, b1) = _span(first), _span(second)
    # each job encoded segments while the other was encoding: the spans overlap, and neither waited for
    # the other to finish (a segment of each started inside the other's span)
    assert a0 < b1 and b0 < a1, (first["segments"], second["segments"])
    assert any(a0 < s["started"] < a1 for s in second["segments"])
    assert any(b0 < s["started"] < b1 for s in first["segments"])
    # one actor per slot served both jobs, each job under its own name for it
    assert {s["resource"] for s in first["segments"] + second["segments"]} == {"cpu", "vaapi"}
    assert not [f for f in first["failures"] + second["failures"] if f["reason"] == "not-scheduled"]
    _exact(src, tmp_path / "1.mp4")
    _exact(src, tmp_path / "2.mp4")


@pytest.mark.timing
def test_a_high_priority_short_job_finishes_long_before_a_long_job_started_earlier(cluster, make_clip, render_clip,
                                                                                 tmp_path):
    long_src, short_src = render_clip, make_clip("noaudio")
    render = _encode(cluster, long_src, tmp_path / "render.mp4")
    _wait_for(render, "encoding ")
    preview = _encode(cluster, short_src, tmp_path / "preview.mp4", "--priority", "10", "--codec", "hevc",
                      "--quality", "30")
    quick, slow = _finish(preview, tmp_path / "preview.mp4"), _finish(render, tmp_path / "render.mp4")
    _, preview_end = _span(quick)
    after = [s for s in slow["segments"] if s["started"] >= preview_end]
    # the render still had much to do when the preview was done: the preview did not wait behind it
    assert len(after) >= 5, (preview_end, slow["segments"])
    # and the preview had the actors while it ran: once its first segment had started on an actor, no
    # render segment started there until the preview's last one had (fair share would alternate)
    for actor in {s["actor"].split(":stand-in")[0] for s in quick["segments"]}:
        mine = [s["started"] for s in quick["segments"] if s["actor"].startswith(actor)]
        theirs = [s for s in slow["segments"] if s["actor"].startswith(actor) and min(mine) < s["started"] < max(mine)]
        assert len(theirs) <= 1, (actor, mine, theirs)   # one queued before the preview's first ask came
    assert mc.streams(tmp_path / "preview.mp4")[0]["codec_name"] == "hevc"   # the same actors, another codec
    _exact(short_src, tmp_path / "preview.mp4")
    _exact(long_src, tmp_path / "render.mp4")


@pytest.mark.timing
def test_a_killed_driver_is_dropped_and_the_other_job_and_the_rerun_finish_exact(cluster, make_clip, tmp_path):
    src = make_clip("noaudio")
    doomed = _encode(cluster, src, tmp_path / "doomed.mp4")
    _wait_for(doomed, "segment ")
    other = _encode(cluster, make_clip("noaudio"), tmp_path / "other.mp4")
    os.killpg(doomed.pid, signal.SIGKILL)                     # the driver and everything it started
    doomed.wait(timeout=60)
    report = _finish(other, tmp_path / "other.mp4")
    _exact(make_clip("noaudio"), tmp_path / "other.mp4")
    assert not [f for f in report["failures"] if f["reason"] == "not-scheduled"]
    # the killed job leaves the scheduler and nothing runs for it any more (no deadline of ours: Ray's
    # death notice or the grace period ends it)
    deadline = time.monotonic() + 120
    while True:
        status = _status(cluster)
        jobs = [j["job"] for j in status["jobs"]]
        busy = [a for a in status["actors"] if a["busy"]]
        if not jobs and not busy:
            break
        assert time.monotonic() < deadline, status
        time.sleep(1)
    # the same command again (the chaos job's case): the slots are free or reused, and it ends exact
    rerun = _encode(cluster, src, tmp_path / "doomed.mp4", "--overwrite")
    report = _finish(rerun, tmp_path / "doomed.mp4")
    assert not [f for f in report["failures"] if f["reason"] == "not-scheduled"], report["failures"]
    _exact(src, tmp_path / "doomed.mp4")


@pytest.mark.timing
def test_a_notebooks_actors_do_not_hold_the_slots_a_cli_job_needs(cluster, make_clip, tmp_path):
    """Issue 11: a driver that stays connected (a notebook, the chaos script) kept its encoder actors in every
    slot, and a CLI job on the same cluster found none free: "no encoder could start ... did not start within
    60 s". On the service both use the same actors."""
    src = make_clip("noaudio")
    notebook = subprocess.Popen(
        [sys.executable, "-c", "import sys, ray; from montage_ray import encode; "
         f"ray.init(address={cluster[0]!r}, log_to_driver=False); "
         f"encode({str(src)!r}, {str(tmp_path / 'nb.mp4')!r}, encoders_config={str(cluster[1])!r}, "
         "segment_seconds=1, preset='ultrafast', verify='packets'); print('done', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env())
    try:
        assert notebook.stdout.readline().strip() == "done", notebook.stderr.read()[-2000:]
        cli = _encode(cluster, src, tmp_path / "cli.mp4")
        report = _finish(cli, tmp_path / "cli.mp4")
    finally:
        notebook.stdin.close()
        notebook.wait(timeout=120)
    assert not report["failures"], report["failures"]
    assert {s["resource"] for s in report["segments"]} == {"cpu", "vaapi"}
    _exact(src, tmp_path / "cli.mp4")


@pytest.mark.timing
def test_the_actors_stop_after_the_idle_time_and_service_stop_stops_them_at_once(cluster, make_clip, tmp_path):
    src = make_clip("noaudio")

    def stop() -> str:
        done = subprocess.run([sys.executable, "-m", "montage_ray", "service", "stop", "--address", cluster[0]],
                              capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=120)
        assert done.returncode == 0 and "stopped" in done.stdout, done.stderr
        return done.stdout

    stop()                                                       # the module's service (idle 60 s) goes
    status = _status(cluster)
    assert not status["running"] and status["named"] == []
    _finish(_encode(cluster, src, tmp_path / "a.mp4", idle=3), tmp_path / "a.mp4")   # a new one: idle 3 s
    status = _status(cluster)
    assert status["running"] and status["idle"] == 3
    deadline = time.monotonic() + 120
    while status["named"]:                                       # polled, no margin of ours
        assert time.monotonic() < deadline, status
        time.sleep(1)
        status = _status(cluster)
    assert status["actors"] == [] and status["jobs"] == []
    # started again on demand; `service stop` stops them without waiting for the idle time
    _finish(_encode(cluster, src, tmp_path / "b.mp4"), tmp_path / "b.mp4")
    stop()
    status = _status(cluster)
    assert not status["running"] and status["named"] == []


PLAIN_TASK = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level="ERROR")
task = ray.remote(num_cpus=1)(lambda: "ran").remote()
try:
    print(ray.get(task, timeout=float(sys.argv[2])))
except ray.exceptions.GetTimeoutError:
    print("waited")
"""


def _plain_task(cluster, timeout: float) -> str:
    """A plain @ray.remote(num_cpus=1) task from a driver of its own: "ran", or "waited" past ``timeout``. The
    simulated cluster has one CPU, the head's: the CPU slot's."""
    done = subprocess.run([sys.executable, "-c", PLAIN_TASK, cluster[0], str(timeout)], capture_output=True,
                          text=True, cwd=ROOT, env=_env(), timeout=120 + timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.timing
def test_a_working_cpu_slot_reserves_its_cpu_and_an_idle_one_leaves_it_to_plain_tasks(cluster, render_clip, tmp_path):
    job = _encode(cluster, render_clip, tmp_path / "r.mp4", "--no-cache")
    _wait_for(job, "segment ")
    status = _status(cluster)
    cpu = [a for a in status["actors"] if a["label"] == "cpu"]
    assert cpu and all(a["cpu_reserved"] for a in cpu), status["actors"]
    assert _plain_task(cluster, 3) == "waited"               # the encoding slot holds its CPU
    report = _finish(job, tmp_path / "r.mp4")
    # the metrics' node tag: status (ray_montage_service_actors) names a node as the report does
    # (ray_montage_segments_encoded)
    assert {a["node"] for a in cpu} == {s["node"] for s in report["segments"] if s["resource"] == "cpu"}
    assert _plain_task(cluster, 30) == "ran"                 # idle: the CPU is the cluster's again ...
    status = _status(cluster)
    assert [a["name"] for a in cpu] == [a["name"] for a in status["actors"] if a["label"] == "cpu"]  # ... and
    assert not any(a["cpu_reserved"] for a in status["actors"])  # the actor is still there for the next job


@pytest.mark.timing
def test_service_stop_during_a_job_needs_force_names_the_job_and_the_job_says_so(cluster, render_clip, tmp_path):
    job = _encode(cluster, render_clip, tmp_path / "s.mp4", "--no-cache")
    first = job.stdout.readline()
    job_id = first.split()[1].rstrip(":")
    assert first.startswith("job ") and len(job_id) == 8, first
    _wait_for(job, "segment ")

    def stop(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "montage_ray", "service", "stop", "--address", cluster[0],
                               *extra], capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=120)

    refused = stop()
    assert refused.returncode == 2 and refused.stdout == "", refused.stderr
    assert refused.stderr.count("\n") == 1 and f"1 job is running on the encoder service: {job_id} (" in refused.stderr
    assert "--force" in refused.stderr and job.poll() is None    # the job goes on
    forced = stop("--force")
    assert forced.returncode == 0, forced.stderr
    assert f"stopped job {job_id} (priority 0, " in forced.stdout and "encoder actor(s)" in forced.stdout
    out, err = job.communicate(timeout=120)
    assert job.returncode == 6, err
    assert err.splitlines() == [err.strip()] and "montage-ray: error: the encoder service was stopped at " in err
    assert "service stop --force" in err and not (tmp_path / "s.mp4").exists()
    assert list(SCRATCH.glob("montage-seg-*")) == []            # each actor cleaned up before it was killed
    assert not _status(cluster)["running"]


def _previews_every_7_s(starve: float, until: float = 120.0) -> tuple[list[float], int]:
    """A render (priority 0) on two slots, and a preview job of priority 100 opened every 7 s that wants both
    slots for 40 segments (10 s with four in flight: each overlaps the next): each driver asks for what it can send every half second, segments take a
    second. Returns when the render's tickets were granted, and how many previews finished."""
    share = FairShare(depth=2, grace=GRACE, starve=starve)
    for name in ("a", "b"):
        share.register(name, node="n", label="cpu", now=0)
    share.open("render", priority=0, now=0)
    running: list[tuple[float, str, str]] = []        # (ends, job, slot)
    left = {"render": 1}                               # the render's last segment: stuck at 14/15
    render_grants, finished, t = [], 0, 0.0
    while t < until:
        if t % 7 == 0:
            job = f"preview{int(t)}"
            share.open(job, priority=100, now=t)
            left[job] = 40
        for end, job, slot in [r for r in running if r[0] <= t]:
            running.remove((end, job, slot))
            share.release(job, slot, now=t)
            left[job] -= 1
            if left[job] == 0:
                share.close(job, now=t)
                finished += job != "render"
        for job in sorted(j for j in left if left[j] > 0 and j in share.jobs):
            busy = sum(1 for r in running if r[1] == job)
            want = min(left[job] - busy, 4)
            got = share.grant(job, {"a": (want + 1) // 2, "b": want // 2} if want > 0 else {}, now=t)
            for slot, n in got.items():
                running += [(t + 1.0, job, slot)] * n
                if job == "render":
                    render_grants.append(t)
        t += 0.5
        share.heartbeat("render", now=t)
    return render_grants, finished


def test_high_priority_jobs_arriving_every_7_s_do_not_starve_a_priority_0_job():
    grants, previews = _previews_every_7_s(starve=30)
    assert grants and grants[0] <= 31, grants      # the share floor: one ticket after 30 s of asking
    assert len(grants) == 1 and previews >= 10     # the previews still go first the rest of the time
    unfloored, _ = _previews_every_7_s(starve=10_000)
    assert unfloored == []                         # without the floor it waits for as long as previews come


def test_a_starved_job_keeps_one_ticket_until_it_has_nothing_more_to_send():
    share = _share(("render", 0), ("preview", 100))
    share.starve = 5
    assert share.grant("preview", {"a": 2, "b": 2}, now=0) == {"a": 2, "b": 2}
    for t in (0, 1.5, 3, 4.5, 5.5):                                             # the render polls, in vain
        assert share.grant("render", {"a": 1}, now=t) == {}
        share.heartbeat("preview", now=t)
    assert share.starving(share.jobs["render"], 5.5)
    share.release("preview", "a", now=6)
    assert share.grant("preview", {"a": 1}, now=6) == {}                        # kept for the starving render
    assert share.grant("render", {"a": 1}, now=6.5) == {"a": 1}
    share.release("render", "a", now=7)
    share.release("preview", "a", now=7)
    assert share.grant("render", {"a": 2}, now=7) == {"a": 1}                   # the floor: one ticket, at once
    assert share.grant("preview", {"a": 2}, now=7) == {"a": 1}
    share.release("render", "a", now=8)
    assert share.grant("render", {}, now=8) == {}                               # nothing more to send
    assert not share.jobs["render"].floor
