"""Custom metrics for the Ray dashboard (and Prometheus/Grafana behind it), tagged by encoder label and node.

Encoder actors record what they encode; the driver records failures and retries, which only it sees. Ray
exports them from every node's metrics agent with a ``ray_`` prefix (``ray_montage_segments_encoded``, ...),
so the dashboard's Metrics view and any Prometheus scraping the cluster can chart them::

    from montage_ray.util import metrics

    metrics.segment_encoded(label="vaapi", node="server-1/1a2b3c4d", encoder="vaapi:h264_vaapi",
                            frames=300, seconds=1.5, bytes_in=4_000_000, bytes_out=1_000_000)
    metrics.segment_failed(label="qsv", node="server-1/1a2b3c4d", reason="crash")
    metrics.cost_recorded(label="nvenc", amount=0.42, currency="USD")   # ray_montage_cost, by the driver

Recording never raises: a metric that cannot be recorded (no Ray, no metrics agent) is skipped.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any

log = logging.getLogger(__name__)

#: Segment speeds (frames/s) the fps histogram separates: a Pi's CPU to a datacenter GPU.
FPS_BOUNDARIES = [1, 2, 5, 10, 20, 40, 80, 160, 320, 640, 1280]

_TAGS = ("label", "node")


@lru_cache(maxsize=None)
def _metrics() -> dict[str, Any]:
    """The metric objects of this process, made on first use (each process registers its own)."""
    from ray.util.metrics import Counter, Histogram

    return {
        "segments": Counter("montage_segments_encoded", "Segments encoded successfully",
                            tag_keys=_TAGS + ("encoder",)),
        "frames": Counter("montage_frames_encoded", "Video frames encoded", tag_keys=_TAGS + ("encoder",)),
        "fps": Histogram("montage_segment_fps", "Encode speed of one segment (frames/s)",
                         boundaries=FPS_BOUNDARIES, tag_keys=_TAGS + ("encoder",)),
        "bytes": Counter("montage_bytes_moved", "Segment bytes shipped to (in) and back from (out) encoders",
                         tag_keys=_TAGS + ("direction",)),
        "failures": Counter("montage_segment_failures", "Failed segment attempts, by cause",
                            tag_keys=_TAGS + ("reason",)),
        "retries": Counter("montage_segment_retries", "Segments submitted again after a failure",
                           tag_keys=_TAGS),
        "cost": Counter("montage_cost", "Money spent on paid labels (in the label's currency)",
                        tag_keys=("label", "currency")),
    }


def _record(kind: str, method: str, value: float, tags: dict[str, str]) -> None:
    try:
        getattr(_metrics()[kind], method)(value, tags=tags)
    except Exception as err:  # noqa: BLE001 - metrics must never break an encode
        log.debug("metric %s not recorded: %s", kind, err)


def segment_encoded(*, label: str, node: str, encoder: str, frames: int, seconds: float, bytes_in: int,
                    bytes_out: int) -> None:
    """One segment encoded by ``encoder`` (serving ``label``) on ``node``."""
    tags = {"label": label, "node": node, "encoder": encoder}
    _record("segments", "inc", 1, tags)
    _record("frames", "inc", frames, tags)
    if seconds > 0:
        _record("fps", "observe", frames / seconds, tags)
    _record("bytes", "inc", bytes_in, {"label": label, "node": node, "direction": "in"})
    _record("bytes", "inc", bytes_out, {"label": label, "node": node, "direction": "out"})


def segment_failed(*, label: str, node: str, reason: str) -> None:
    """One failed attempt (reason: failed, crash, timeout, frame-count, actor-died, ...)."""
    _record("failures", "inc", 1, {"label": label, "node": node, "reason": reason})


def segment_retried(*, label: str, node: str) -> None:
    """A segment that failed on ``label``/``node`` goes back into the queue."""
    _record("retries", "inc", 1, {"label": label, "node": node})


def cost_recorded(*, label: str, amount: float, currency: str) -> None:
    """A job spent ``amount`` (in ``currency``) on the paid ``label`` (recorded by the driver)."""
    if amount > 0:
        _record("cost", "inc", amount, {"label": label, "currency": currency})


# -- the encoder service (montage_ray.cluster.scheduler exports these about twice a second) ----------------


@lru_cache(maxsize=None)
def _service_metrics() -> dict[str, Any]:
    from ray.util.metrics import Gauge

    return {
        "actors": Gauge("montage_service_actors", "Encoder actors of the service, busy or idle",
                        tag_keys=("label", "node", "state")),
        "jobs": Gauge("montage_service_jobs", "Jobs in flight on the service"),
        "queue": Gauge("montage_service_queue", "Tickets asked for and not granted yet, per job",
                       tag_keys=("job",)),
        "share": Gauge("montage_service_job_share", "Share of the service's tickets a job holds",
                       tag_keys=("job",)),
        "progress": Gauge("montage_service_job_progress", "Share of a job's frames encoded", tag_keys=("job",)),
    }


class ServiceGauges:
    """The encoder service's gauges as one scheduler exports them: it remembers the series it set, so that
    those of actors and jobs that are gone are set to 0 (the scheduler actor owns one)."""

    def __init__(self) -> None:
        self._actors: set[tuple[str, str, str]] = set()   # (label, node, state) series last set above 0
        self._jobs: set[str] = set()                       # jobs of the last status

    def export(self, status: dict[str, Any]) -> None:
        """The scheduler's status as gauges: actors per label, node and state; jobs, their queue, share,
        progress."""
        try:
            gauges = _service_metrics()
            counts: dict[tuple[str, str, str], int] = {}
            for a in status.get("actors", []):
                key = (a["label"], a["node"], "busy" if a["busy"] else "idle")
                counts[key] = counts.get(key, 0) + 1
            for key in self._actors - set(counts):
                counts[key] = 0
            for (label, node, state), n in counts.items():
                gauges["actors"].set(n, tags={"label": label, "node": node, "state": state})
            self._actors = {k for k, n in counts.items() if n}
            gauges["jobs"].set(len(status.get("jobs", [])))
            queued = {q["job"]: sum(q["wants"].values()) for q in status.get("queue", [])}
            jobs = {j["job"]: j for j in status.get("jobs", [])}
            for job in self._jobs | set(jobs):
                j = jobs.get(job, {})
                gauges["queue"].set(queued.get(job, 0), tags={"job": job})
                gauges["share"].set(j.get("share", 0.0), tags={"job": job})
                gauges["progress"].set(j.get("progress", 0.0), tags={"job": job})
            self._jobs = set(jobs)
        except Exception as err:  # noqa: BLE001 - metrics must never break the service
            log.debug("service metrics not recorded: %s", err)
