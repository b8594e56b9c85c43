"""What a test reads back from a real Ray node (no montage-ray code): its metrics exporter."""

from __future__ import annotations

import time
import urllib.request

import ray


def exported_total(metric: str, *tags: str, at_least: float, timeout: float = 60.0) -> tuple[float, str]:
    """Sum of ``metric``'s samples on the first node whose lines carry every tag (``'label="cpu"'``),
    polled until it reaches ``at_least`` or ``timeout`` passes (Ray reports metrics every 10 s); the
    total and the exporter's last page."""
    node = ray.nodes()[0]
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    deadline, total, text = time.monotonic() + timeout, 0.0, ""
    while True:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
        total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                    if line.startswith(metric) and all(tag in line for tag in tags))
        if total >= at_least - 1e-9 or time.monotonic() > deadline:
            return total, text
        time.sleep(1)
