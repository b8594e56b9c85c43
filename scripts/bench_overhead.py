#!/usr/bin/env python3
"""What one segment costs beyond its frames, per encoder: the figures behind the planner's overhead table.

The same frames are encoded through the actor's own code path (:func:`montage_ray.encoders.segment.encode_segment`:
scratch folder, ffmpeg with one thread, the check, reading the output back) once as ``--pieces`` short
segments and once as one long segment. The time of a run is ``segments x overhead + frames / fps``, so two
runs give both numbers: ``overhead = (short - long) / (pieces - 1)``. Every core runs its own copy of the
pair at once (as a job's actors do, so the caches and memory bandwidth are shared as in a job), and each
copy's figures are kept; the medians are printed::

    python3 scripts/bench_overhead.py                                    # 720p x264 veryfast, both checks
    python3 scripts/bench_overhead.py --size 1920x1080 --codec hevc --preset fast --json out.json
    python3 scripts/bench_overhead.py --codec av1 --preset fast --checks packets

``overhead`` is the process start, the encoder's start-up and lookahead, the extra keyframe, the muxer's
second pass and the check's own start; with ``decode`` the check's decode of every frame shows up as a
lower ``fps`` (it grows with the frames, not with the segment count).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--rate", default="30")
    ap.add_argument("--codec", default="h264", choices=["h264", "hevc", "av1"])
    ap.add_argument("--preset", default="veryfast")
    ap.add_argument("--seconds", type=float, default=8.0, help="frames of one long segment (seconds)")
    ap.add_argument("--pieces", type=int, default=8, help="short segments the same frames are cut into")
    ap.add_argument("--checks", nargs="+", default=["packets", "decode"], choices=["packets", "decode"])
    ap.add_argument("--copies", type=int, default=os.cpu_count() or 1, help="side by side (default: one per core)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from montage_ray.encoders.backends import cpu_spec
    from montage_ray.encoders.segment import encode_segment, video_output_args
    from montage_ray.media.cut import split_source
    from montage_ray.media.info import inspect
    from montage_ray.media.plan import plan_segments

    work = tempfile.mkdtemp(prefix="montage-overhead-")
    src = os.path.join(work, "source.mp4")
    gop = max(1, int(float(args.rate) * args.seconds / args.pieces))  # a clean keyframe at every short cut
    subprocess.run(["ffmpeg", "-hide_banner", "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size={args.size}:rate={args.rate}:duration={args.seconds}", "-c:v", "libx264",
                    "-preset", "ultrafast", "-g", str(gop), src], check=True)
    info = inspect(src)
    tb = info.video.time_base
    short = plan_segments(info.packets, tb, args.seconds / args.pieces, any_frame=False)
    whole = plan_segments(info.packets, tb, 2 * args.seconds + 1)
    for sub in ("s", "w"):
        os.makedirs(os.path.join(work, sub))
    short_data = [open(p, "rb").read() for p in split_source(info, short, os.path.join(work, "s"))]
    whole_data = [open(p, "rb").read() for p in split_source(info, whole, os.path.join(work, "w"))]
    spec = cpu_spec(args.codec, preset=args.preset, threads=1)
    va = video_output_args(info.video, spec)
    frames = len(info.packets)
    print(f"{args.codec} {args.preset} {args.size}: {frames} frames as {len(short)} segments and as 1, "
          f"{args.copies} copies side by side", flush=True)

    def run(segments, datas, decode: bool) -> float:
        started = time.monotonic()
        for seg, data in zip(segments, datas):
            encode_segment(spec, seg, data, video_args=va, decode=decode, workdir=work)
        return time.monotonic() - started

    figures = {"codec": args.codec, "preset": args.preset, "size": args.size, "frames": frames,
               "pieces": len(short), "copies": args.copies, "checks": {}}
    run(whole, whole_data, False)  # warm the page cache and the dynamic loader
    for check in args.checks:
        decode = check == "decode"

        def pair(_: int) -> tuple[float, float]:
            return run(short, short_data, decode), run(whole, whole_data, decode)

        with ThreadPoolExecutor(args.copies) as side:
            pairs = list(side.map(pair, range(args.copies)))
        overheads = [(s - w) / (len(short) - 1) for s, w in pairs]
        fps = [frames / max(1e-9, w - o) for (s, w), o in zip(pairs, overheads)]
        row = {"overhead_seconds": statistics.median(overheads), "fps": statistics.median(fps),
               "short_seconds": statistics.median(s for s, _ in pairs),
               "long_seconds": statistics.median(w for _, w in pairs),
               "overhead_frames": statistics.median(o * f for o, f in zip(overheads, fps))}
        figures["checks"][check] = row
        print(f"  check {check:<7}: overhead {row['overhead_seconds'] * 1000:.0f} ms a segment "
              f"(= {row['overhead_frames']:.1f} frames), {row['fps']:.1f} fps a core; {len(short)} segments "
              f"{row['short_seconds']:.2f} s, 1 segment {row['long_seconds']:.2f} s (medians of {args.copies})",
              flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(figures, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
