"""A real multi-host cluster on this machine (scripts/netns_cluster.py): hosts in network namespaces with their
own addresses, Ray started on each through scripts/ray-start-node.sh with token authentication, a cloud host
behind a shaped link, and faults during jobs.

One namespace cluster (3 hosts) serves every test of this module; a test that breaks a host restores it.
The module needs root and ``ip netns``; without them it is skipped, saying which is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests import mediacheck as mc

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "netns_cluster.py"


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "`ip` and `tc` (iproute2) are not installed"
    if subprocess.run(["ip", "netns", "list"], capture_output=True, timeout=30).returncode != 0:
        return "`ip netns` does not work here"
    return None


pytestmark = [pytest.mark.skipif(_why_not() is not None, reason=str(_why_not())), pytest.mark.timing]

sys.path.insert(0, str(ROOT / "scripts"))
try:
    import netns_cluster as nc
finally:
    sys.path.pop(0)


@pytest.fixture(scope="module")
def cluster():
    """Three hosts: h0 the head, h1 a worker (the driver runs there), h2 the cloud host (nvenc stand-ins)
    behind a 200 Mbit/s link. Torn down at the end; nothing of it may be left."""
    with nc.NetnsCluster(3, cloud_mbit=200.0, node_timeout=8.0) as made:
        yield made
    assert nc.leftovers(made.tag) == {"namespaces": [], "links": [], "processes": []}
    assert not made.dir.exists()


def _encode(cluster, src, dst, *extra, faults=()):
    run = cluster.run(["encode", str(src), str(dst), "--segment-seconds", "2", "--report", f"{dst}.json",
                       *map(str, extra)], faults=faults, timeout=600)
    assert run.report is not None or run.exit_code != 0, run.stderr[-3000:]
    return run


def _exact(src, dst) -> None:
    assert mc.decoded_frames(dst) == mc.decoded_frames(src) and mc.decode_errors(dst) == ""
    mc.assert_same_frames_in_order(src, dst)


def test_three_host_job_is_exact_and_spread_over_hosts(cluster, make_clip, tmp_path):
    src, dst = make_clip("long"), tmp_path / "out.mp4"
    run = _encode(cluster, src, dst)
    assert run.exit_code == 0, run.stderr[-3000:]
    _exact(src, dst)
    segments = run.report["segments"]
    assert sum(s["frames"] for s in segments) == 600
    # every segment names its node by its host's address, and at least two hosts encoded
    by_host = run.segments_by_host(cluster)
    assert "?" not in by_host, [(s["node"], s["actor"]) for s in segments]
    assert len(by_host) >= 2, by_host
    for s in segments:
        assert cluster.host_of_node(s["node"]) is not None, s["node"]
    # the segments really travelled: every host that encoded received at least its share over its link
    for name in by_host:
        if name != cluster.driver_host.name:
            assert run.bytes_by_host[name]["to_host"] > 0.5 * os.path.getsize(src) * by_host[name] / len(segments)
    cluster.baseline_wall = run.wall


def test_token_auth_between_hosts(cluster):
    """From another host, the head's dashboard refuses a client without the token (401) and serves one
    with it; a driver without the token cannot join the cluster."""
    url = f"http://{cluster.head.address}:{nc.DASHBOARD_PORT}/api/jobs/"
    code = """
import sys, urllib.error, urllib.request
headers = {"Authorization": "Bearer " + open(sys.argv[2]).read().strip()} if len(sys.argv) > 2 else {}
try:
    with urllib.request.urlopen(urllib.request.Request(sys.argv[1], headers=headers), timeout=30) as answer:
        print(answer.status)
except urllib.error.HTTPError as err:
    print(err.code)
"""
    without = cluster.python_on(cluster.driver_host, code, url)
    with_token = cluster.python_on(cluster.driver_host, code, url, str(cluster.token_file))
    assert without.stdout.split()[-1:] == ["401"], without.stdout + without.stderr
    assert with_token.stdout.split()[-1:] == ["200"], with_token.stdout + with_token.stderr

    wrong = cluster.dir / "wrong-token"
    wrong.write_text("not-the-token", encoding="utf-8")
    wrong.chmod(0o600)
    refused = subprocess.run(["ip", "netns", "exec", cluster.driver_host.netns, sys.executable, "-c",
                              nc._ALIVE_NODES, cluster.address],
                             env=cluster.env(cluster.driver_host, RAY_AUTH_TOKEN_PATH=str(wrong)),
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert "auth" in refused.stderr.lower() or "token" in refused.stderr.lower(), refused.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("mbit", [200.0, 5.0])
def test_the_cloud_link_carries_the_rate_it_is_shaped_to(cluster, mbit):
    cluster.shape(cluster.cloud, mbit)
    try:
        measured = cluster.measure_tcp(cluster.driver_host, cluster.cloud, seconds=3)
    finally:
        cluster.shape(cluster.cloud, 200.0)
    # tbf lets a bucket's worth through at once and TCP takes a moment to fill the link: room both ways
    assert 0.5 * mbit < measured < 1.2 * mbit, measured


@pytest.fixture(scope="module")
def heavy_clip(tmp_path_factory):
    """20 s at about 8 Mbit/s (noise at a low QP): heavy enough that a 5 Mbit/s link cannot pay off."""
    out = tmp_path_factory.mktemp("netns") / "heavy.mp4"
    mc.run_ffmpeg(["-f", "lavfi", "-i", "testsrc2=size=320x240:rate=30:duration=20", "-f", "lavfi", "-i",
                   "sine=duration=20", "-vf", "noise=alls=10:allf=t", "-c:v", "libx264", "-preset", "ultrafast",
                   "-qp", "20", "-g", "30", "-c:a", "aac", "-b:a", "96k", str(out)])
    return out


def _route_line(report, label: str) -> str:
    return next(line for line in report["route"] if line.startswith(f"{label}: remote"))


@pytest.mark.slow
def test_routing_follows_the_measured_cloud_link(cluster, heavy_clip, tmp_path):
    """The cloud link's bandwidth is measured before routing: on 200 Mbit/s the cloud host gets work, on
    5 Mbit/s it is left out with its reason, and the job is exact both times."""
    fast = _encode(cluster, heavy_clip, tmp_path / "fast.mp4")
    cluster.shape(cluster.cloud, 5.0)
    try:
        slow = _encode(cluster, heavy_clip, tmp_path / "slow.mp4")
    finally:
        cluster.shape(cluster.cloud, 200.0)
    for run, dst in ((fast, tmp_path / "fast.mp4"), (slow, tmp_path / "slow.mp4")):
        assert run.exit_code == 0, run.stderr[-3000:]
        _exact(heavy_clip, dst)
    cloud = cluster.cloud.name
    assert "measured" in _route_line(fast.report, "nvenc") and _route_line(fast.report, "nvenc").endswith("used")
    assert fast.segments_by_host(cluster).get(cloud, 0) >= 1
    line = _route_line(slow.report, "nvenc")
    assert "measured" in line and line.endswith("left out"), line
    assert cloud not in slow.segments_by_host(cluster)
    measured = [float(l.split("measured at ")[1].split()[0]) for l in slow.report["route"] if "measured at" in l]
    assert measured and measured[0] < 5.0 * 1.3, measured  # never more than the link carries
    # what crossed the slow link was the measurement (a few blobs), not the job's segments
    assert slow.bytes_by_host[cloud]["to_host"] < 0.5 * os.path.getsize(heavy_clip)


def _restored(cluster, host):
    cluster.restore(host)
    assert host.address in cluster.alive_nodes()


@pytest.mark.slow
@pytest.mark.parametrize("kind,host,seconds", [("flap", "h0", 2.0), ("partition", "h2", None), ("kill", "h2", 0.0)],
                         ids=["head-link-flaps", "cloud-partitioned", "cloud-killed"])
def test_a_fault_during_a_job_ends_exact(cluster, make_clip, tmp_path, kind, host, seconds):
    """The head's link down for 2 s; the cloud host unreachable (processes alive) for longer than the node
    timeout, then back; the cloud host's processes killed. Each job ends exact, and the fault hit it while
    it ran."""
    src, dst = make_clip("long"), tmp_path / "out.mp4"
    fault = nc.Fault(kind, host, after=1, seconds=seconds if seconds is not None else 3 * cluster.node_timeout)
    try:
        run = _encode(cluster, src, dst, faults=[fault])
    finally:
        if kind != "flap":
            _restored(cluster, cluster.host(host))
    assert fault.applied_at is not None and fault.applied_at < run.wall, (fault, run.wall)
    assert run.exit_code == 0, run.stderr[-3000:]
    _exact(src, dst)
    assert sum(s["frames"] for s in run.report["segments"]) == 600
    if kind != "flap":  # the segments lost on the cloud host were encoded again elsewhere
        for f in run.report["failures"]:
            again = next(s for s in run.report["segments"] if s["segment"] == f["segment"])
            assert cluster.host_of_node(again["node"]) is not None


@pytest.mark.slow
def test_the_command_line_builds_runs_and_tears_down(tmp_path):
    """`netns_cluster.py --hosts 2 -- encode ...` exits with the job's code (a missing source: 2, one line),
    writes its summary, and leaves no namespace, link or process behind."""
    summary = tmp_path / "s.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--hosts", "2", "--summary", str(summary), "--",
                           "encode", str(tmp_path / "missing.mp4"), str(tmp_path / "out.mp4")],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "missing.mp4" in done.stderr and "Traceback" not in done.stderr
    data = json.loads(summary.read_text())
    assert data["exit_code"] == 2 and [h["address"] for h in data["hosts"]] == ["198.18.0.1", "198.18.0.2"]
    assert not (tmp_path / "out.mp4").exists()
    tag = nc.NS_RE.match(data["hosts"][0]["netns"])
    assert nc.leftovers(tag.group(1) + tag.group(2)) == {"namespaces": [], "links": [], "processes": []}
