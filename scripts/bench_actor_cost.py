#!/usr/bin/env python3
"""Where an encoder actor's time per piece goes, without Ray: the same pieces encoded one per core side by
side (a) by plain ffmpeg, (b) then checked as the actor checks them (full decode, packet count, timed
apart), (c) through segment_encode.encode_segment with the decode check. Prints wall times and the sums of
per-piece seconds, so the check's share of an encode can be read off::

    python3 scripts/bench_actor_cost.py [SEGMENT_SECONDS [SOURCE_SECONDS [SIZE]]]   # 4 120 1920x1080, x264 veryfast
"""
import os, subprocess, sys, tempfile, time
from concurrent.futures import ThreadPoolExecutor
from montage_ray.encoders.backends import cpu_spec
from montage_ray.media.info import inspect
from montage_ray.media.plan import plan_segments
from montage_ray.ffmpeg import commands
from montage_ray.ffmpeg.caps import ffmpeg_caps
from montage_ray.encoders.segment import video_output_args, check_encoded, encode_segment, count_packets
from montage_ray.media.cut import split_source

seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 4
length = sys.argv[2] if len(sys.argv) > 2 else "120"
size = sys.argv[3] if len(sys.argv) > 3 else "1920x1080"
work = tempfile.mkdtemp(prefix="exp-")
src = os.path.join(work, "s.mp4")
subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30:duration={length}",
                "-c:v", "libx264", "-preset", "ultrafast", "-g", "60", src], check=True)
info = inspect(src)
plan = plan_segments(info.packets, info.video.time_base, seconds)
pieces = split_source(info, plan, work)
spec = cpu_spec("h264", quality=23, preset="veryfast", threads=1)
va = video_output_args(info.video, spec)
caps = ffmpeg_caps()
cpus = os.cpu_count()
by = sorted(zip(pieces, plan), key=lambda x: -os.path.getsize(x[0]))

def timed(fn):
    t = time.monotonic(); fn(); return time.monotonic() - t

def run_all(name, job):
    t = time.monotonic()
    with ThreadPoolExecutor(cpus) as ex:
        per = list(ex.map(job, by))
    wall = time.monotonic() - t
    sums = [sum(x) for x in zip(*per)] if isinstance(per[0], tuple) else [sum(per)]
    print(f"{name}: wall {wall:.2f} s; per-piece sums " + ", ".join(f"{s:.1f}" for s in sums), flush=True)

def plain(p):
    return timed(lambda: subprocess.run(commands.encode_command(spec, p[0], p[0] + ".a.mp4", caps=caps, video_args=va), check=True))
def enc_then_check(p):
    out = p[0] + ".b.mp4"
    a = timed(lambda: subprocess.run(commands.encode_command(spec, p[0], out, caps=caps, video_args=va), check=True))
    b = timed(lambda: check_encoded(out, p[1].frames, decode=True))
    c = timed(lambda: check_encoded(out, p[1].frames, decode=False))
    return a, b, c
def via_encode_segment(p):
    data = open(p[0], "rb").read()
    return timed(lambda: encode_segment(spec, p[1], data, video_args=va, decode=True, caps=caps))
def dec_only(p):
    out = p[0] + ".b.mp4"
    return timed(lambda: subprocess.run(["ffmpeg", "-v", "error", "-threads", "1", "-i", out, "-f", "null", "-"], check=True))
print(" ".join(commands.encode_command(spec, "IN", "OUT", caps=caps, video_args=va)))
run_all("a: plain encodes (the limit line)", plain)
run_all("b: encode | decode check | packet check", enc_then_check)
run_all("c: encode_segment(decode=True)", via_encode_segment)
run_all("d: the decode check's decode alone (ffmpeg -threads 1)", dec_only)
