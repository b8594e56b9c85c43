"""Connecting to Ray: a private local Ray on 127.0.0.1 without an address, one fast line for a bad one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.test_cli import assert_one_line_error, cli

PRIVATE = """
import json
import ray  # brings its own psutil
import psutil
from montage_ray.cluster.session import ray_session
with ray_session(None) as session:
    me = psutil.Process()
    listening = sorted({c.laddr.ip for p in [me, *me.children(recursive=True)] for c in p.net_connections("inet")
                        if c.status == psutil.CONN_LISTEN})
    print(json.dumps({"address": session.address, "started_here": session.started_here, "listening": listening}))
"""


def test_private_ray_listens_on_loopback_only(tmp_path):
    done = subprocess.run([sys.executable, "-c", PRIVATE], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, RAY_ADDRESS=""), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout.strip().splitlines()[-1])
    assert info["started_here"] and info["address"].startswith("127.0.0.1:")
    assert info["listening"] and set(info["listening"]) <= {"127.0.0.1", "::ffff:127.0.0.1"}, info


def test_a_stale_ray_current_cluster_is_not_followed(make_clip, tmp_path):
    """`ray start` leaves the address of its cluster in Ray's temp folder; once that cluster is gone, a job
    without --address must neither attach to it nor hang on it: it runs on a private Ray."""
    from ray._common.utils import get_ray_address_file

    temp = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray"
    temp.mkdir(parents=True, exist_ok=True)
    stale = Path(get_ray_address_file(str(temp)))
    saved = stale.read_text() if stale.exists() else None
    stale.write_text("127.0.0.1:9")  # nothing listens there
    try:
        report = tmp_path / "r.json"
        done = cli("encode", str(make_clip("bframes")), "o.mp4", "--preset", "ultrafast", "--report", str(report),
                   cwd=tmp_path, timeout=240)
    finally:
        if saved is None:
            stale.unlink()
        else:
            stale.write_text(saved)
    assert done.returncode == 0, done.stderr
    address = json.loads(report.read_text())["ray_address"]
    assert address.startswith("127.0.0.1:") and address != "127.0.0.1:9"


@pytest.mark.parametrize("address", ["127.0.0.1:9", "ray://127.0.0.1:9"])
def test_an_unreachable_address_fails_fast_in_one_line(address, make_clip, tmp_path):
    started = time.monotonic()
    done = cli("encode", str(make_clip("bframes")), "o.mp4", "--address", address, cwd=tmp_path, timeout=120)
    assert_one_line_error(done, "cannot reach Ray", address)
    assert done.returncode == 6
    assert time.monotonic() - started < 60  # was minutes of retries; the limit is generous for a loaded machine
    assert not (tmp_path / "o.mp4").exists()


@pytest.mark.usefixtures("ray_cluster")
def test_a_job_on_the_connected_ray_reports_its_real_address(make_clip, tmp_path):
    import ray

    from montage_ray import encode

    report = encode(make_clip("bframes"), tmp_path / "o.mp4", preset="ultrafast")
    assert report.ray_address == ray.get_runtime_context().gcs_address != ""


def test_a_port_where_no_ray_head_answers_is_named_in_one_line(make_clip, tmp_path):
    """Something listens (the dashboard's port, say) but it is not a GCS: one line that says which port to give."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def answer() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            conn.close()

    threading.Thread(target=answer, daemon=True).start()
    try:
        done = cli("encode", str(make_clip("bframes")), "o.mp4", "--address", f"127.0.0.1:{port}", cwd=tmp_path,
                   timeout=120)
    finally:
        server.close()
    assert_one_line_error(done, f"something listens at 127.0.0.1:{port}, but not a Ray head's GCS", "6379")
    assert done.returncode == 6 and not (tmp_path / "o.mp4").exists()
