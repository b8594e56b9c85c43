"""Run several montage-ray jobs in ONE local Ray session, with whatever MONTAGE_FFMPEG/MONTAGE_FFPROBE the
environment names (tests/test_versions.py starts one per ffmpeg version). Prints one JSON object:
{clip: {"ok": true, "ffmpeg": [versions of the segments], "frames": N} or {"ok": false, "error": "..."}}.

    python tests/version_job.py [--address ADDR] OUT_DIR CLIP=SRC.ext:DST.ext ...
                                    (CLIP@2=...: 2 s segments, else 1 s; ADDR: a running Ray to use)

With ``--cases [--address ADDR] CASES.json`` it runs the jobs listed there ([{"name", "src", "dst", "seconds", "preset"}, ...]) and
prints {name: {"ok": true, "frames", "segments", "ffmpeg"} or {"ok": false, "error", "code"} or {"ok": false,
"crash": traceback}}: a crash (anything but a MontageError) is recorded and the next job still runs (see
tests/test_exact.py).

With ``--mixed`` it runs one job on a simulated cluster whose nodes run different ffmpeg builds instead
(see :func:`mixed`):

    python tests/version_job.py --mixed SRC DST REPORT.json /usr/bin/ffmpeg FFMPEG_4_2 FFMPEG_9_0
"""

from __future__ import annotations

import json
import os
import sys


def connect(argv: list[str]) -> list[str]:
    """ray.init for the jobs: ``--address ADDR`` first in ``argv`` names a Ray that runs already (the test
    session's), else one of our own is started. The rest of ``argv``."""
    import ray

    address = None
    if argv[0] == "--address":
        address, argv = argv[1], argv[2:]
    if address:
        # this job's actors (workers of their own) run the ffmpeg named here, whatever the nodes' environment;
        # actors of this driver's own (not the shared encoder service's: those would outlive it)
        os.environ["MONTAGE_RAY_SERVICE"] = "0"
        tools = {k: os.environ[k] for k in ("MONTAGE_FFMPEG", "MONTAGE_FFPROBE") if k in os.environ}
        ray.init(address=address, runtime_env={"env_vars": tools}, log_to_driver=False, logging_level="ERROR")
    else:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    return argv


def main(argv: list[str]) -> int:
    import ray

    from montage_ray import encode
    from montage_ray.errors import MontageError

    argv = connect(argv)
    out_dir, jobs = argv[0], argv[1:]
    results = {}
    try:
        for job in jobs:
            name, paths = job.split("=", 1)
            src, ext = paths.rsplit(":", 1)
            dst = os.path.join(out_dir, f"{name}{ext}")
            seconds = float(name.split("@", 1)[1]) if "@" in name else 1.0  # NAME@2: 2 s segments
            try:
                report = encode(src, dst, preset="ultrafast", segment_seconds=seconds)
                results[name] = {"ok": True, "dst": dst, "frames": report.frames,
                                 "segments": len(report.segments),
                                 "ffmpeg": sorted({s.ffmpeg for s in report.segments})}
            except MontageError as err:
                results[name] = {"ok": False, "error": str(err)}
    finally:
        ray.shutdown()
    print(json.dumps(results))
    return 0


def cases(argv: list[str]) -> int:
    """--cases [--address ADDR] CASES.json: each listed job, in one Ray; a crash is recorded, not raised."""
    import traceback

    import ray

    from montage_ray import encode
    from montage_ray.errors import MontageError

    argv = connect(argv)
    with open(argv[0], encoding="utf-8") as fh:
        jobs = json.load(fh)
    results = {}
    try:
        for job in jobs:
            try:
                report = encode(job["src"], job["dst"], preset=job.get("preset", "ultrafast"),
                                segment_seconds=job.get("seconds", 1.0))
                results[job["name"]] = {"ok": True, "frames": report.frames, "segments": len(report.segments),
                                        "ffmpeg": sorted({s.ffmpeg for s in report.segments})}
            except MontageError as err:
                results[job["name"]] = {"ok": False, "error": str(err), "code": err.exit_code}
            except Exception:  # noqa: BLE001 - a crash is what the caller looks for
                results[job["name"]] = {"ok": False, "crash": traceback.format_exc()[-3000:]}
    finally:
        ray.shutdown()
    print(json.dumps(results))
    return 0


#: Labels of the mixed cluster's worker nodes, one node each, every one served by a CPU stand-in.
MIXED_LABELS = ("vaapi", "nvenc", "nvmpi", "qsv")

#: The whole mixed run (cluster start, job, shutdown) gives up after this many seconds, cleaning up.
MIXED_LIMIT_S = 240


def mixed(argv: list[str]) -> int:
    """--mixed SRC DST REPORT HEAD_FFMPEG NODE_FFMPEG...: one job on a simulated cluster whose nodes run
    different ffmpeg builds. The head (one CPU slot) runs HEAD_FFMPEG, each other node one NODE_FFMPEG
    (``MONTAGE_FFMPEG`` in its raylet's environment, which its actors inherit) behind a hardware label
    served by a libx264 stand-in; the driver cuts and joins with its own ffmpeg. Every node binds
    127.0.0.1 only (as scripts/simulate_cluster.py). Each node's actor gets a segment before any actor gets
    a second (unmeasured actors take one at a time) and no segment is duplicated, so every build encodes
    at least one segment. Writes the JSON report to REPORT and prints
    {"frames": N, "segments": [[index, ffmpeg version, encoder, node], ...]}."""
    import signal
    import tempfile

    import ray
    import yaml
    from ray.cluster_utils import Cluster

    from montage_ray import encode
    from montage_ray.cluster.pool import PoolOptions
    from montage_ray.cluster.session import join_drains

    src, dst, report_path, head_ffmpeg, *node_ffmpegs = argv
    labels = MIXED_LABELS[:len(node_ffmpegs)]

    def give_up(signum, frame):
        raise TimeoutError(f"the mixed-version job did not finish within {MIXED_LIMIT_S} s")

    signal.signal(signal.SIGALRM, give_up)
    signal.alarm(MIXED_LIMIT_S)
    common = {"node_ip_address": "127.0.0.1", "object_store_memory": 100 * 1024 * 1024}
    cluster = Cluster(initialize_head=True, head_node_args={**common, "num_cpus": 1, "include_dashboard": False,
                                                            "env_vars": {"MONTAGE_FFMPEG": head_ffmpeg}})
    try:
        for label, ffmpeg in zip(labels, node_ffmpegs):
            cluster.add_node(**common, num_cpus=0, resources={label: 1}, env_vars={"MONTAGE_FFMPEG": ffmpeg})
        cluster.wait_for_nodes(timeout=60)
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        config = os.path.join(tempfile.mkdtemp(prefix="montage-mixed-"), "encoders.yaml")
        standin = {"backend": "cpu", "standin": True, "preset": "ultrafast"}
        with open(config, "w", encoding="utf-8") as fh:
            yaml.safe_dump({"labels": {**{label: standin for label in labels}, "cpu": {"preset": "ultrafast"}}}, fh)
        report = encode(src, dst, encoders_config=config, segment_seconds=1, report=report_path,
                        pool_options=PoolOptions(duplicate_tail=False, stall_timeout=120, min_timeout=60))
        print(json.dumps({"frames": report.frames, "segments": [[s.segment, s.ffmpeg, s.encoder, s.node]
                                                                for s in report.segments]}))
    finally:
        signal.alarm(60)  # shutting down is bounded too
        join_drains()
        ray.shutdown()
        cluster.shutdown()
        signal.alarm(0)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--mixed"]:
        # Every node listens on 127.0.0.1 only; without this Ray turns 127.0.0.1 into the machine's outward
        # IP, where nothing of this cluster listens, and retries the GCS there (see scripts/simulate_cluster.py).
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if sys.argv[1:2] == ["--cases"]:
        sys.exit(cases(sys.argv[2:]))
    sys.exit(mixed(sys.argv[2:]) if sys.argv[1:2] == ["--mixed"] else main(sys.argv[1:]))
