"""Which encoder labels take part in a job: pure, table-tested decisions (no Ray here).

The cluster offers labels (``vaapi``, ``nvenc``, ``cpu``, ...), each with a number of sessions and an
expected speed. Local labels always take part; a *remote* label (the cloud GPU, reached over a slow link)
takes part only when shipping its share of the segments there and back, plus its encode time, finishes the
job sooner than leaving it out. Small jobs stay on one local encoder; ``master`` jobs may prefer the labels
configured as best quality::

    from montage_ray.routing import Offer, JobFacts, route

    offers = [Offer("vaapi", sessions=1, fps=240), Offer("cpu", sessions=4, fps=25),
              Offer("nvenc", sessions=3, fps=400, remote=True, bandwidth_mbps=100)]
    route(JobFacts(frames=1800, duration=60, input_bytes=100e6), offers).labels
"""

from __future__ import annotations

from dataclasses import dataclass, field

PROFILES = ("fast", "standard", "master")


@dataclass(frozen=True)
class Offer:
    """One label the cluster offers for this job."""

    label: str
    sessions: int
    fps: float                     # expected frames/s of one session
    remote: bool = False
    bandwidth_mbps: float | None = None
    quality_rank: int = 0
    hardware: bool = True

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


@dataclass(frozen=True)
class Route:
    """The labels chosen, and why (one line per decision, for the report)."""

    labels: tuple[str, ...]
    reasons: tuple[str, ...] = field(default=())


def remote_rate(offer: Offer, job: JobFacts) -> float:
    """Frames/s a remote label adds: its encode speed, capped by the link (transfer overlaps encoding)."""
    if not offer.remote:
        return offer.throughput
    if not offer.bandwidth_mbps:
        return 0.0
    bytes_per_frame = job.input_bytes * (1 + job.output_ratio) / max(job.frames, 1)
    link_fps = offer.bandwidth_mbps * 1e6 / 8 / max(bytes_per_frame, 1.0)
    return min(offer.throughput, link_fps)


def route(job: JobFacts, offers: list[Offer], *, min_gain: float = 0.10) -> Route:
    """Choose the labels for a job. ``min_gain`` is the least fraction of time a remote label must save."""
    if job.profile not in PROFILES:
        raise ValueError(f"unknown profile {job.profile!r}")
    usable = [o for o in offers if o.sessions > 0 and o.fps > 0]
    if not usable:
        return Route((), ("no encoder is offered by the cluster",))
    reasons: list[str] = []
    if job.profile == "master":
        top = max(o.quality_rank for o in usable)
        if top > 0:
            usable = [o for o in usable if o.quality_rank == top]
            reasons.append(f"master: only the best-quality labels (rank {top})")
    local = [o for o in usable if not o.remote]
    remote = [o for o in usable if o.remote]
    if job.duration < job.small_job_seconds and local:
        best = max(local, key=lambda o: (o.hardware, o.fps))
        return Route((best.label,), tuple(reasons) + (f"small job ({job.duration:.0f} s): one local encoder, "
                                                      f"{best.label}",))
    chosen = list(local)
    rate = sum(o.throughput for o in chosen)
    if local:
        reasons.append(f"local: {', '.join(o.label for o in local)} ({rate:.0f} frames/s expected)")
    # Latency of the first round trip: one segment's worth (about 10 s of video) each way before output.
    for o in sorted(remote, key=lambda o: -remote_rate(o, job)):
        added = remote_rate(o, job)
        if added <= 0:
            reasons.append(f"{o.label}: remote with no known bandwidth, left out")
            continue
        without = job.frames / rate if rate else float("inf")
        first_trip = (job.input_bytes * (1 + job.output_ratio) * min(1.0, 10 / max(job.duration, 1e-9))
                      * 8 / (o.bandwidth_mbps * 1e6))
        with_it = job.frames / (rate + added) + first_trip
        if with_it < without * (1 - min_gain):
            chosen.append(o)
            rate += added
            reasons.append(f"{o.label}: remote, {without:.0f} s -> {with_it:.0f} s with it, used")
        else:
            reasons.append(f"{o.label}: remote, would take {with_it:.0f} s vs {without:.0f} s without, left out")
    if not chosen:
        return Route((), tuple(reasons) + ("no usable encoder",))
    return Route(tuple(o.label for o in chosen), tuple(reasons))
