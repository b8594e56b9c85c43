#!/usr/bin/env python3
"""Benchmark: plain ffmpeg (all threads) against montage-ray on this machine, same input, same settings.

    .venv/bin/python scripts/bench.py                       # 60 s 1080p lavfi clip, libx264 veryfast
    .venv/bin/python scripts/bench.py --seconds 20 --size 1280x720 --preset medium --json out.json
    .venv/bin/python scripts/bench.py --codec hevc --preset fast
    .venv/bin/python scripts/bench.py --runs 1 --verify packets    # one cold job; actors count packets only

Prints, from the same run: plain ffmpeg; the *limit line* (the same pieces montage-ray encodes, encoded
side by side by plain single-thread ffmpeg processes, one per core: what splitting can reach on this host
at best); montage-ray's wall time, its ratio to plain ffmpeg and its share of the limit line; the phases;
the serial share (wall time not overlapped by any segment encode: what the driver alone costs) and the
driver's peak memory. Ray's start-up is timed on its own (a long-lived cluster pays it once, not per job).
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
from concurrent.futures import ThreadPoolExecutor


def sh(args: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(args, check=True)
    return time.monotonic() - started


def frames(path: str) -> int:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets", "-show_entries",
                          "stream=nb_read_packets", "-of", "csv=p=0", path], check=True, capture_output=True,
                         text=True).stdout
    return int(out.strip())


def limit_line(src: str, codec: str, preset: str, quality: int, frames: list[int], work: str,
               cpus: int) -> tuple[float, int]:
    """Cut ``src`` into the pieces the job used (``frames``: its segments' frame counts, in order) and encode
    them with plain single-thread ffmpeg, ``cpus`` at a time; (wall seconds, pieces). Uses montage-ray's own
    cut and encoder arguments, so only Ray is absent."""
    from montage_ray.encoders.backends import cpu_spec
    from montage_ray.media.info import inspect
    from montage_ray.media.plan import segments_at
    from montage_ray.ffmpeg import commands
    from montage_ray.ffmpeg.caps import ffmpeg_caps
    from montage_ray.encoders.segment import video_output_args
    from montage_ray.media.cut import split_source

    info = inspect(src)
    plan = segments_at(info.packets, info.video.time_base, frames)
    pieces_dir = os.path.join(work, "limit")
    os.makedirs(pieces_dir, exist_ok=True)
    pieces = split_source(info, plan, pieces_dir)
    spec = cpu_spec(codec, quality=quality, preset=preset, threads=1)
    by_size = sorted(zip(plan, pieces), key=lambda sp: os.path.getsize(sp[1]), reverse=True)  # the largest first
    cmds = [commands.encode_command(spec, p, p + ".mp4", caps=ffmpeg_caps(), video_args=video_output_args(info.video, spec),
                                    keep=seg.keep)  # a piece cut between keyframes drops what it decodes before its cut
            for seg, p in by_size]
    started = time.monotonic()
    with ThreadPoolExecutor(cpus) as side:  # one process per core, the largest pieces first
        list(side.map(lambda c: subprocess.run(c, check=True), cmds))
    return time.monotonic() - started, len(pieces)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--rate", default="30")
    ap.add_argument("--codec", default="h264", choices=["h264", "hevc", "av1"])
    ap.add_argument("--preset", default="veryfast", help="preset name, as montage-ray takes it (SVT-AV1 maps it: fast = 8, medium = 7)")
    ap.add_argument("--quality", type=int, default=23)
    ap.add_argument("--segment-seconds", type=float, default=10,
                    help="segment length; 0: montage-ray chooses (about six per encoder, a tapered tail)")
    ap.add_argument("--workers", type=int, default=None, help="encoder actors (default: one per CPU)")
    ap.add_argument("--source", default=None, help="use this file instead of generating one")
    ap.add_argument("--json", default=None, help="also write the figures as JSON here")
    ap.add_argument("--runs", type=int, default=2,
                    help="jobs in a row on one Ray; the figures are the last one's (the first also starts the "
                         "encoder actors: its wall time is printed as the cold start)")
    ap.add_argument("--verify", default="decode", choices=["decode", "packets"])
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

    from montage_ray.encoders.backends import cpu_spec

    plain_out = os.path.join(work, "plain.mp4")
    all_threads = cpu_spec(args.codec, quality=args.quality, preset=args.preset, threads=0)
    plain = sh(["ffmpeg", "-hide_banner", "-v", "error", "-y", "-i", src, "-map", "0:v:0", "-map", "0:a?",
                *all_threads.codec_args, "-pix_fmt", "yuv420p", "-c:a", "copy", plain_out])
    print(f"plain ffmpeg ({' '.join(all_threads.codec_args)}), all {cpus} threads: {plain:.2f} s "
          f"({n / plain:.1f} fps)", flush=True)

    started = time.monotonic()
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    ray_start = time.monotonic() - started
    walls = []
    try:
        out = os.path.join(work, "montage.mp4")
        for _ in range(max(1, args.runs)):  # the first job starts the actors; the next ones reuse them
            report = encode(src, out, codec=args.codec, preset=args.preset, quality=args.quality,
                            segment_seconds=args.segment_seconds or None, workers=args.workers, overwrite=True,
                            verify=args.verify)
            walls.append(report.wall_seconds)
    finally:
        ray.shutdown()
    wall = report.wall_seconds
    limit, limit_pieces = limit_line(src, args.codec, args.preset, args.quality,
                                     [r.frames for r in sorted(report.segments, key=lambda r: r.segment)],
                                     work, args.workers or cpus)
    starts = [r.started for r in report.segments]
    ends = [r.started + r.seconds for r in report.segments]
    encode_span = max(ends) - min(starts) if starts else 0.0
    serial = max(0.0, wall - encode_span)
    # where the serial time sits: before the first encode began, and after the last one ended
    lead = (min(starts) - report.started) if starts else 0.0
    tail = (report.started + wall - max(ends)) if ends else 0.0
    actors = len({s.actor for s in report.segments}) or 1
    busy = sum(r.seconds for r in report.segments) + sum(f.seconds for f in report.failures)
    utilisation = busy / (actors * encode_span) if encode_span > 0 else 0.0
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sizes = {"plain": os.path.getsize(plain_out), "montage": os.path.getsize(out)}
    figures = {
        "input": {"seconds": args.seconds, "size": args.size, "frames": n, "preset": args.preset,
                  "cpus": cpus, "segments": len(report.segments), "actors": len({s.actor for s in report.segments})},
        "plain_seconds": plain, "montage_seconds": wall, "job_walls": walls, "verify": args.verify, "ray_start_seconds": ray_start,
        "speedup": plain / wall, "timings": report.timings, "codec": args.codec,
        "limit_seconds": limit, "limit_pieces": limit_pieces, "limit_speedup": plain / limit,
        "share_of_limit": limit / wall, "encode_span_seconds": encode_span, "serial_seconds": serial,
        "serial_share": serial / wall, "lead_seconds": lead, "tail_seconds": tail,
        "actor_utilisation": utilisation, "encode_seconds_sum": busy,
        "probe_share_of_encode": report.timings.get("probe", 0) / max(report.timings.get("encode", 1e-9), 1e-9),
        "driver_peak_rss_mb": peak_rss_mb, "bytes": sizes,
        "segments": [{"segment": r.segment, "actor": r.actor, "started": r.started - report.started,
                      "seconds": r.seconds, "frames": r.frames} for r in report.segments],
    }
    print(report.summary())
    print(f"montage-ray ({figures['input']['actors']} actors, {len(report.segments)} segments): {wall:.2f} s "
          f"({n / wall:.1f} fps); Ray start-up {ray_start:.2f} s, not counted")
    if len(walls) > 1:
        print(f"job walls in a row: {', '.join(f'{w:.2f} s' for w in walls)} (the first started the actors; "
              f"figures below are the last job's)")
    print(f"ratio plain/montage-ray: {plain / wall:.2f}x  (above 1 means montage-ray is faster)")
    print(f"limit line: the same {limit_pieces} pieces, plain single-thread ffmpeg, {args.workers or cpus} side by "
          f"side: {limit:.2f} s = {plain / limit:.2f}x plain; montage-ray reaches {100 * limit / wall:.0f}% of it")
    print(f"serial share: {serial:.2f} s of {wall:.2f} s ({100 * serial / wall:.1f}%) not overlapped by any "
          f"segment encode (encodes span {encode_span:.2f} s)")
    print(f"  before the first encode {lead:.2f} s, after the last {tail:.2f} s; actors busy {100 * utilisation:.0f}% "
          f"of the span ({busy:.1f} s of encoding, failed tries included, on {actors} actors)")
    print("phases: " + ", ".join(f"{k} {v:.2f} s ({100 * v / wall:.1f}%)" for k, v in report.timings.items()))
    print(f"probe / encode: {100 * figures['probe_share_of_encode']:.2f}%   driver peak RSS: {peak_rss_mb:.0f} MB   "
          f"sizes: plain {sizes['plain'] / 1e6:.1f} MB, montage-ray {sizes['montage'] / 1e6:.1f} MB")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(figures, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
