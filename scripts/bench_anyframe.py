#!/usr/bin/env python3
"""Benchmark: splits at any frame on a one-keyframe source, against plain ffmpeg and keyframe-only cutting.

    .venv/bin/python scripts/bench_anyframe.py                      # 30 s 640x360, one keyframe, veryfast
    .venv/bin/python scripts/bench_anyframe.py --seconds 60 --size 1280x720 --preset ultrafast

Prints, from the same run: the cost of decoding a frame against encoding it (one thread each: what
``montage_ray.media.plan.DECODE_COST`` stands for), plain ffmpeg (all threads), montage-ray cutting only at clean
keyframes (one segment on one actor: what a one-keyframe source got before) and montage-ray cutting at any
frame (the default): segments, frames decoded only to be dropped, wall times and ratios. Ray and the actors
start once, in an untimed warm-up job.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time


def sh(args: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(args, check=True)
    return time.monotonic() - started


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--preset", default="veryfast")
    ap.add_argument("--segment-seconds", type=float, default=None, help="default: montage-ray's own choice")
    ap.add_argument("--workers", type=int, default=None, help="encoder actors (default: one per CPU)")
    args = ap.parse_args()

    import ray

    from montage_ray import encode
    from montage_ray.job import run
    from montage_ray.media.info import inspect
    from montage_ray.media.plan import DECODE_COST, plan_segments

    work = tempfile.mkdtemp(prefix="montage-anyframe-")
    src = os.path.join(work, "onekey.mp4")
    print(f"making a {args.seconds:g} s {args.size} clip with one keyframe ...", flush=True)
    sh(["ffmpeg", "-hide_banner", "-v", "error", "-y", "-f", "lavfi", "-i",
        f"testsrc2=size={args.size}:rate=30:duration={args.seconds}", "-c:v", "libx264", "-preset", "veryfast",
        "-bf", "3", "-g", "1000000", "-sc_threshold", "0", src])
    frames = inspect(src).video.frames

    decode = sh(["ffmpeg", "-hide_banner", "-v", "error", "-threads", "1", "-i", src, "-f", "null", "-"])
    enc = sh(["ffmpeg", "-hide_banner", "-v", "error", "-threads", "1", "-i", src, "-c:v", "libx264", "-preset",
              args.preset, "-threads", "1", "-f", "null", "-"])
    print(f"decode one thread {decode:.2f} s, decode + encode ({args.preset}) one thread {enc:.2f} s: "
          f"a decoded frame costs {decode / max(enc - decode, 1e-9):.2f} of an encoded one", flush=True)
    plain = sh(["ffmpeg", "-hide_banner", "-v", "error", "-y", "-i", src, "-c:v", "libx264", "-preset", args.preset,
                "-pix_fmt", "yuv420p", os.path.join(work, "plain.mp4")])
    print(f"plain ffmpeg, all {os.cpu_count()} threads: {plain:.2f} s ({frames / plain:.1f} fps)", flush=True)

    ray.init(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        results, plans = {}, {}
        encode(src, os.path.join(work, "warm-up.mp4"), preset="ultrafast", segment_seconds=args.segment_seconds,
               workers=args.workers, overwrite=True)  # starts the actors: both timed jobs reuse them
        for name, any_frame in (("keyframes only", False), ("any frame", True)):
            # the job plans with plan_segments; keyframe-only cutting is the same call with any_frame=False
            def planned(*a, _name=name, _any=any_frame, **kw):
                plans[_name] = plan_segments(*a, any_frame=_any, **kw)
                return plans[_name]

            run.plan_segments = planned
            report = encode(src, os.path.join(work, f"out-{any_frame}.mp4"), preset=args.preset,
                            segment_seconds=args.segment_seconds, workers=args.workers, overwrite=True)
            results[name] = report
            dropped = sum(s.dropped for s in plans[name])
            print(f"montage-ray, {name}: {report.wall_seconds:.2f} s, {len(report.segments)} segments "
                  f"({', '.join(str(s.frames) for s in plans[name])} frames, {dropped} more decoded to be dropped: "
                  f"{100 * DECODE_COST * dropped / frames:.0f}% more work) on {len({s.actor for s in report.segments})} actors; "
                  f"ratio plain/montage-ray {plain / report.wall_seconds:.2f}x", flush=True)
        run.plan_segments = plan_segments
    finally:
        ray.shutdown()
    print(f"any frame against keyframes only: "
          f"{results['keyframes only'].wall_seconds / results['any frame'].wall_seconds:.2f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
