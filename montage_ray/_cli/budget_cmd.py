"""``montage-ray budget``: what the paid labels cost this month (or ``--month``), per label and job."""

from __future__ import annotations

import argparse
import json
import os
import re
import time

from montage_ray.errors import InputError


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("budget", help="this month's spending on paid labels, per label and job",
                       description="Print what each paid label cost this calendar month (UTC), per job, from the "
                                   "spending ledger: through the cluster when one is running (the file on its "
                                   "head), else from this machine's ledger file ($MONTAGE_RAY_LEDGER, else "
                                   "~/.local/state/montage-ray/ledger.sqlite) or --ledger PATH; with "
                                   "--encoders-config also the budget left and any provider back-off.")
    p.add_argument("--month", default=None, metavar="YYYY-MM", help="calendar month (default: this one, UTC)")
    p.add_argument("--encoders-config", metavar="YAML", default=None,
                   help="the encoders config, to show each label's budget and what is left of it")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="Ray cluster to read: auto, HOST:PORT or ray://HOST:10001 (default: $RAY_ADDRESS, else the "
                        "Ray started on this machine, else no cluster: the ledger file is read directly)")
    p.add_argument("--ledger", default=None, metavar="PATH",
                   help="read this ledger file directly (no cluster), e.g. a copy of the head's")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run)


def read_ledger(month: str, ledger: str | None, address: str | None) -> dict:
    """The ledger's ``state`` for ``month``: from the file ``ledger``; else through the cluster at ``address``
    (or the one running on this machine); else from this machine's file."""
    from montage_ray.cluster.session import ray_session, running_address
    from montage_ray.spending.ledger import Ledger, LedgerFile

    if ledger is not None:
        if not os.path.isfile(ledger):
            raise InputError(f"no ledger file at {ledger!r}")
        return LedgerFile(ledger).state(month)
    address = address or os.environ.get("RAY_ADDRESS") or ("auto" if running_address() else None)
    if address is None:
        return LedgerFile().state(month)
    with ray_session(address):
        return Ledger().state(month)


def run(args: argparse.Namespace) -> int:
    from montage_ray.encoders.config import load_encoders_config
    from montage_ray.spending.cost import money, month_of

    month = args.month or month_of()
    if not re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", month):
        raise InputError(f"month must be YYYY-MM, not {month!r}")
    config = load_encoders_config(args.encoders_config)
    state = read_ledger(month, args.ledger, args.address)
    spent, back_offs = state["month"], state["back_offs"]
    labels = sorted(set(spent) | {k for k, c in config.items() if c.budget_per_month is not None})
    out = {"month": month, "labels": {}, "ledger": state["path"]}
    for label in labels:
        entry = dict(spent.get(label, {"cost": 0.0, "seconds": 0.0, "bytes": 0.0, "jobs": {}}))
        cfg = config.get(label)
        entry.setdefault("currency", cfg.currency if cfg else "USD")
        if cfg is not None and cfg.budget_per_month is not None:
            entry["budget"] = cfg.budget_per_month
            entry["left"] = cfg.budget_per_month - entry["cost"]
        if label in back_offs:
            entry["back_off"] = back_offs[label]
        out["labels"][label] = entry
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
        return 0
    if not labels:
        print(f"{month}: nothing spent on paid labels (ledger {state['path']})")
        return 0
    for label, e in out["labels"].items():
        cur = e["currency"]
        budget = f" of {money(e['budget'], cur)}, {money(e['left'], cur)} left" if "budget" in e else ""
        print(f"{month} {label}: {money(e['cost'], cur)}{budget} ({e['seconds']:.0f} s, {e['bytes'] / 1e9:.2f} GB, "
              f"{len(e['jobs'])} job(s))")
        if "back_off" in e:
            until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["back_off"]["until"]))
            print(f"  backing off until {until}: the provider refused it ({e['back_off']['reason']})")
        for job_id, j in sorted(e["jobs"].items(), key=lambda kv: kv[1].get("last", 0)):
            print(f"  job {job_id}: {money(j['cost'], cur)} ({j['seconds']:.0f} s, {j['bytes'] / 1e9:.2f} GB)")
    print(f"(ledger {state['path']})")
    return 0
