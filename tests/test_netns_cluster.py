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


pytestmark = pytest.mark.skipif(_why_not() is not None, reason=str(_why_not()))

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
