"""How fast the link to a remote node really is, measured the way a job uses it: Ray moving an object there.

Routing weighs a remote label (the cloud GPU) by its link's bandwidth; a configured figure or a node label
says what the link should do, this says what it does now. The driver puts a blob of random bytes in its
object store and a task pinned to the remote node takes it: the time that takes, less the time of the same
call with a tiny blob (scheduling, the round trip), is the transfer. Blobs grow until one takes at least
``min_seconds`` or reaches ``max_bytes``, so a fast link costs a fraction of a second and a slow one a few
seconds; the rate is taken between the last two blobs, so that what every call shares (scheduling, the
round trip, a traffic shaper's first burst) drops out, and where they were quick each is the better of two
tries, so that a busy driver's stall is not read as a slow link::

    from montage_ray.cluster.link import measure_links

    speeds, notes = measure_links(ray.nodes(), config)     # {'nvenc': LinkSpeed(mbps=4.9, ...)}, []
    speeds["nvenc"].mbps

A node that does not answer within ``timeout`` is not measured (its note says so); routing then has only
the configured figure, if any.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from montage_ray.cluster.nodes import Node, remote_nodes
from montage_ray.encoders.config import LabelConfig

log = logging.getLogger(__name__)

#: Set to 0 to route on configured bandwidths only (no measurement before each job).
MEASURE_ENV = "MONTAGE_RAY_MEASURE_LINKS"


@dataclass(frozen=True)
class LinkSpeed:
    """One measurement of the link to a node: ``mbps`` from ``nbytes`` moved in ``seconds``."""

    node: str            # the node's address
    mbps: float
    nbytes: int
    seconds: float


def _receiver() -> Any:
    import ray

    @ray.remote(num_cpus=0, max_retries=0)
    def receive(blob: bytes) -> int:
        return len(blob)

    return receive


def measure_node(node_id: str, address: str, *, min_seconds: float = 0.5, max_bytes: int = 4 * 2**20,
                 timeout: float = 30.0) -> LinkSpeed | None:
    """The link from this driver to the node ``node_id`` (at ``address``); None if it did not answer."""
    import ray
    from ray.exceptions import GetTimeoutError, RayError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    receive = _receiver().options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
    deadline = time.monotonic() + timeout

    def timed(nbytes: int) -> float:
        blob = ray.put(os.urandom(nbytes))  # a new object each time: the node must fetch it again
        start = time.monotonic()
        ref = receive.remote(blob)
        try:
            got = ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
        except (GetTimeoutError, RayError):
            ray.cancel(ref, force=True)
            raise
        if got != nbytes:
            raise RuntimeError("short transfer")
        return time.monotonic() - start

    try:
        started = time.monotonic()
        timed(1)                    # a worker on that node, started once
        warm = time.monotonic() - started
        latency = min(timed(1), timed(1))
        sizes, times = [0], [latency]
        nbytes = 256 * 2**10
        while True:
            sizes.append(nbytes)
            times.append(timed(nbytes))
            if times[-1] - latency >= min_seconds or nbytes >= max_bytes:
                break
            # the next blob sized to take about twice min_seconds at the speed just seen
            nbytes = min(max_bytes, max(nbytes * 2, int(nbytes * 2 * min_seconds / max(times[-1] - latency, 1e-3))))
        if times[-1] < 2 * min_seconds:
            # a busy machine only ever adds time to a call: where it is cheap, the quicker of two tries of
            # the last two sizes
            times[-2] = min(times[-2], timed(sizes[-2])) if sizes[-2] else times[-2]
            times[-1] = min(times[-1], timed(sizes[-1]))
    except (GetTimeoutError, RayError, RuntimeError):
        return None
    # the rate between the last two sizes: what both calls share (scheduling, the round trip, a shaper's
    # first burst) drops out
    moved, seconds = sizes[-1] - sizes[-2], max(times[-1] - times[-2], 1e-6)
    log.info("link to %s: %.3g Mbit/s (%d bytes in %.2f s more than %d; the first call took %.1f s)",
             address, moved * 8 / seconds / 1e6, sizes[-1], seconds, sizes[-2], warm)
    return LinkSpeed(address, moved * 8 / seconds / 1e6, sizes[-1], times[-1] - latency)


def measure_links(nodes: Iterable[Node], config: Mapping[str, LabelConfig], *,
                  labels: Iterable[str] | None = None, timeout: float = 30.0
                  ) -> tuple[dict[str, LinkSpeed], list[str]]:
    """{remote label: the slowest measured link to a node offering it}, and a note per node not measured.
    Nothing is measured when ``MONTAGE_RAY_MEASURE_LINKS=0``."""
    if os.environ.get(MEASURE_ENV, "1") == "0":
        return {}, []
    wanted = set(labels) if labels is not None else None
    speeds: dict[str, LinkSpeed] = {}
    notes: list[str] = []
    seen: dict[str, LinkSpeed | None] = {}
    for label, where in remote_nodes(nodes, config).items():
        if wanted is not None and label not in wanted:
            continue
        for node_id, address in where:
            if node_id not in seen:
                seen[node_id] = measure_node(node_id, address, timeout=timeout)
            speed = seen[node_id]
            if speed is None:
                notes.append(f"{label}: the link to {address} was not measured (no answer in {timeout:g} s)")
            elif label not in speeds or speed.mbps < speeds[label].mbps:
                speeds[label] = speed
    return speeds, notes
