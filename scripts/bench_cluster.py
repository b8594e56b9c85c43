#!/usr/bin/env python3
"""Benchmark: how well the pool uses a mixed cluster whose encoders are 4x apart in speed.

    .venv/bin/python scripts/bench_cluster.py                 # 120 s 320x240 clip, the layout below
    .venv/bin/python scripts/bench_cluster.py --seconds 60 --json out.json

A simulated cluster (see simulate_cluster.py) runs on this machine: CPU stand-ins capped with ``-readrate``
at 8x, 4x, 4x and 2x realtime under the labels vaapi, nvenc (two sessions) and nvmpi, plus one CPU slot at
2x. The clip is small so the caps, not this machine's cores, set each worker's speed.

Prints the makespan of the encode phase, the ideal makespan (total frames / the sum of every worker's
measured speed) and their ratio (target <= 1.10), each worker's share of the work, and the same job's plain
ffmpeg time on one core for reference. Run it twice in one Ray session (``--jobs 2``) to see the second job
start with the speeds measured in the first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from simulate_cluster import start_cluster, write_config  # noqa: E402  (sets the loopback-only Ray env)

#: label -> (node resources, stand-in settings): speeds 8, 4, 4, 2 (and the CPU slot 2) x realtime.
LAYOUT = {
    "vaapi": ({"vaapi": 1}, {"backend": "cpu", "standin": True, "readrate": 8, "preset": "ultrafast",
                             "threads": 1}),
    "nvenc": ({"nvenc": 2}, {"backend": "cpu", "standin": True, "readrate": 4, "preset": "ultrafast",
                             "threads": 1}),
    "nvmpi": ({"nvmpi": 1}, {"backend": "cpu", "standin": True, "readrate": 2, "preset": "ultrafast",
                             "threads": 1}),
}
CPU = {"readrate": 2, "preset": "ultrafast", "threads": 1}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--segment-seconds", type=float, default=None, help="default: montage-ray's own choice")
    ap.add_argument("--jobs", type=int, default=2, help="jobs in one Ray session (default 2)")
    ap.add_argument("--json", default=None, help="also write the figures as JSON here")
    args = ap.parse_args()

    import ray

    from montage_ray import encode

    work = tempfile.mkdtemp(prefix="montage-benchc-")
    src = os.path.join(work, "source.mp4")
    subprocess.run(["ffmpeg", "-hide_banner", "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size={args.size}:rate=30:duration={args.seconds}", "-c:v", "libx264",
                    "-preset", "ultrafast", "-g", "30", src], check=True)
    started = time.monotonic()
    subprocess.run(["ffmpeg", "-hide_banner", "-v", "error", "-y", "-i", src, "-c:v", "libx264", "-preset",
                    "ultrafast", "-threads", "1", "-f", "null", "-"], check=True)
    plain = time.monotonic() - started

    config = os.path.join(work, "encoders.yaml")
    write_config(LAYOUT, CPU, config)
    cluster, _ = start_cluster(LAYOUT, head_cpus=1)
    results = []
    try:
        for job in range(1, args.jobs + 1):
            out = os.path.join(work, f"out-{job}.mp4")
            report = encode(src, out, encoders_config=config, segment_seconds=args.segment_seconds,
                            preset="ultrafast", overwrite=True)
            per_actor: dict[str, list[float]] = {}
            for s in report.segments:
                row = per_actor.setdefault(s.actor, [0, 0.0])
                row[0] += s.frames
                row[1] += s.seconds
            speeds = {a: f / t for a, (f, t) in per_actor.items() if t > 0}
            # a worker that took no segment still counts at its configured cap
            for w in report.workers:
                if w["name"] not in speeds:
                    label = w["label"]
                    cap = (LAYOUT[label][1] if label in LAYOUT else CPU)["readrate"]
                    speeds[w["name"]] = cap * 30
            ideal = report.frames / sum(speeds.values())
            makespan = report.timings["encode"]
            results.append({"job": job, "segments": len(report.segments), "frames": report.frames,
                            "makespan": makespan, "ideal": ideal, "ratio": makespan / ideal,
                            "duplicates": report.duplicates, "wall": report.wall_seconds,
                            "wall_ratio": report.wall_seconds / ideal, "timings": report.timings,
                            "shares": {a: per_actor.get(a, [0])[0] / report.frames for a in speeds},
                            "speeds": speeds})
            print(f"job {job}: {len(report.segments)} segments, encode makespan {makespan:.2f} s, ideal "
                  f"{ideal:.2f} s, ratio {makespan / ideal:.3f} (target <= 1.10), {report.duplicates} tail "
                  f"duplicates, wall {report.wall_seconds:.2f} s = {report.wall_seconds / ideal:.3f}x ideal (target <= 1.10)")
            print("    phases: " + ", ".join(f"{k} {v:.2f} s" for k, v in report.timings.items())
                  + f"; not in a phase {report.wall_seconds - sum(report.timings.values()):.2f} s")
            for actor, speed in sorted(speeds.items(), key=lambda kv: -kv[1]):
                share = per_actor.get(actor, [0])[0] / report.frames
                print(f"    {actor:<52} {speed:7.1f} fps  {100 * share:5.1f}% of the frames")
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(f"plain ffmpeg, one thread, same clip: {plain:.2f} s (the caps above sum to "
          f"{sum(v[1]['readrate'] * v[0].get(k, 1) for k, v in LAYOUT.items()) + CPU['readrate']:.0f}x realtime)")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"plain_one_thread": plain, "jobs": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
