"""``montage-ray status`` and ``montage-ray service stop``: the cluster's encoder service, seen and stopped.

``status`` prints the service's actors per node and label (busy with which job, or idle how long), the jobs
in flight (priority, progress, share of the actors' tickets) and the queue (tickets asked for, not granted
yet); ``--json`` prints the same as JSON. ``service stop`` stops every encoder actor of the service and its
scheduler at once (the next job starts them again); with jobs in flight only with ``--force``, and it names
the jobs it stopped.
"""

from __future__ import annotations

import argparse
import json

ADDRESS_HELP = "Ray cluster to read: auto, HOST:PORT or ray://HOST:10001 (default: $RAY_ADDRESS, else auto)"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="the encoder service: actors, jobs in flight, queue",
                       description="Print the encoder service of a cluster: its actors per node and label, the "
                                   "jobs in flight with their progress and share, and the queue.")
    p.add_argument("--address", default=None, metavar="ADDR", help=ADDRESS_HELP)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run_status)
    s = sub.add_parser("service", help="manage the encoder service (stop)",
                       description="Manage the cluster's encoder service.")
    s.add_argument("action", choices=["stop"], help="stop: stop every encoder actor of the service now")
    s.add_argument("--force", action="store_true",
                   help="stop it even when jobs are running on it (they fail, each with one line; a re-run reuses "
                        "the segments they finished)")
    s.add_argument("--address", default=None, metavar="ADDR", help=ADDRESS_HELP)
    s.set_defaults(run=run_service)


def run_status(args: argparse.Namespace) -> int:
    from montage_ray.cluster.service import Service
    from montage_ray.cluster.session import ray_session

    with ray_session(args.address, default="auto"):
        status = Service().status()
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return 0
    print(format_status(status))
    return 0


def format_status(status: dict) -> str:
    """The status as lines for a terminal."""
    if not status.get("running"):
        return "encoder service: not running (the next job on this cluster starts it)"
    lines = [f"encoder service: {len(status['actors'])} actor(s), {len(status['jobs'])} job(s) in flight; "
             f"actors stop after {status.get('idle', 0):g} s idle"]
    by_node: dict[tuple[str, str], list[dict]] = {}
    for a in status["actors"]:
        by_node.setdefault((a["node"], a["label"]), []).append(a)
    for (node, label), actors in sorted(by_node.items()):
        busy = [a for a in actors if a["busy"]]
        lines.append(f"  {node} {label}: {len(actors)} actor(s), {len(busy)} busy")
        for a in actors:
            what = ("busy: " + ", ".join(f"job {j} x{n}" for j, n in sorted(a["jobs"].items()))
                    if a["busy"] else f"idle {a['idle_seconds']:.0f} s")
            if a.get("cpu_reserved"):
                what += ", its CPU reserved"
            lines.append(f"    {a['name']}: {what}")
    for j in status["jobs"]:
        lines.append(f"  job {j['job']} priority {j['priority']}: {j['segments_done']}/{j['segments']} segments, "
                     f"{j['frames_done']}/{j['frames']} frames ({100 * j['progress']:.0f} %), "
                     f"share {100 * j['share']:.0f} % ({j['tickets']} ticket(s)), {j['seconds']:.0f} s")
    for q in status["queue"]:
        lines.append(f"  queued: job {q['job']} (priority {q['priority']}) asks for "
                     + ", ".join(f"{n} on {slot}" for slot, n in sorted(q["wants"].items())))
    if not status["queue"]:
        lines.append("  queue: empty")
    return "\n".join(lines)


def run_service(args: argparse.Namespace) -> int:
    from montage_ray.cluster.service import Service
    from montage_ray.cluster.session import ray_session

    with ray_session(args.address, default="auto"):
        stopped = Service().stop(force=args.force)
    actors = stopped["actors"]
    print(f"stopped {len(actors)} encoder actor(s) of the service" + (": " + ", ".join(actors) if actors else ""))
    for j in stopped["jobs"]:
        print(f"stopped job {j['job']} (priority {j['priority']}, {j['segments_done']}/{j['segments']} segments "
              "done): it fails with one line saying so; run it again to finish it")
    return 0
