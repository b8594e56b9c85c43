#!/usr/bin/env python3
"""Benchmark: plain ffmpeg (all threads) against montage-ray on this machine, same input, same settings.

    .venv/bin/python scripts/bench.py                       # 60 s 1080p lavfi clip, libx264 veryfast
    .venv/bin/python scripts/bench.py --seconds 20 --size 1280x720 --preset medium --json out.json
    .venv/bin/python scripts/bench.py --codec hevc --preset fast --rows default
    .venv/bin/python scripts/bench.py --rows default,4 --verify packets

One run prints a row per segment length (``--rows``: ``default`` is the command a user types, montage-ray
choosing the lengths and the checks; the numbers are fixed lengths in seconds), each against plain ffmpeg
measured once in the same run, and for each row its *limit line* (the same pieces that row's job encoded,
encoded side by side by plain single-thread ffmpeg processes, one per core: what splitting can reach on
this host at best), its share of that line, the serial share (wall time not overlapped by any segment
encode: what the driver alone costs), the time before the first encode began, and how the automatic
lengths compare with the best fixed one. The first row runs ``--runs`` jobs in a row on one Ray and
reports the last (the first starts the encoder actors); the other rows reuse those actors. Ray's own
start-up is timed apart (a long-lived cluster pays it once, not per job).
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
    pieces_dir = tempfile.mkdtemp(prefix="limit-", dir=work)
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


def row_figures(report, wall: float, plain: float, limit: float, limit_pieces: int, n: int) -> dict:
    """What one row's last job tells: ratios to plain ffmpeg and to the limit line, the serial share, the
    time before the first encode, the actors' use of the encode span."""
    starts = [r.started for r in report.segments]
    ends = [r.started + r.seconds for r in report.segments]
    encode_span = max(ends) - min(starts) if starts else 0.0
    serial = max(0.0, wall - encode_span)
    actors = len({s.actor for s in report.segments}) or 1
    busy = sum(r.seconds for r in report.segments) + sum(f.seconds for f in report.failures)
    checks: dict[str, int] = {}
    for r in report.segments:
        checks[r.check or "?"] = checks.get(r.check or "?", 0) + 1
    return {
        "segments": len(report.segments), "actors": actors, "wall": wall, "speedup": plain / wall,
        "fps": n / wall, "limit_seconds": limit, "limit_pieces": limit_pieces, "limit_speedup": plain / limit,
        "share_of_limit": limit / wall, "encode_span_seconds": encode_span, "serial_seconds": serial,
        "serial_share": serial / wall, "lead_seconds": (min(starts) - report.started) if starts else 0.0,
        "tail_seconds": (report.started + wall - max(ends)) if ends else 0.0,
        "actor_utilisation": busy / (actors * encode_span) if encode_span > 0 else 0.0,
        "encode_seconds_sum": busy, "timings": report.timings, "checks": checks,
        "lengths": sorted(r.frames for r in report.segments),
        "segment_rows": [{"segment": r.segment, "actor": r.actor, "started": r.started - report.started,
                          "seconds": r.seconds, "frames": r.frames, "check": r.check} for r in report.segments],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--rate", default="30")
    ap.add_argument("--codec", default="h264", choices=["h264", "hevc", "av1"])
    ap.add_argument("--preset", default="veryfast", help="preset name, as montage-ray takes it (SVT-AV1 maps it: fast = 8, medium = 7)")
    ap.add_argument("--quality", type=int, default=23)
    ap.add_argument("--rows", default="default,2,4,10",
                    help="comma-separated rows: 'default' (montage-ray chooses the lengths) and fixed segment "
                         "lengths in seconds (default: default,2,4,10)")
    ap.add_argument("--workers", type=int, default=None, help="encoder actors (default: one per CPU)")
    ap.add_argument("--source", default=None, help="use this file instead of generating one")
    ap.add_argument("--json", default=None, help="also write the figures as JSON here")
    ap.add_argument("--runs", type=int, default=2,
                    help="jobs in a row of the first row on one Ray; its figures are the last one's (the first "
                         "job also starts the encoder actors: its wall time is printed as the cold start)")
    ap.add_argument("--verify", default="auto", choices=["auto", "decode", "packets"])
    args = ap.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    lengths = [None if r in ("default", "0") else float(r) for r in rows]

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
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)

    from montage_ray.encoders.backends import cpu_spec

    plain_out = os.path.join(work, "plain.mp4")
    all_threads = cpu_spec(args.codec, quality=args.quality, preset=args.preset, threads=0)
    plain = sh(["ffmpeg", "-hide_banner", "-v", "error", "-y", "-i", src, "-map", "0:v:0", "-map", "0:a?",
                *all_threads.codec_args, "-pix_fmt", "yuv420p", "-c:a", "copy", plain_out])
    print(f"plain ffmpeg ({' '.join(all_threads.codec_args)}), all {cpus} threads: {plain:.2f} s "
          f"({n / plain:.1f} fps)", flush=True)

    started = time.monotonic()
    ray.init(include_dashboard=False, log_to_driver=False, logging_level="WARNING", num_cpus=cpus)
    ray_start = time.monotonic() - started
    results: list[tuple[str, object, list[float]]] = []
    try:
        out = os.path.join(work, "montage.mp4")
        for i, (name, length) in enumerate(zip(rows, lengths)):
            walls = []
            for _ in range(max(1, args.runs) if i == 0 else 1):  # the first job starts the actors
                report = encode(src, out, codec=args.codec, preset=args.preset, quality=args.quality,
                                segment_seconds=length, workers=args.workers, overwrite=True, verify=args.verify)
                walls.append(report.wall_seconds)
            print(f"row {name}: {len(report.segments)} segments, job walls {', '.join(f'{w:.2f} s' for w in walls)}; "
                  + ", ".join(f"{k} {v:.2f} s" for k, v in report.timings.items()), flush=True)
            if i == 0:
                print(report.summary(), flush=True)
            results.append((name, report, walls))
    finally:
        ray.shutdown()
    sizes = {"plain": os.path.getsize(plain_out), "montage": os.path.getsize(out)}
    figures = {"input": {"seconds": args.seconds, "size": args.size, "frames": n, "preset": args.preset,
                         "codec": args.codec, "cpus": cpus}, "plain_seconds": plain, "verify": args.verify,
               "ray_start_seconds": ray_start, "rows": {}, "bytes": sizes}
    for name, report, walls in results:
        limit, pieces = limit_line(src, args.codec, args.preset, args.quality,
                                   [r.frames for r in sorted(report.segments, key=lambda r: r.segment)],
                                   work, args.workers or cpus)
        figures["rows"][name] = {**row_figures(report, report.wall_seconds, plain, limit, pieces, n),
                                 "job_walls": walls}
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures["driver_peak_rss_mb"] = peak_rss_mb
    print(f"\n{args.seconds:g} s {args.size} {args.codec} {args.preset}, {cpus} cores, verify {args.verify}; plain "
          f"ffmpeg {plain:.2f} s; Ray start-up {ray_start:.2f} s, not counted")
    print(f"{'row':<9} {'segments':>8} {'wall s':>7} {'x plain':>7} {'limit s':>7} {'limit x':>7} {'% limit':>7} "
          f"{'serial':>7} {'1st enc':>7}  checks")
    for name, row in figures["rows"].items():
        print(f"{name:<9} {row['segments']:>8} {row['wall']:>7.2f} {row['speedup']:>6.2f}x {row['limit_seconds']:>7.2f} "
              f"{row['limit_speedup']:>6.2f}x {100 * row['share_of_limit']:>6.0f}% {100 * row['serial_share']:>6.1f}% "
              f"{row['lead_seconds']:>6.2f}s  " + ", ".join(f"{k} {v}" for k, v in sorted(row["checks"].items())))
    fixed = {k: v for k, v in figures["rows"].items() if k not in ("default", "0")}
    auto = figures["rows"].get("default") or figures["rows"].get("0")
    if auto and fixed:
        best = min(fixed, key=lambda k: fixed[k]["wall"])
        figures["default_vs_best_fixed"] = auto["wall"] / fixed[best]["wall"]
        print(f"default vs the best fixed length ({best} s): {auto['wall'] / fixed[best]['wall']:.3f}x the wall time "
              f"(above 1: the default is slower)")
    print(f"driver peak RSS: {peak_rss_mb:.0f} MB   sizes: plain {sizes['plain'] / 1e6:.1f} MB, montage-ray (last row) "
          f"{sizes['montage'] / 1e6:.1f} MB")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(figures, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
