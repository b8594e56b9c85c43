#!/usr/bin/env python3
"""How fast can one driver feed? Many actors served by a PASS-THROUGH STAND-IN (stream copy, no encode).

Every segment is cut, shipped through Ray's object store to an actor, "encoded" by a stand-in that only
stream-copies its packets (and checks them, as a real encoder's actor does), shipped back, joined and
verified: everything a job does except the encoding itself. The result says how many realtime seconds of
video one driver can cut, ship, join and verify per second, and so how many fast hardware nodes it can
keep busy. Nothing here is an encode: the stand-in is named so in the config, the actor names, the logs
and the report::

    .venv/bin/python scripts/bench_driver.py                      # 120 s 1080p30, 16 stand-in actors, 2 s segments
    .venv/bin/python scripts/bench_driver.py --seconds 60 --actors 8 --segment-seconds 4 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

LABEL = "passthrough-standin"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=120)
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--rate", default="30")
    ap.add_argument("--actors", type=int, default=16, help="pass-through stand-in actors")
    ap.add_argument("--segment-seconds", type=float, default=2)
    ap.add_argument("--verify", default="packets", choices=["decode", "packets"],
                    help="packets (default): the actors count; decode: each also decodes its segment in full, "
                         "as real actors do on their own nodes (on one host that decode competes with the driver)")
    ap.add_argument("--source", default=None, help="use this file (H.264) instead of generating one")
    ap.add_argument("--json", default=None)
    ap.add_argument("--runs", type=int, default=2, help="jobs in a row on one Ray; figures are the last one's")
    args = ap.parse_args()

    import ray

    from montage_ray import encode

    work = tempfile.mkdtemp(prefix="montage-bench-driver-")
    src = args.source or os.path.join(work, "source.mp4")
    if not args.source:
        print(f"making a {args.seconds:g} s {args.size}@{args.rate} clip ...", flush=True)
        subprocess.run(["ffmpeg", "-hide_banner", "-v", "error", "-y",
                        "-f", "lavfi", "-i", f"testsrc2=size={args.size}:rate={args.rate}:duration={args.seconds}",
                        "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={args.seconds}",
                        "-c:v", "libx264", "-preset", "ultrafast", "-g", str(int(float(args.rate))),
                        "-c:a", "aac", src], check=True)
    config = os.path.join(work, "encoders.yaml")
    with open(config, "w", encoding="utf-8") as fh:  # the stand-in, named as such
        fh.write(f"labels:\n  {LABEL}: {{standin: true, passthrough: true, expected_fps: 3000}}\n")
    print(f"STAND-IN: {args.actors} pass-through actors (stream copy, NO ENCODE): this measures the driver only",
          flush=True)
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="WARNING",
             resources={LABEL: args.actors})
    walls = []
    try:
        out = os.path.join(work, "out.mp4")
        for _ in range(max(1, args.runs)):  # the first job starts the actors; the next ones reuse them
            report = encode(src, out, encoders_config=config, labels=[LABEL], segment_seconds=args.segment_seconds,
                            verify=args.verify, overwrite=True)
            walls.append(report.wall_seconds)
    finally:
        ray.shutdown()
    wall = report.wall_seconds
    starts = [r.started for r in report.segments]
    ends = [r.started + r.seconds for r in report.segments]
    span = max(ends) - min(starts)
    realtime = report.duration / wall
    startup = sum(report.timings.get(k, 0.0) for k in ("ray", "probe", "plan"))  # actors start: once per setup
    feed = report.duration / max(1e-9, wall - startup)
    figures = {
        "standin": "pass-through (stream copy, no encode)", "actors": args.actors, "seconds": report.duration,
        "size": args.size, "rate": args.rate, "segments": len(report.segments), "wall_seconds": wall,
        "realtime_multiple": realtime, "feed_realtime_multiple": feed, "startup_seconds": startup, "timings": report.timings, "segment_span_seconds": span,
        "encoders": report.encoders, "verify": args.verify,
        "job_walls": walls, "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    print(report.summary())
    if len(walls) > 1:
        print(f"job walls in a row: {', '.join(f'{w:.2f} s' for w in walls)} (the first started the actors)")
    print(f"driver feed with a PASS-THROUGH stand-in: {report.duration:.0f} s of {args.size}@{args.rate} in "
          f"{wall:.2f} s = {realtime:.1f}x realtime ({len(report.segments)} segments, {args.actors} stand-in actors, "
          f"verify {args.verify})")
    print(f"from cutting to the verified file (actors up; a long-lived Ray reuses them): {wall - startup:.2f} s = "
          f"{feed:.1f}x realtime")
    print("phases: " + ", ".join(f"{k} {v:.2f} s" for k, v in report.timings.items())
          + f"; segments span {span:.2f} s; driver peak RSS {figures['driver_peak_rss_mb']:.0f} MB")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(figures, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
