"""``montage-ray probe``: what can this node encode with, and why not the rest (issue 3)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="probe this node's encoders")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError
