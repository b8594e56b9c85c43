"""The ``montage-ray`` command line: a thin layer over the public API (the API never imports it).

Each subcommand lives in its own module with two functions: ``add_parser(subparsers)`` and
``run(args) -> int``. :func:`main` turns every :class:`~montage_ray.errors.MontageError` into one line on
stderr and its exit code; a traceback is printed only for a real bug.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from montage_ray.errors import MontageError

from . import budget_cmd, encode_cmd, probe_cmd

COMMANDS = (encode_cmd, probe_cmd, budget_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="montage-ray",
        description="Encode video fast and reliably on a Ray cluster of hardware and CPU encoders.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except MontageError as err:
        print(f"montage-ray: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("montage-ray: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
