"""Run several montage-ray jobs in ONE local Ray session, with whatever MONTAGE_FFMPEG/MONTAGE_FFPROBE the
environment names (tests/test_versions.py starts one per ffmpeg version). Prints one JSON object:
{clip: {"ok": true, "ffmpeg": [versions of the segments], "frames": N} or {"ok": false, "error": "..."}}.

    python tests/version_job.py OUT_DIR CLIP=SRC.ext:DST.ext ...
"""

from __future__ import annotations

import json
import os
import sys


def main(argv: list[str]) -> int:
    import ray

    from montage_ray import encode
    from montage_ray.errors import MontageError

    out_dir, jobs = argv[0], argv[1:]
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    results = {}
    try:
        for job in jobs:
            name, paths = job.split("=", 1)
            src, ext = paths.rsplit(":", 1)
            dst = os.path.join(out_dir, f"{name}{ext}")
            try:
                report = encode(src, dst, preset="ultrafast", segment_seconds=1)
                results[name] = {"ok": True, "dst": dst, "frames": report.frames,
                                 "segments": len(report.segments),
                                 "ffmpeg": sorted({s.ffmpeg for s in report.segments})}
            except MontageError as err:
                results[name] = {"ok": False, "error": str(err)}
    finally:
        ray.shutdown()
    print(json.dumps(results))
    return 0



def mixed(argv: list[str]) -> int:
    """--mixed SRC DST F_HEAD F_A F_B: a simulated cluster whose nodes run three different ffmpeg builds
    (per-node MONTAGE_FFMPEG through the raylet's environment); the driver keeps its own ffmpeg."""
    import tempfile

    import ray
    import yaml
    from ray.cluster_utils import Cluster

    from montage_ray import encode

    src, dst, head_ffmpeg, a_ffmpeg, b_ffmpeg = argv
    common = {"node_ip_address": "127.0.0.1", "object_store_memory": 200 * 1024 * 1024}
    cluster = Cluster(initialize_head=True, head_node_args={**common, "num_cpus": 1, "include_dashboard": False,
                                                            "env_vars": {"MONTAGE_FFMPEG": head_ffmpeg}})
    cluster.add_node(**common, num_cpus=0, resources={"vaapi": 1}, env_vars={"MONTAGE_FFMPEG": a_ffmpeg})
    cluster.add_node(**common, num_cpus=0, resources={"nvenc": 1}, env_vars={"MONTAGE_FFMPEG": b_ffmpeg})
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
    config = os.path.join(tempfile.mkdtemp(prefix="montage-mixed-"), "encoders.yaml")
    standin = {"backend": "cpu", "standin": True, "preset": "ultrafast"}
    with open(config, "w", encoding="utf-8") as fh:
        yaml.safe_dump({"labels": {"vaapi": standin, "nvenc": standin, "cpu": {"preset": "ultrafast"}}}, fh)
    try:
        report = encode(src, dst, encoders_config=config, segment_seconds=2)
        print(json.dumps({"frames": report.frames, "segments": [[s.segment, s.ffmpeg, s.encoder]
                                                                for s in report.segments]}))
    finally:
        ray.shutdown()
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(mixed(sys.argv[2:]) if sys.argv[1:2] == ["--mixed"] else main(sys.argv[1:]))
