#!/usr/bin/env python3
"""Benchmark: plain ffmpeg (all threads) against montage-ray on this machine, same input, same settings.

    .venv/bin/python scripts/bench.py                       # 60 s 1080p lavfi clip, preset veryfast
    .venv/bin/python scripts/bench.py --seconds 20 --size 1280x720 --preset medium --json out.json

Prints wall times, the ratio, montage-ray's phases (probe, plan, split, encode, join, verify), the probe's
share of the encode time and the driver's peak memory. Ray's start-up is timed on its own (a long-lived
cluster pays it once, not per job).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def sh(args: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(args, check=True)
    return time.monotonic() - started


def frames(path: str) -> int:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets", "-show_entries",
                          "stream=nb_read_packets", "-of", "csv=p=0", path], check=True, capture_output=True,
                         text=True).stdout
    return int(out.strip())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--rate", default="30")
    ap.add_argument("--preset", default="veryfast")
    ap.add_argument("--quality", type=int, default=23)
    ap.add_argument("--segment-seconds", type=float, default=10)
    ap.add_argument("--workers", type=int, default=None, help="encoder actors (default: one per CPU)")
    ap.add_argument("--source", default=None, help="use this file instead of generating one")
    ap.add_argument("--json", default=None, help="also write the figures as JSON here")
    args = ap.parse_args()

    import ray

    from montage_ray import encode

    work = tempfile.mkdtemp(prefix="montage-bench-")
    src = args.source or os.path.join(work, "source.mp4")
    if not args.source:
        print(f"making a {args.seconds:g} s {args.size} clip ...", flush=True)
        sh(["ffmpeg", "-hide_banner", "-v", "error", "-y",
            "-f", "lavfi", "-i", f"testsrc2=size={args.size}:rate={args.rate}:duration={args.seconds}",
            "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={args.seconds}",
            "-c:v", "libx264", "-preset", "ultrafast", "-g", "60", "-c:a", "aac", src])
    n = frames(src)
    cpus = os.cpu_count() or 1

    plain_out = os.path.join(work, "plain.mp4")
    plain = sh(["ffmpeg", "-hide_banner", "-v", "error", "-y", "-i", src, "-map", "0", "-c:v", "libx264",
                "-preset", args.preset, "-crf", str(args.quality), "-pix_fmt", "yuv420p", "-c:a", "copy",
                plain_out])
    print(f"plain ffmpeg, all {cpus} threads: {plain:.2f} s ({n / plain:.1f} fps)", flush=True)

    started = time.monotonic()
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    ray_start = time.monotonic() - started
    try:
        out = os.path.join(work, "montage.mp4")
        report = encode(src, out, preset=args.preset, quality=args.quality,
                        segment_seconds=args.segment_seconds, workers=args.workers, overwrite=True)
    finally:
        ray.shutdown()
    wall = report.wall_seconds
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sizes = {"plain": os.path.getsize(plain_out), "montage": os.path.getsize(out)}
    figures = {
        "input": {"seconds": args.seconds, "size": args.size, "frames": n, "preset": args.preset,
                  "cpus": cpus, "segments": len(report.segments), "actors": len({s.actor for s in report.segments})},
        "plain_seconds": plain, "montage_seconds": wall, "ray_start_seconds": ray_start,
        "speedup": plain / wall, "timings": report.timings,
        "probe_share_of_encode": report.timings.get("probe", 0) / max(report.timings.get("encode", 1e-9), 1e-9),
        "driver_peak_rss_mb": peak_rss_mb, "bytes": sizes,
    }
    print(report.summary())
    print(f"montage-ray ({figures['input']['actors']} actors, {len(report.segments)} segments): {wall:.2f} s "
          f"({n / wall:.1f} fps); Ray start-up {ray_start:.2f} s, not counted")
    print(f"ratio plain/montage-ray: {plain / wall:.2f}x  (above 1 means montage-ray is faster)")
    print("phases: " + ", ".join(f"{k} {v:.2f} s ({100 * v / wall:.1f}%)" for k, v in report.timings.items()))
    print(f"probe / encode: {100 * figures['probe_share_of_encode']:.2f}%   driver peak RSS: {peak_rss_mb:.0f} MB   "
          f"sizes: plain {sizes['plain'] / 1e6:.1f} MB, montage-ray {sizes['montage'] / 1e6:.1f} MB")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(figures, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
