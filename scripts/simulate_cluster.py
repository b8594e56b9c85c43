#!/usr/bin/env python3
"""Encode on a simulated mixed cluster: several Ray nodes on this machine, hardware labels served by
CPU stand-ins of different speeds (they say so in every report line).

    .venv/bin/python scripts/simulate_cluster.py SRC DST [--report R.json] [--timeline T.png] [--kill-node]
                                                 [--real LABEL] [--labels L1,L2] [--segment-seconds S]
                                                 [--paid-nvenc] [--quota-after N] [--preset-spread]
                                                 [--target-quality METRIC:VALUE[:TOL]] [--measure METRIC]
                                                 [--compare-target METRIC:VALUE[:TOL]]
                                                 [--address ADDR [--control FIFO]]

Nodes (all bound to 127.0.0.1): a head with CPU slots, and one node each labelled ``vaapi``, ``nvenc`` and
``nvmpi``. Each label is served by libx264 throttled to a fixed multiple of realtime (``-readrate``), so
speeds differ as real devices would. ``--kill-node`` removes the ``vaapi`` node once the first segment is
done: the job must still finish with every frame. The report lists every segment with its attempts,
label, encoder and node.

``--paid-nvenc`` makes ``nvenc`` the paid cloud GPU (remote, priced, with a monthly budget);
``--quota-after N`` (simulation only) makes each of its stand-in actors refuse its (N+1)-th segment the way
a real NVENC at its session limit does: the job must end exact on the local encoders.

``--preset-spread`` gives the stand-ins unlike presets (:data:`PRESET_SPREAD`), so that their segments differ
in quality at one ``--quality`` as different hardware's do; with ``--measure psnr`` the report shows that
spread, with ``--target-quality psnr:34`` how far a quality target closes it; ``--compare-target psnr:34``
runs both jobs in one cluster and prints the two spreads and the extra encode time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time

# Every node listens on 127.0.0.1 only. Ray turns "127.0.0.1" in an address into this machine's outward IP
# (where nothing of this cluster listens) unless it is told this is a single-machine setup; so tell it,
# before ray is imported.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

#: label -> (node resources, stand-in settings). Speeds are in multiples of realtime.
DEFAULT_LAYOUT = {
    "vaapi": ({"vaapi": 1}, {"backend": "cpu", "standin": True, "readrate": 6, "preset": "ultrafast"}),
    "nvenc": ({"nvenc": 2}, {"backend": "cpu", "standin": True, "readrate": 8, "preset": "ultrafast"}),
    "nvmpi": ({"nvmpi": 1}, {"backend": "cpu", "standin": True, "readrate": 3, "preset": "ultrafast"}),
}


#: Presets per label for ``--preset-spread``: stand-ins of unlike quality per bit at one ``--quality``, as
#: different hardware is (on noisy 320x240 at CRF 23, x264 ultrafast gives about 35.0 dB PSNR, superfast
#: 33.6, veryfast 32.4 and medium 32.9; ultrafast for 2.4x the bytes): what ``--target-quality`` evens out.
#: The fastest label (nvenc, two sessions) differs most from the others, so that any job shows the spread.
PRESET_SPREAD = {"nvenc": "ultrafast", "vaapi": "veryfast", "nvmpi": "superfast", "cpu": "medium"}


#: What every node of a simulated cluster is started with: loopback only, a small object store.
NODE_ARGS = {"node_ip_address": "127.0.0.1", "object_store_memory": 200 * 1024 * 1024}


def start_cluster(layout: dict, head_cpus: int = 1, connect: bool = True):
    """A head with ``head_cpus`` CPU slots and one node per label (no CPU slots), all on 127.0.0.1; this
    process connects to it unless ``connect`` is false."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={**NODE_ARGS, "num_cpus": head_cpus,
                                                            "include_dashboard": False})
    nodes = {label: add_label_node(cluster, layout, label) for label in layout}
    cluster.wait_for_nodes()
    if connect:
        ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
    return cluster, nodes


def add_label_node(cluster, layout: dict, label: str):
    """Start the node of ``label`` (its resources from ``layout``, no CPU slots) in ``cluster``."""
    return cluster.add_node(**NODE_ARGS, num_cpus=0, resources=layout[label][0])


def serve(layout: dict, head_cpus: int = 1, control: str | None = None) -> None:
    """Run a simulated cluster for drivers of other processes (the test suite's shared ones): print its
    address, then keep it until stdin closes. With ``control``, a named pipe made there takes one line per
    change, ``remove LABEL`` or ``add LABEL`` (a node removed mid-job, and put back for the next job: see
    ``--control``)."""
    import ray

    cluster, nodes = start_cluster(layout, head_cpus, connect=False)
    if control:
        os.mkfifo(control)
        # the changes are made here, on the main thread (Ray's node start sets signal handlers); stdin's end
        # stops the loop through the pipe
        threading.Thread(target=lambda: (sys.stdin.read(), tell(control, "stop")), daemon=True).start()
    print(cluster.address, flush=True)
    try:
        if not control:
            sys.stdin.read()
        while control:
            with open(control, encoding="utf-8") as fh:  # (waits for a writer; EOF when it is done)
                lines = fh.read().split("\n")
            for what, _, label in (line.partition(" ") for line in lines if line):
                if what == "stop":
                    return
                if what == "remove":
                    cluster.remove_node(nodes[label])
                else:
                    nodes[label] = add_label_node(cluster, layout, label)
                    cluster.wait_for_nodes()
    finally:
        ray.shutdown()
        cluster.shutdown()


def tell(control: str, line: str) -> None:
    """One change to a served cluster (see :func:`serve`)."""
    with open(control, "w", encoding="utf-8") as fh:
        fh.write(line + "\n")


def wait_for_label(ray, label: str, timeout: float = 120) -> None:
    """Until a live node of the connected cluster offers ``label`` (a node put back)."""
    deadline = time.monotonic() + timeout
    while not any(n["Alive"] and label in n["Resources"] for n in ray.nodes()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {label} node came back within {timeout:.0f} s")
        time.sleep(0.5)


def write_config(layout: dict, cpu: dict | None, path: str) -> None:
    labels = {label: settings for label, (_, settings) in layout.items()}
    if cpu:
        labels["cpu"] = cpu
    import yaml

    with open(path, "w", encoding="utf-8") as fh:
        yaml.safe_dump({"labels": labels}, fh)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--report", default=None, help="write the job report (JSON) here")
    ap.add_argument("--timeline", default=None, help="draw the job's timeline (PNG) here")
    ap.add_argument("--kill-node", action="store_true", help="remove the vaapi node after the first segment")
    ap.add_argument("--segment-seconds", type=float, default=None)
    ap.add_argument("--head-cpus", type=int, default=1, help="CPU encoder slots on the head (default 1)")
    ap.add_argument("--cpu-readrate", type=float, default=2.0, help="speed cap of the CPU slots (x realtime)")
    ap.add_argument("--real", action="append", default=[], choices=sorted(DEFAULT_LAYOUT), metavar="LABEL",
                    help="serve LABEL with its real backend, as the node's probe finds it, not a stand-in "
                         "(repeatable; on a machine without that hardware its actors cannot start)")
    ap.add_argument("--labels", default=None, metavar="L1,L2", help="use only these labels (e.g. vaapi,cpu)")
    ap.add_argument("--paid-nvenc", action="store_true",
                    help="nvenc is the paid cloud GPU: remote, $0.60/h + $0.09/GB, $10 a month")
    ap.add_argument("--quota-after", type=int, default=None, metavar="N",
                    help="SIMULATION ONLY: each nvenc stand-in refuses new segments after N (provider quota)")
    ap.add_argument("--preset-spread", action="store_true",
                    help="give the stand-ins the unlike presets of PRESET_SPREAD (ultrafast .. veryfast)")
    ap.add_argument("--target-quality", default=None, metavar="METRIC:VALUE[:TOL]",
                    help="as montage-ray encode's (each segment measured and re-encoded to reach it)")
    ap.add_argument("--measure", default=None, metavar="METRIC", help="as montage-ray encode's")
    ap.add_argument("--compare-target", default=None, metavar="METRIC:VALUE[:TOL]",
                    help="two jobs in one cluster: DST measured with METRIC (no target), then DST.target.EXT "
                         "(report R.target.json) with the target; prints both spreads and encode times")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--then", nargs=2, default=None, metavar=("LABELS", "DST"),
                    help="after the job, one more on the same cluster with only LABELS (L1,L2), writing DST: "
                         "its error, if any, is the script's (the cluster starts once for both)")
    ap.add_argument("--address", default=None,
                    help="run on this simulated cluster, already running (tests/service_cluster.py --simulated), "
                         "instead of starting one; it is left as found (its service stopped, a removed node back)")
    ap.add_argument("--control", default=None, metavar="FIFO",
                    help="with --address: the running cluster's control pipe, for --kill-node")
    args = ap.parse_args(argv)
    if args.address and args.kill_node and not args.control:
        ap.error("--kill-node on a running cluster (--address) needs its --control pipe")

    import ray

    from montage_ray import encode
    from montage_ray.cluster.session import join_drains
    from montage_ray.errors import MontageError

    tmp = tempfile.mkdtemp(prefix="montage-sim-")
    # simulated spending goes to a ledger of this run (gone with it), never the machine's own, unless set
    os.environ.setdefault("MONTAGE_RAY_LEDGER", os.path.join(tmp, "ledger.sqlite"))
    if args.address:
        cluster = None
        ray.init(address=args.address, log_to_driver=False, logging_level="WARNING")
    else:
        cluster, nodes = start_cluster(DEFAULT_LAYOUT, args.head_cpus)

    def remove_vaapi() -> None:
        if cluster is None:
            tell(args.control, "remove vaapi")
        else:
            cluster.remove_node(nodes["vaapi"])

    config = os.path.join(tmp, "encoders.yaml")
    standins = {label: spec for label, spec in DEFAULT_LAYOUT.items() if label not in args.real}
    if args.paid_nvenc and "nvenc" in standins:
        resources, spec = standins["nvenc"]
        standins["nvenc"] = (resources, {**spec, "remote": True, "bandwidth_mbps": 1000, "cost_per_hour": 0.6,
                                         "cost_per_gb": 0.09, "budget_per_month": 10.0, "currency": "USD"})
    if args.quota_after is not None and "nvenc" in standins:
        resources, spec = standins["nvenc"]
        standins["nvenc"] = (resources, {**spec, "standin_quota_after": args.quota_after})
    cpu_preset = "ultrafast"
    if args.preset_spread:
        standins = {label: (resources, {**spec, "preset": PRESET_SPREAD[label]})
                    for label, (resources, spec) in standins.items()}
        cpu_preset = PRESET_SPREAD["cpu"]
    write_config(standins, {"readrate": args.cpu_readrate, "preset": cpu_preset}, config)
    killed: list[float] = []

    def progress(done: int, total: int, result) -> None:
        print(f"segment {result.segment} done by {result.actor} ({result.encoder}) "
              f"in {result.seconds:.2f} s [{done}/{total}]", flush=True)
        if args.kill_node and not killed:
            killed.append(time.monotonic())
            # remove from another thread so this callback (the driver loop) goes on at once
            threading.Thread(target=remove_vaapi, daemon=True).start()
            print("removing the vaapi node now", flush=True)

    jobs = [(args.dst, args.report, {"target_quality": args.target_quality, "measure": args.measure})]
    if args.compare_target:
        jobs = [(args.dst, args.report, {"measure": args.compare_target.split(":")[0]}),
                (_suffixed(args.dst, ".target"), args.report and _suffixed(args.report, ".target"),
                 {"target_quality": args.compare_target})]
    reports = []
    try:
        for dst, report_path, quality_options in jobs:
            reports.append(encode(args.src, dst, encoders_config=config, report=report_path, progress=progress,
                                  timeline=args.timeline if len(reports) == 0 else None,
                                  labels=args.labels.split(",") if args.labels else None,
                                  segment_seconds=args.segment_seconds, overwrite=args.overwrite,
                                  **quality_options))
        if args.then:
            print(f"then: a job with only {args.then[0]}", flush=True)
            encode(args.src, args.then[1], encoders_config=config, labels=args.then[0].split(","),
                   segment_seconds=args.segment_seconds, overwrite=args.overwrite)
    except MontageError as err:
        print(f"simulate_cluster: error: {err}", file=sys.stderr)
        return err.exit_code
    finally:
        join_drains()
        if cluster is None:
            leave_as_found(ray, args.control if killed else None)
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    for (dst, report_path, _), report in zip(jobs, reports):
        print(report.summary())
        for line in report.route:
            print("route:", line)
        for f in report.failures:
            print(f"failure: segment {f.segment} attempt {f.attempt} on {f.actor}: {f.reason}: {f.message}")
        for line in report.provider:
            print("provider:", line)
        print(f"wrote {dst}" + (f" and {report_path}" if report_path else ""))
        if report_path:
            with open(report_path, encoding="utf-8") as fh:
                data = json.load(fh)
            data["simulation"] = {"layout": {k: v[1] for k, v in standins.items()}, "real": args.real,
                                  "killed_node": bool(killed)}
            with open(report_path, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=2)
    if args.compare_target:
        print(compare_line(reports[0], reports[1]))
    return 0


def leave_as_found(ray, control: str | None) -> None:
    """On a running cluster that other jobs share, what a cluster of its own would take with it: the encoder
    service's actors (stopped: they count the segments they served, which the stand-in quota reads) and the
    removed vaapi node (put back, with ``control``). The run's spending and back-offs are in its own ledger
    file already."""
    from montage_ray.cluster.service import Service

    Service().stop(force=True)  # (no job of this run is in flight any more)
    if control:
        tell(control, "add vaapi")
        wait_for_label(ray, "vaapi")


def _suffixed(path: str, suffix: str) -> str:
    stem, ext = os.path.splitext(path)
    return stem + suffix + ext


def compare_line(without, with_target) -> str:
    """The spread of per-segment scores without and with the target, and what the target cost in encoding."""
    def facts(report):
        scores = [s.score for s in report.segments if s.score is not None]
        return (max(scores) - min(scores) if scores else float("nan"), sum(s.seconds for s in report.segments),
                sum(s.tries - 1 for s in report.segments), report.wall_seconds)

    (s0, e0, _, w0), (s1, e1, r1, w1) = facts(without), facts(with_target)
    return (f"compare: spread without a target {s0:.3f}, with {s1:.3f} ({s1 / s0 if s0 else float('nan'):.2f}x); "
            f"segment encode seconds {e0:.1f} -> {e1:.1f} ({e1 / e0 if e0 else float('nan'):.2f}x, {r1} re-encodes); "
            f"job wall {w0:.1f} s -> {w1:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
