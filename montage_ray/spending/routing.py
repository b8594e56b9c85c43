"""Which encoder labels take part in a job: pure, table-tested decisions (no Ray here).

The cluster offers labels (``vaapi``, ``nvenc``, ``cpu``, ...), each with a number of sessions and an
expected speed. Local labels take part (a paid one only within its budget); a *remote* label (the cloud
GPU, reached over a slow link) takes part only when shipping its share of the segments there and back, plus
its encode time, finishes the job sooner than leaving it out. Small jobs stay on one local encoder;
``master`` jobs may prefer the labels configured as best quality.

A paid label (``price``), local or remote, in every profile, takes part only while its expected cost fits
in what is left of its monthly budget (``budget_left``): it is billed for as long as the job holds it. ``fast``
and ``standard`` jobs use a paid remote label only when it shortens the job by at least its
``min_time_saved`` share, ``master`` whenever it fits the budget. A label a provider refused lately
(``unavailable``) is left out. Every decision is a line of ``Route.reasons``::

    from montage_ray.spending.routing import Offer, JobFacts, route

    offers = [Offer("vaapi", sessions=1, fps=240), Offer("cpu", sessions=4, fps=25),
              Offer("nvenc", sessions=3, fps=400, remote=True, bandwidth_mbps=100)]
    route(JobFacts(frames=1800, duration=60, input_bytes=100e6), offers).labels

    paid = Offer("nvenc", 3, 400, remote=True, bandwidth_mbps=100, price=Price(0.6, 0.09), budget_left=0.01)
    route(JobFacts(frames=18000, duration=600, input_bytes=1e9), offers[:2] + [paid]).reasons[-1]
    # 'nvenc left out: this job would cost $0.05, $0.01 left this month'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

from montage_ray.encoders import hdr
from montage_ray.encoders.backends import backend_of
from montage_ray.encoders.config import LabelConfig
from montage_ray.media.info import HdrInfo
from montage_ray.spending.cost import Price, charge, money

PROFILES = ("fast", "standard", "master")


@dataclass(frozen=True)
class Offer:
    """One label the cluster offers for this job."""

    label: str
    sessions: int
    fps: float                     # expected frames/s of one session
    remote: bool = False
    bandwidth_mbps: float | None = None
    bandwidth_source: str = ""      # where the bandwidth comes from ("measured", "configured", ...), for reasons
    quality_rank: int = 0
    hardware: bool = True
    # a paid label's cost terms
    price: Price | None = None           # what it costs while busy (None: free)
    budget_left: float | None = None     # what is left of its budget this month (None: no budget)
    min_time_saved: float | None = None  # fast/standard: least share of job time it must save (else min_gain)
    unavailable: str | None = None       # why it cannot take part now (a provider's back-off)

    @property
    def throughput(self) -> float:
        return self.sessions * self.fps


@dataclass(frozen=True)
class JobFacts:
    """What routing needs to know about the job."""

    frames: int
    duration: float                # seconds of video
    input_bytes: float
    output_ratio: float = 0.5      # expected output size / input size (the way back over the link)
    profile: str = "standard"
    small_job_seconds: float = 20.0  # shorter jobs stay on one local encoder
    segment_seconds: float | None = None  # the job's segment length when chosen; None: about 10 s


@dataclass(frozen=True)
class Route:
    """The labels chosen, and why (one line per decision, for the report)."""

    labels: tuple[str, ...]
    reasons: tuple[str, ...] = field(default=())
    expected_costs: tuple[tuple[str, float], ...] = ()  # (label, cost) of the paid labels chosen


def remote_rate(offer: Offer, job: JobFacts) -> float:
    """Frames/s a remote label adds: its encode speed, capped by the link (transfer overlaps encoding)."""
    if not offer.remote:
        return offer.throughput
    if not offer.bandwidth_mbps:
        return 0.0
    bytes_per_frame = job.input_bytes * (1 + job.output_ratio) / max(job.frames, 1)
    link_fps = offer.bandwidth_mbps * 1e6 / 8 / max(bytes_per_frame, 1.0)
    return min(offer.throughput, link_fps)


def first_trip(offer: Offer, job: JobFacts) -> float:
    """Seconds before a remote label's first output is back: one segment (the job's length, else about 10 s
    of video) each way."""
    if not offer.remote or not offer.bandwidth_mbps:
        return 0.0
    seconds = job.segment_seconds or 10.0
    return (job.input_bytes * (1 + job.output_ratio) * min(1.0, seconds / max(job.duration, 1e-9))
            * 8 / (offer.bandwidth_mbps * 1e6))


def _remote(offer: Offer) -> str:
    """"remote", with the link's speed and its source when the offer says where it comes from."""
    if not offer.bandwidth_source or not offer.bandwidth_mbps:
        return "remote"
    return f"remote (link {offer.bandwidth_mbps:.3g} Mbit/s, {offer.bandwidth_source})"


def expected_cost(offer: Offer, job: JobFacts, job_seconds: float, share: float) -> float:
    """What ``offer`` costs in a job of ``job_seconds`` where it encodes ``share`` of the frames: it is held
    (and billed) the whole job, and its share of the file travels there and back."""
    if offer.price is None:
        return 0.0
    return charge(offer.price, job_seconds, job.input_bytes * (1 + job.output_ratio) * share)


def _over_budget(offer: Offer, cost: float) -> str | None:
    if offer.budget_left is None or cost <= offer.budget_left:
        return None
    currency = offer.price.currency if offer.price else "USD"
    return (f"{offer.label} left out: this job would cost {money(cost, currency)}, "
            f"{money(max(0.0, offer.budget_left), currency)} left this month")


def _affordable_best(job: JobFacts, usable: list[Offer], reasons: list[str]) -> list[Offer]:
    """master: the best-quality labels whose paid ones fit their budget when that group does the job."""
    while usable:
        top = max(o.quality_rank for o in usable)
        group = [o for o in usable if o.quality_rank == top]
        rate = sum(remote_rate(o, job) for o in group)
        costs = {o.label: expected_cost(o, job, job.frames / rate + first_trip(o, job),
                                        remote_rate(o, job) / rate) if rate > 0 else 0.0 for o in group}
        broke = [(o, _over_budget(o, costs[o.label])) for o in group]
        broke = [(o, why) for o, why in broke if why]
        if not broke:
            if top > 0:
                reasons.append(f"master: only the best-quality labels (rank {top})")
                return group
            return usable
        for o, why in broke:
            reasons.append(why)  # type: ignore[arg-type]
            usable = [u for u in usable if u is not o]
    return usable


def _local_within_budget(job: JobFacts, local: list[Offer], reasons: list[str]) -> list[Offer]:
    """The local labels whose paid ones fit their budget when the local labels share the job: a local label
    is held, and billed, until the job ends. One over budget is left out and the rest weighed again (the job
    then takes longer)."""
    while local:
        rate = sum(o.throughput for o in local)
        broke = [(o, _over_budget(o, expected_cost(o, job, job.frames / rate, o.throughput / rate)))
                 for o in local]
        broke = [(o, why) for o, why in broke if why]
        if not broke:
            break
        reasons += [why for _, why in broke]  # type: ignore[misc]
        local = [o for o in local if all(o is not b for b, _ in broke)]
    return local


def _paid_local(offer: Offer, cost: float, costs: list[tuple[str, float]]) -> list[str]:
    """The line for a paid local label that takes part (none for a free one), its cost added to ``costs``."""
    if offer.price is None or offer.price.free:
        return []
    costs.append((offer.label, cost))
    currency = offer.price.currency
    left = "" if offer.budget_left is None else f", {money(max(0.0, offer.budget_left), currency)} left this month"
    return [f"{offer.label}: paid, would cost {money(cost, currency)}{left}, used"]


def route(job: JobFacts, offers: list[Offer], *, min_gain: float = 0.10) -> Route:
    """Choose the labels for a job. ``min_gain`` is the least fraction of time a remote label must save
    (a label's own ``min_time_saved`` overrides it); ``master`` jobs need only some gain."""
    if job.profile not in PROFILES:
        raise ValueError(f"unknown profile {job.profile!r}")
    reasons: list[str] = []
    usable = []
    for o in offers:
        if o.sessions <= 0 or o.fps <= 0:
            continue
        if o.unavailable:
            reasons.append(f"{o.label} left out: {o.unavailable}")
            continue
        usable.append(o)
    if not usable:
        return Route((), tuple(reasons) + ("no encoder is offered by the cluster",))
    if job.profile == "master":
        usable = _affordable_best(job, usable, reasons)
    local = [o for o in usable if not o.remote]
    remote = [o for o in usable if o.remote]
    costs: list[tuple[str, float]] = []
    if job.duration < job.small_job_seconds and local:
        for best in sorted(local, key=lambda o: (o.hardware, o.fps), reverse=True):
            cost = expected_cost(best, job, job.frames / best.fps, 1.0)  # one session does it all
            why = _over_budget(best, cost)
            if why:
                reasons.append(why)
                continue
            paid = _paid_local(best, cost, costs)
            return Route((best.label,), tuple(reasons) + (f"small job ({job.duration:.0f} s): one local encoder, "
                                                          f"{best.label}", *paid), tuple(costs))
        local = []
    local = _local_within_budget(job, local, reasons)
    chosen = list(local)
    rate = sum(o.throughput for o in chosen)
    if local:
        reasons.append(f"local: {', '.join(o.label for o in local)} ({rate:.0f} frames/s expected)")
        for o in local:
            reasons += _paid_local(o, expected_cost(o, job, job.frames / rate, o.throughput / rate), costs)
    for o in sorted(remote, key=lambda o: -remote_rate(o, job)):
        added = remote_rate(o, job)
        if added <= 0:
            reasons.append(f"{o.label}: remote with no known bandwidth, left out")
            continue
        without = job.frames / rate if rate else float("inf")
        with_it = job.frames / (rate + added) + first_trip(o, job)
        need = 0.0 if job.profile == "master" else (o.min_time_saved if o.min_time_saved is not None else min_gain)
        if not with_it < without * (1 - need):
            saved = f"saves {100 * (1 - with_it / without):.0f} %, needs {100 * need:.0f} %" if without > with_it \
                else "no faster"
            reasons.append(f"{o.label}: {_remote(o)}, would take {with_it:.0f} s vs {without:.0f} s without "
                           f"({saved}), left out")
            continue
        cost = expected_cost(o, job, with_it, added / (rate + added))
        why = _over_budget(o, cost)
        if why:
            reasons.append(why)
            continue
        chosen.append(o)
        rate += added
        priced = f", would cost {money(cost, o.price.currency)}" if o.price and not o.price.free else ""
        if o.price and not o.price.free:
            costs.append((o.label, cost))
        timing = f"{without:.0f} s -> {with_it:.0f} s with it" if without < float("inf") \
            else f"the only label: {with_it:.0f} s"
        reasons.append(f"{o.label}: {_remote(o)}, {timing}{priced}, used")
    if not chosen:
        return Route((), tuple(reasons) + ("no usable encoder",))
    return Route(tuple(o.label for o in chosen), tuple(reasons), tuple(costs))


def master_offers(offers: Iterable[Offer], info: HdrInfo | None, codec: str,
                  config: Mapping[str, LabelConfig]) -> tuple[list[Offer], list[str]]:
    """``--profile master`` on an HDR source: leave out the labels whose encoder cannot carry HDR in
    ``codec``, as long as one that can is left (else nothing is left out and a line says the metadata will
    be lost). Returns the offers kept and one line per decision."""
    offers = list(offers)
    if info is None:
        return offers, []
    keep, lines = [], []
    for offer in offers:
        cfg = config.get(offer.label)
        backend = backend_of(offer.label, cfg.backend if cfg else None)
        if hdr.carry(backend, codec, copies=bool(cfg and cfg.passthrough)) is None:
            lines.append(f"{offer.label} left out: HDR source and {hdr.gap(backend, codec)} (master)")
        else:
            keep.append(offer)
    if not keep:
        return offers, [f"master: no offered encoder can carry HDR10 metadata in {codec}; it will be lost"]
    return keep, lines
