"""The ``montage-ray`` command line: a thin layer over the public API (the API never imports it).

Each subcommand lives in its own module with two functions: ``add_parser(subparsers)`` and
``run(args) -> int``. :func:`main` turns every :class:`~montage_ray.errors.MontageError` into one line on
stderr and its exit code; a traceback is printed only for a real bug.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import NoReturn, Sequence

from montage_ray.errors import MontageError, Terminated

from . import budget_cmd, encode_cmd, probe_cmd, service_cmd

COMMANDS = (encode_cmd, probe_cmd, budget_cmd, service_cmd)


class Parser(argparse.ArgumentParser):
    """argparse, except that a usage error is one line (what is wrong and where the help is), not the usage."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"montage-ray: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> Parser:
    parser = Parser(
        prog="montage-ray",
        description="Encode video fast and reliably on a Ray cluster of hardware and CPU encoders.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


#: Set once a SIGTERM came: Ray's calls turn any exception a signal handler raises inside them into a plain
#: KeyboardInterrupt, so the type alone cannot tell a SIGTERM from a Ctrl-C.
_terminated = threading.Event()


def _on_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up short
    _terminated.set()
    raise Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    # montage_ray's warnings (a retried segment, a re-opened lease) are the progress output's business, or
    # --verbose's: stderr holds the one line of an error
    logging.getLogger("montage_ray").addHandler(logging.NullHandler())
    parser = build_parser()
    args = parser.parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        # SIGTERM unwinds like Ctrl-C (work folder removed, ffmpeg and Ray stopped), then one line and 143.
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.run(args) or 0)
    except MontageError as err:
        print(f"montage-ray: error: {err}", file=sys.stderr)
        return err.exit_code
    except Terminated:
        print("montage-ray: terminated (SIGTERM); nothing was written", file=sys.stderr)
        return Terminated.exit_code
    except KeyboardInterrupt:
        if _terminated.is_set():
            print("montage-ray: terminated (SIGTERM); nothing was written", file=sys.stderr)
            return Terminated.exit_code
        print("montage-ray: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
