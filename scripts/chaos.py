#!/usr/bin/env python3
"""Chaos run: N jobs on the simulated cluster, each hit by a random failure at a random moment.

    .venv/bin/python scripts/chaos.py --jobs 20 [--seed 1] [--seconds 12]

The cluster is the one of ``scripts/simulate_cluster.py`` (a head with CPU slots and stand-in ``vaapi``,
``nvenc`` and ``nvmpi`` nodes, all on 127.0.0.1). Each job is hit once, at a random moment, by one of:

- ``kill-actor``: SIGKILL of a random encoder actor's process (a crashed worker);
- ``remove-node``: a whole stand-in node removed (added back after the job);
- ``kill-driver`` (once per run): the job's driver, a separate ``montage-ray encode --address`` process,
  killed with SIGKILL; the same command is then run again and must end exact (the killed driver's work on
  the encoder service is dropped, and this script's own jobs share the same actors) and remove the leftovers.

``--only I`` runs job I alone (the draws of the others are made, not run), ``--delay S`` strikes every job
at S seconds: ``--jobs 20 --seed 11 --only 14`` replays one job of a run.

A job passes when it ends **exact** (every frame, same presentation times, clean decode) or with **one
clear line** (a MontageError, no traceback), and nothing is left behind: no work folder beside the output,
no ``montage-seg-*`` scratch folder, no ffmpeg still running. Prints one line per job and ``N/N passed``;
exits 1 if any job failed.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from simulate_cluster import DEFAULT_LAYOUT, add_label_node, start_cluster, write_config  # noqa: E402  (sets Ray's env first)


def _ancestors(pid: int) -> set[int]:
    seen = set()
    while pid > 1 and pid not in seen:
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
                text = fh.read()
            pid = int(text[text.rfind(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return seen


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ours(needle: str) -> list[int]:
    """Processes started (through any depth) by this script whose command line contains ``needle``."""
    me = os.getpid()
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != me
            and needle in _cmdline(int(p)) and me in _ancestors(int(p))]


def _stray_ffmpeg(root: str) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and "ffmpeg" in _cmdline(int(p))
            and root in _cmdline(int(p))]


def _leftovers(root: str) -> list[str]:
    found = []
    for folder, dirs, _ in os.walk(root):
        found += [os.path.join(folder, d) for d in dirs if d.startswith((".montage-ray-", "montage-seg-"))]
    return found


def _exact(src: str, dst: str) -> str | None:
    """None when dst holds src's frames at src's times with a clean decode, else what differs."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import numpy as np

    from tests import mediacheck as mc

    if mc.decode_errors(dst):
        return "decode errors"
    a, b = mc.video_times(src), mc.video_times(dst)
    if a.shape != b.shape:
        return f"{b.shape[0]} frames instead of {a.shape[0]}"
    if not np.allclose(b - b[0], a - a[0], atol=1e-3):
        return "presentation times differ"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=12.0, help="length of the test clip")
    ap.add_argument("--only", type=int, action="append", default=None, metavar="I",
                    help="run only job I of the run (repeatable); the others are drawn, not run (the strikes' "
                         "own draws are skipped, so a delay may differ a little from the full run's)")
    ap.add_argument("--delay", type=float, default=None, help="strike at this many seconds (not a drawn delay)")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    ran = args.jobs if args.only is None else len(set(args.only) & set(range(args.jobs)))

    root = tempfile.mkdtemp(prefix="montage-chaos-")
    scratch = os.path.join(root, "tmp")
    os.makedirs(scratch)
    os.environ["TMPDIR"] = scratch  # the nodes' (and so the actors') temp folder: montage-seg-* land here
    # a Ray temp folder of its own: no other Ray on this machine finds (or is found by) this cluster
    os.environ["RAY_TMPDIR"] = os.path.join(root, "ray")
    tempfile.tempdir = None

    import ray

    from montage_ray import encode
    from montage_ray.ffmpeg import tool
    from montage_ray.cluster.session import join_drains
    from montage_ray.errors import MontageError

    src = os.path.join(root, "src.mp4")
    tool.run([tool.ffmpeg(), "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size=320x240:rate=30:duration={args.seconds:g}", "-f", "lavfi", "-i",
                    f"sine=duration={args.seconds:g}", "-c:v", "libx264", "-g", "30", "-c:a", "aac",
                    tool.file_url(src)], timeout=120)
    cluster, nodes = start_cluster(DEFAULT_LAYOUT, head_cpus=1)
    config = os.path.join(root, "encoders.yaml")
    write_config(DEFAULT_LAYOUT, {"readrate": 2.0, "preset": "ultrafast"}, config)
    driver_job = rng.randrange(args.jobs)
    passed = 0
    try:
        for i in range(args.jobs):
            out = os.path.join(root, f"job{i:03d}")
            dst = os.path.join(out, "o.mp4")
            action = "kill-driver" if i == driver_job else rng.choice(["kill-actor", "remove-node"])
            delay = rng.uniform(0.0, 8.0) if args.delay is None else args.delay
            if args.only is not None and i not in args.only:
                continue
            what, verdict = action, None
            os.makedirs(out)
            if action == "kill-driver":
                cmd = [sys.executable, "-m", "montage_ray", "encode", src, dst, "--quiet", "--address",
                       cluster.address, "--encoders-config", config, "--segment-seconds", "2"]
                until = time.monotonic() + delay
                try:  # should_stop kills the driver's whole process group with SIGKILL
                    tool.run(cmd, timeout=300, check=False, should_stop=lambda: time.monotonic() > until)
                    what += f" at {delay:.1f}s (finished first); re-run"
                except tool.Cancelled:
                    what += f" at {delay:.1f}s (SIGKILL); re-run"
                if os.path.exists(dst):
                    os.unlink(dst)
            except_line = None
            try:
                if action == "kill-driver":
                    # the same command again, unharmed: it must succeed and sweep the killed driver's folder
                    # (the killed driver's work must not keep the slots from it: a run once saw "no encoder
                    # could start" here, so only an exact output passes)
                    again = tool.run(cmd, timeout=600, check=False)
                    if again.returncode != 0:
                        verdict = f"FAIL: the re-run failed: {again.stderr.strip()[-300:]}"
                else:
                    stop = threading.Event()

                    def strike(action=action, delay=delay) -> None:
                        if stop.wait(delay):
                            return
                        if action == "kill-actor":
                            pids = _ours("ray::EncoderActor")
                            if pids:
                                os.kill(rng.choice(pids), signal.SIGKILL)
                        else:
                            label = rng.choice(sorted(nodes))
                            cluster.remove_node(nodes[label])
                            nodes[label] = None
                            struck.append(label)

                    struck: list[str] = []
                    hit = threading.Thread(target=strike, daemon=True)
                    hit.start()
                    try:
                        encode(src, dst, encoders_config=config, segment_seconds=2)
                    finally:
                        stop.set()
                        hit.join()
                        for label in struck:  # put the node back for the next jobs
                            nodes[label] = add_label_node(cluster, DEFAULT_LAYOUT, label)
                        if struck:
                            cluster.wait_for_nodes()
                    what += f" at {delay:.1f}s"
            except MontageError as err:
                except_line = str(err)
                if "\n" in except_line:
                    verdict = "FAIL: error of several lines"
            except Exception as err:  # noqa: BLE001 - a traceback is exactly what chaos looks for
                verdict = f"FAIL: {type(err).__name__}: {err}"
            if verdict is None:
                if os.path.exists(dst):
                    differs = _exact(src, dst)
                    verdict = f"FAIL: output {differs}" if differs else "exact"
                elif except_line:
                    verdict = f"one line: {except_line[:160]}"
                else:
                    verdict = "FAIL: no output and no error"
            # nothing may be left: wait for cancelled losers' ffmpeg to be reaped (no fixed margin: poll)
            deadline = time.monotonic() + 60
            while (_stray_ffmpeg(root) or _leftovers(out)) and time.monotonic() < deadline:
                time.sleep(0.5)
            if _leftovers(out):
                verdict = f"FAIL: left {_leftovers(out)}"
            elif _stray_ffmpeg(root):
                verdict = f"FAIL: ffmpeg still running {_stray_ffmpeg(root)}"
            ok = not verdict.startswith("FAIL")
            passed += ok
            print(f"job {i:3d} {what:44s} {verdict}", flush=True)
        # the last job's encodes swept every killed actor's scratch folder; a final clean job proves it
        final = os.path.join(root, "final")
        os.makedirs(final)
        encode(src, os.path.join(final, "o.mp4"), encoders_config=config, segment_seconds=2)
        left = _leftovers(root)
        if left:
            print(f"left behind after the run: {left}")
            passed = min(passed, ran - 1)
    finally:
        join_drains()
        ray.shutdown()
        cluster.shutdown()
    print(f"{passed}/{ran} passed")
    if passed == ran:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"kept {root} for inspection")
    return 0 if passed == ran else 1


if __name__ == "__main__":
    sys.exit(main())
