"""``montage-ray probe``: what can this node encode with, and why not the rest.

    montage-ray probe                         # a table: backend, encoder, available, device, cause, fix
    montage-ray probe --json                  # {"backends": {name: {"available": ..., "cause": ...}}}
    montage-ray probe --ray-resources         # {"vaapi": 1}: the JSON for `ray start --resources`
    montage-ray probe --node-label            # vaapi-qsv: the value of the montage.ai/encoder node label
    montage-ray probe --backend qsv --verbose # the whole QSV story: devices, drivers, libraries, commands
    montage-ray probe --explain ffmpeg.log    # diagnose any ffmpeg stderr a user pastes ("-" = stdin)
"""

from __future__ import annotations

import argparse
import json

from montage_ray.encoders.quality import support as metric_support
from montage_ray.encoders.backends import BACKENDS
from montage_ray.errors import InputError
from montage_ray.probe import DEFAULT_TIMEOUT, NodeProbe, explain_log, probe_node, story

_COLUMNS = ("backend", "encoder", "available", "device", "cause", "fix")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="probe this node's encoders and say why the others do not work",
                       description="Probe which encoders work on this node (build, device and a real test "
                                   "encode per backend) and explain why the others do not.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--explain", metavar="LOGFILE",
                   help="diagnose an ffmpeg stderr log instead of probing ('-' reads stdin)")
    p.add_argument("--ray-resources", action="store_true",
                   help="print the JSON for `ray start --resources` (hardware label -> sessions)")
    p.add_argument("--node-label", action="store_true",
                   help="print the montage.ai/encoder node label value (after --ray-resources' line)")
    p.add_argument("--backend", action="append", choices=list(BACKENDS), metavar="NAME",
                   help=f"probe only this backend (repeatable; one of {', '.join(BACKENDS)})")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="tell the whole story: devices, drivers, libraries, each test command and its output")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                   help=f"limit for each probe run of ffmpeg (default {DEFAULT_TIMEOUT:g})")
    p.add_argument("--ffmpeg", metavar="PATH", help="the ffmpeg to probe (default: $MONTAGE_FFMPEG, then PATH)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.explain is not None:
        return _explain(args.explain, as_json=args.json)
    if args.timeout <= 0:
        raise InputError("--timeout must be a positive number of seconds")
    node = probe_node(args.ffmpeg, timeout=args.timeout, backends=args.backend, verbose=args.verbose)
    if args.ray_resources or args.node_label:
        if args.ray_resources:
            print(json.dumps(node.ray_resources(), sort_keys=True))
        if args.node_label:
            print(node.node_label())
    elif args.json:
        print(json.dumps(node.to_json(), indent=2))
    elif args.verbose:
        print(f"montage-ray probe on {node.hostname} with {node.ffmpeg} ({node.seconds:.1f} s)")
        for status in node.backends.values():
            print(story(status, timeout=args.timeout))
        print(f"ray start --resources '{json.dumps(node.ray_resources(), sort_keys=True)}' "
              f"--labels 'montage.ai/encoder={node.node_label()}'")
    else:
        print(table(node))
    if args.backend and not any(node.backends[name].available for name in args.backend):
        return 1  # `montage-ray probe --backend qsv` answers "does QSV work here?" with its exit status
    return 0


def _explain(path: str, *, as_json: bool) -> int:
    try:  # only a bounded tail of the log is read, cleaned of terminal escape sequences
        diagnosis = explain_log(None if path == "-" else path)
    except OSError as err:
        raise InputError(f"cannot read {path!r}: {err.strerror}") from None
    if as_json:
        print(json.dumps(diagnosis.to_json(), indent=2))
    else:
        print(f"cause:   {diagnosis.cause}")
        print(f"backend: {diagnosis.backend or '(not named in the log)'}")
        if diagnosis.line:
            print(f"line:    {diagnosis.line}")
        print(f"fix:     {diagnosis.fix}")
    return 0


def table(node: NodeProbe) -> str:
    """The probe as a fixed-width table, one backend a row; the fix column is last and not cut."""
    rows = [_COLUMNS]
    for status in node.backends.values():
        encoder = ",".join(status.encoders.values()) if status.available else (status.encoder or "-")
        rows.append((status.name, encoder, "yes" if status.available else "no", status.device or "-",
                     status.cause or "-", status.fix or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    resources = json.dumps(node.ray_resources(), sort_keys=True)
    lines.append(f"\n{node.hostname}: Ray resources {resources}, node label montage.ai/encoder="
                 f"{node.node_label()} ({node.seconds:.1f} s with {node.ffmpeg}"
                 + (f", version {node.caps.version})" if node.caps else ")"))
    for diagnosis in node.ffmpeg_diagnoses():
        lines.append(f"ffmpeg-version: {diagnosis.line}")
    for name, codecs in node.hdr_support().items():
        for codec, verdict in codecs.items():
            lines.append(f"hdr: {name} {codec}: HDR10 metadata {verdict}")
    if node.caps:  # what --target-quality / --measure can use here, and why not the others
        metrics = metric_support(node.caps)
        lines.append("quality metrics: " + (", ".join(n for n, why in metrics.items() if why == "yes") or "none"))
        lines += [f"quality metric {name}: {why}" for name, why in metrics.items() if why != "yes"]
    return "\n".join(lines)
