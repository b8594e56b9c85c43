"""A job's side of the budget: what routing needs to know before, and what to record after.

Before routing, :class:`BudgetView` reads the ledger once (this month's spending and the providers'
back-offs) and gives each label's cost terms for its :class:`~montage_ray.spending.routing.Offer`. After the encode,
:func:`settle` works out what each paid label cost (busy seconds, bytes moved), records it in the ledger
and the ``ray_montage_cost`` metric, backs off labels a provider refused, and returns a :class:`Bill` for
the job report. Neither ever fails a job: a ledger that cannot be read leaves every paid label out (each
says why in the route), and a charge it missed is a note in the report::

    ledger = open_ledger(private=session.private)   # this machine's file, or the cluster's through its head
    view = BudgetView.load(config, ledger)          # once per job, connected to Ray
    offers(ray.nodes(), config, pixels=..., terms=view.terms)   # each Offer with its price and budget left
    ...
    bill = settle(job_id, started, results, failures, config, refusals=pool.refusals, ledger=ledger)  # after
    JobReport(..., cost=bill.cost, provider=bill.provider, notes=[..., *bill.notes])
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from montage_ray.errors import LedgerError, first_line
from montage_ray.util import metrics
from montage_ray.spending import quota
from montage_ray.encoders.backends import SOFTWARE
from montage_ray.encoders.config import LabelConfig
from montage_ray.spending.cost import Price, busy_seconds, charge, money, month_of
from montage_ray.encoders.records import FailedAttempt
from montage_ray.encoders.records import EncodeResult
from montage_ray.spending.ledger import Ledger, LedgerFile, Spend
from montage_ray.spending.providers import provider_of

log = logging.getLogger(__name__)


def price_of(cfg: LabelConfig | None) -> Price | None:
    """The label's price, billed as its provider bills, or None when nothing about it is paid."""
    if cfg is None or (cfg.cost_per_hour is None and cfg.cost_per_gb is None and cfg.budget_per_month is None):
        return None
    provider = provider_of(cfg)
    return Price(cfg.cost_per_hour or 0.0, cfg.cost_per_gb or 0.0, cfg.currency,
                 **({"bytes_per_gb": provider.bytes_per_gb} if provider else {}))


def label_usage(segments: Iterable[EncodeResult], failures: Iterable[FailedAttempt] = ()
                ) -> dict[str, tuple[float, float]]:
    """{label: (busy seconds, bytes moved)} of a job: the union of its tries there (failed ones too, they
    held the device), and the bytes of the segments it encoded."""
    spans: dict[str, list[tuple[float, float]]] = {}
    moved: dict[str, float] = {}
    for seg in segments:
        label = seg.resource or "cpu"
        spans.setdefault(label, []).append((seg.started, seg.seconds))
        moved[label] = moved.get(label, 0.0) + seg.bytes_in + seg.bytes_out
    for fail in failures:
        if fail.label and fail.started and fail.seconds:
            spans.setdefault(fail.label, []).append((fail.started, fail.seconds))
    return {label: (busy_seconds(s), moved.get(label, 0.0)) for label, s in spans.items()}


@dataclass
class BudgetView:
    """This month's spending and the providers' back-offs, read once for one job's routing."""

    month: str
    spent: dict[str, float] = field(default_factory=dict)
    back_offs: dict[str, dict[str, Any]] = field(default_factory=dict)
    problem: str = ""          # why the ledger could not be read (paid labels are then left out)

    @classmethod
    def load(cls, config: Mapping[str, LabelConfig], ledger: Ledger | LedgerFile | None = None) -> "BudgetView":
        """Read ``ledger`` (default: the cluster's) once. A ledger that cannot be read is :attr:`problem`,
        never an empty ledger: every paid label is then left out."""
        view = cls(month_of())
        paid = any(price_of(c) for c in config.values())
        try:
            state = (ledger or Ledger()).state(view.month, create=paid)
            view.back_offs = state["back_offs"]
            view.spent = {label: float(v.get("cost", 0.0)) for label, v in state["month"].items()}
        except Exception as err:  # noqa: BLE001 - routing goes on; paid labels are left out
            view.problem = first_line(err) if isinstance(err, LedgerError) else \
                f"the spending ledger cannot be read ({first_line(err)})"
        return view

    def terms(self, label: str, cfg: LabelConfig | None) -> dict[str, Any]:
        """The cost fields of the label's Offer: price, budget_left, min_time_saved, unavailable."""
        price = price_of(cfg)
        out: dict[str, Any] = {"price": price, "min_time_saved": cfg.min_time_saved if cfg else None}
        if cfg is not None and cfg.budget_per_month is not None:
            out["budget_left"] = 0.0 if self.problem else cfg.budget_per_month - self.spent.get(label, 0.0)
        back = self.back_offs.get(label)
        if back:
            until = time.strftime("%H:%M:%S", time.localtime(back["until"]))
            out["unavailable"] = f"the provider refused it lately ({back['reason']}), backing off until {until}"
        elif self.problem and price is not None:  # what it spends could not be counted, nor kept to a budget
            out["unavailable"] = self.problem
        return out


def refusals_at_start(unavailable: Iterable[FailedAttempt]) -> list[quota.Refusal]:
    """Actors that could not start because a provider refused them (quota, capacity, session limit)."""
    out: list[quota.Refusal] = []
    for attempt in unavailable:
        kind = quota.classify(attempt.message)
        if kind and attempt.encoder != SOFTWARE and all(r.label != attempt.encoder for r in out):
            out.append(quota.Refusal(attempt.encoder, kind, attempt.message, attempt.actor, 0))
    return out


@dataclass
class Bill:
    """What :func:`settle` gives the job report: cost per paid label, what providers did, notes."""

    cost: dict[str, dict] = field(default_factory=dict)   # paid label -> {cost, currency, seconds, bytes, month, ...}
    provider: list[str] = field(default_factory=list)     # each refusal, and the back-off it led to
    notes: list[str] = field(default_factory=list)        # what the ledger missed


def settle(job_id: str, started: float, segments: Sequence[EncodeResult], failures: Sequence[FailedAttempt],
           config: Mapping[str, LabelConfig], refusals: Iterable[quota.Refusal] = (),
           ledger: Ledger | LedgerFile | None = None) -> Bill:
    """Record the job's cost per paid label (``ledger``, default the cluster's; the metric), back off the
    refused labels, and return the :class:`Bill` for the report. ``segments`` and ``failures`` are the
    job's (so far, when it failed)."""
    bill = Bill()
    first: dict[str, quota.Refusal] = {}
    for r in refusals:  # once per label (refused at its start and again while encoding: one back-off)
        first.setdefault(r.label, r)
    refusals = list(first.values())
    month = month_of(started or None)
    usage = label_usage(segments, failures)
    ledger = ledger or Ledger()
    for label, (seconds, nbytes) in sorted(usage.items()):
        price = price_of(config.get(label))
        if price is None:
            continue
        amount = round(charge(price, seconds, nbytes), 6)  # as the ledger keeps it: whole millionths
        bill.cost[label] = {"cost": amount, "currency": price.currency, "seconds": seconds, "bytes": nbytes,
                            "month": month}
        metrics.cost_recorded(label=label, amount=amount, currency=price.currency)
        try:
            total = ledger.add(Spend(month, label, job_id, seconds, nbytes, amount, price.currency))
            bill.cost[label]["month_total"] = total
        except Exception as err:  # noqa: BLE001 - the job's output is fine; say the ledger missed it
            bill.notes.append(f"{label}: cost {money(amount, price.currency)} not recorded in the ledger: "
                              f"{first_line(err)}")
    for refusal in refusals:
        bill.provider.append(refusal.describe())
        try:
            provider = provider_of(config.get(refusal.label))
            seconds = ledger.back_off(refusal.label, refusal.kind,  # the last one doubled
                                      provider=provider.name if provider else None)["seconds"]
            bill.provider.append(f"{refusal.label}: left out of new jobs for {seconds:.0f} s (back-off)")
        except Exception as err:  # noqa: BLE001
            bill.notes.append(f"{refusal.label}: back-off not recorded: {first_line(err)}")
    refused = {r.label for r in refusals}
    for label in usage:
        if label not in refused and price_of(config.get(label)) is not None:
            try:  # it worked again: the next refusal starts from the first back-off
                ledger.clear_back_off(label)
            except Exception:  # noqa: BLE001
                pass
    return bill
