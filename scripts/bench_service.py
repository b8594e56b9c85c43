#!/usr/bin/env python3
"""Benchmark: two jobs at once on the encoder service against the same two jobs one after the other.

    .venv/bin/python scripts/bench_service.py                 # two 30 s 320x240 clips, 2 s segments
    .venv/bin/python scripts/bench_service.py --seconds 60 --rounds 2

A simulated cluster (see simulate_cluster.py) runs on this machine: one CPU slot and a ``vaapi`` node, both
CPU stand-ins capped with ``-readrate`` so the caps, not this machine's cores, set the encoders' speed. Each
job is a driver process of its own (``montage-ray encode --address``), as on a real cluster. The script
times job A then job B (sequential), and A and B started together (concurrent), alternating the order of
the two modes over ``--rounds``, and prints each mode's total throughput (frames of both jobs per second of
wall time, from the first driver's start to the last one's end) and their ratio, which must not be below 1:
sharing the service must not cost throughput (while one job inspects, cuts, joins and verifies, the other
one's segments keep the actors busy).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from simulate_cluster import start_cluster, write_config  # noqa: E402  (sets the loopback-only Ray env)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30, help="length of each job's clip")
    ap.add_argument("--segment-seconds", type=float, default=2)
    ap.add_argument("--readrate", type=float, default=2, help="each stand-in's cap (x realtime)")
    ap.add_argument("--rounds", type=int, default=1, help="sequential + concurrent pairs (default 1)")
    ap.add_argument("--json", default=None, help="also write the figures as JSON here")
    args = ap.parse_args()

    import ray

    work = tempfile.mkdtemp(prefix="montage-benchs-")
    clips = []
    for name, pattern in (("a", "testsrc2"), ("b", "mandelbrot")):
        path = os.path.join(work, f"{name}.mp4")
        subprocess.run(["ffmpeg", "-hide_banner", "-v", "error", "-y", "-f", "lavfi", "-i",
                        f"{pattern}=size=320x240:rate=30", "-t", f"{args.seconds:g}", "-c:v", "libx264",
                        "-preset", "ultrafast", "-g", "30", path], check=True)
        clips.append(path)
    layout = {"vaapi": ({"vaapi": 1}, {"backend": "cpu", "standin": True, "readrate": args.readrate,
                                      "preset": "ultrafast", "threads": 1})}
    config = os.path.join(work, "encoders.yaml")
    write_config(layout, {"readrate": args.readrate, "preset": "ultrafast", "threads": 1}, config)
    cluster, _ = start_cluster(layout, head_cpus=1)
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

    def driver(i: int, src: str, tag: str) -> subprocess.Popen:
        dst = os.path.join(work, f"{tag}-{i}.mp4")
        return subprocess.Popen([sys.executable, "-m", "montage_ray", "encode", src, dst, "--quiet", "--overwrite",
                                 "--address", cluster.address, "--encoders-config", config, "--segment-seconds",
                                 f"{args.segment_seconds:g}", "--preset", "ultrafast", "--verify", "packets",
                                 "--report", dst + ".json"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def finish(proc: subprocess.Popen) -> None:
        _, err = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(f"a job failed: {err.strip()[-500:]}")

    def frames(tag: str) -> int:
        total = 0
        for i in range(2):
            with open(os.path.join(work, f"{tag}-{i}.mp4.json"), encoding="utf-8") as fh:
                total += json.load(fh)["frames"]
        return total

    def sequential(tag: str) -> float:
        started = time.monotonic()
        for i, src in enumerate(clips):
            finish(driver(i, src, tag))
        return time.monotonic() - started

    def concurrent(tag: str) -> float:
        started = time.monotonic()
        procs = [driver(i, src, tag) for i, src in enumerate(clips)]
        for proc in procs:
            finish(proc)
        return time.monotonic() - started

    results: dict[str, list[float]] = {"sequential": [], "concurrent": []}
    try:
        finish(driver(9, clips[0], "warm"))  # the service's actors start once, outside the timings
        for r in range(args.rounds):
            order = [("sequential", sequential), ("concurrent", concurrent)]
            for mode, run in (order if r % 2 == 0 else order[::-1]):
                tag = f"{mode}{r}"
                wall = run(tag)
                results[mode].append(frames(tag) / wall)
                print(f"round {r + 1} {mode:10s}: 2 jobs, {frames(tag)} frames in {wall:6.2f} s = "
                      f"{frames(tag) / wall:6.1f} frames/s", flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
    seq = sum(results["sequential"]) / len(results["sequential"])
    con = sum(results["concurrent"]) / len(results["concurrent"])
    print(f"throughput: one after the other {seq:.1f} frames/s, at once {con:.1f} frames/s: "
          f"{con / seq:.2f}x ({'not lower' if con >= seq else 'LOWER'})")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"sequential": results["sequential"], "concurrent": results["concurrent"],
                       "ratio": con / seq}, fh, indent=2)
    return 0 if con >= seq else 1


if __name__ == "__main__":
    sys.exit(main())
