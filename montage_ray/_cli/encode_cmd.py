"""``montage-ray encode SRC DST``: encode one file on Ray and verify it before it is written."""

from __future__ import annotations

import argparse
import logging
import sys

from montage_ray.encoders.backends import CODECS, PRESETS, codec_name
from montage_ray.job.options import VERIFY_MODES, EncodeOptions
from montage_ray.spending.routing import PROFILES


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("encode", help="encode a video file on Ray",
                       description="Encode SRC into DST on Ray: SRC is cut into segments (at clean keyframes "
                                   "where the GOPs allow it, else at any frame), encoded on encoder actors side by "
                                   "side, joined and verified before DST is written.")
    p.add_argument("src", metavar="SRC", help="source video file (a local file)")
    p.add_argument("dst", metavar="DST", help="destination (.mp4, .m4v, .mov or .mkv)")
    p.add_argument("--codec", choices=CODECS, type=codec_name, default="h264",
                   help="video codec: h264, hevc (or h265) or av1 (default h264)")
    p.add_argument("--quality", type=int, default=23, metavar="Q",
                   help="CRF-like quality, 0 best .. 51 worst (default 23)")
    p.add_argument("--preset", choices=PRESETS, default="medium", help="speed preset (default medium)")
    p.add_argument("--segment-seconds", type=float, default=None, metavar="S",
                   help="about how long each segment is (default: about six per encoder, 2-10 s; "
                        "a clip under 20 s is one segment)")
    p.add_argument("--profile", choices=PROFILES, default="standard",
                   help="fast, standard or master (master prefers the best-quality encoders)")
    p.add_argument("--encoders-config", metavar="YAML", default=None,
                   help="which encoder serves each resource label (overrides the nodes' probes)")
    p.add_argument("--labels", metavar="L1,L2", default=None,
                   help="use only these resource labels (e.g. vaapi,cpu)")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster to use: auto, HOST:PORT or ray://HOST:10001 "
                        "(default: $RAY_ADDRESS, else a local Ray started for this job)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="at most N encoder actors (default: one per CPU)")
    p.add_argument("--verify", choices=VERIFY_MODES, default="auto",
                   help="how each encoded segment is checked where it was made: auto (default: a full decode "
                        "for hardware encoders, stand-ins, other nodes and encoders that failed; packet count "
                        "and structure for the software encoders), decode (every segment), packets (none "
                        "decoded); the joined file's structure, frame total and joins are checked always")
    p.add_argument("--target-quality", metavar="METRIC:VALUE[:TOL]", default=None,
                   help="measure each segment against the source and re-encode it until it reaches this score "
                        "(psnr:42, ssim:0.98, xpsnr:40 on ffmpeg 7.1+, vmaf:93 where ffmpeg has libvmaf; "
                        "default tolerance 0.5 dB, 0.005, 1)")
    p.add_argument("--measure", metavar="METRIC", default=None,
                   help="measure each segment against the source and report its score (no re-encode)")
    p.add_argument("--priority", type=_priority, default=0, metavar="P",
                   help="on a shared cluster's encoder service (-100 to 100, default 0): each encoder actor holds "
                        "two segments (one encoding, one queued); as they finish, a job of higher priority that "
                        "wants the actor gets its next segment in first (running segments are never stopped), and "
                        "jobs of the same priority share the actors evenly. A job that has waited 30 s without "
                        "a segment in flight gets one whatever the priorities. E.g. 10 for a preview")
    p.add_argument("--overwrite", action="store_true",
                   help="replace DST, and the --report and --timeline files, if they exist")
    p.add_argument("--report", metavar="R.json", default=None, help="write the job report as JSON")
    p.add_argument("--timeline", metavar="T.png", default=None,
                   help="draw who encoded what and when (one row per encoder, a bar per attempt) as PNG")
    p.add_argument("--allow-dv-loss", action="store_true",
                   help="encode a Dolby Vision source anyway: re-encoding drops its RPU (the HDR10/HLG base "
                        "layer's metadata is kept); without it such a source is refused")
    p.add_argument("--cache-dir", metavar="DIR", default=None,
                   help="keep verified segments here, so that a killed job run again encodes only the rest "
                        "(default: .montage-ray.cache beside DST)")
    p.add_argument("--no-cache", action="store_true",
                   help="neither reuse nor keep encoded segments across runs")
    p.add_argument("--keep-cache", action="store_true",
                   help="keep this job's segments in the cache after DST was written (for later jobs)")
    p.add_argument("--quiet", action="store_true",
                   help="print nothing but errors (no progress bar, no summary)")
    p.add_argument("--verbose", action="store_true",
                   help="log what the job does, and let Ray's own warnings through (silenced otherwise)")
    p.set_defaults(run=run)


def _priority(text: str) -> int:
    """``--priority``: a whole number from -100 to 100 (one line otherwise, not the usage)."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not -100 <= value <= 100:
        raise argparse.ArgumentTypeError(f"must be a whole number from -100 to 100, not {text!r}")
    return value


def options_from_args(args: argparse.Namespace) -> EncodeOptions:
    """The :class:`~montage_ray.job.options.EncodeOptions` that the flags ask for (validated by the job)."""
    return EncodeOptions(codec=args.codec, quality=args.quality, preset=args.preset,
                         segment_seconds=args.segment_seconds, address=args.address, overwrite=args.overwrite,
                         report=args.report, timeline=args.timeline, workers=args.workers, verify=args.verify,
                         profile=args.profile, encoders_config=args.encoders_config,
                         allow_dv_loss=args.allow_dv_loss,
                         labels=tuple(x for x in args.labels.split(",") if x) if args.labels else None,
                         target_quality=args.target_quality, measure=args.measure,
                         cache=not args.no_cache, cache_dir=args.cache_dir, keep_cache=args.keep_cache,
                         priority=args.priority)


def run(args: argparse.Namespace) -> int:
    from montage_ray.job.run import encode
    from montage_ray.job.progress import ProgressPrinter

    if args.verbose:  # montage_ray's INFO log on stderr; ray_session then lets Ray's warnings through too
        logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
        logging.getLogger("montage_ray").setLevel(logging.INFO)

    # A bar redrawn in place on a terminal; one plain line per segment when stdout is a file or a pipe.
    printer = None if args.quiet else ProgressPrinter(sys.stdout)
    try:
        report = encode(args.src, args.dst, options_from_args(args), progress=printer)
    finally:
        if printer is not None:
            printer.close()  # a stage still shown ("starting a local Ray ...") is cleared before an error line
    if not args.quiet:
        print(report.summary())
        print(f"wrote {args.dst}" + "".join(f" and {p}" for p in (args.report, args.timeline) if p))
    return 0
