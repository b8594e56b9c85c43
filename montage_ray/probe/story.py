"""The story for a human (``probe --verbose``, scripts/diagnose-qsv.sh): everything the probe knows about one
backend, with what ``vainfo`` says of each render node and driver (the QSV/VAAPI story)::

    from montage_ray.probe import probe_node, story

    print(story(probe_node().backends["qsv"]))
"""

from __future__ import annotations

import re
import shutil

from montage_ray.ffmpeg import tool
from montage_ray.encoders.backends import BACKENDS
from montage_ray.errors import FFmpegError
from montage_ray.probe.node import DEFAULT_TIMEOUT, BackendStatus


def vainfo_report(node: str, driver: str, *, timeout: float = DEFAULT_TIMEOUT) -> str:
    """What ``vainfo`` says of ``node`` with ``LIBVA_DRIVER_NAME=driver`` (empty when vainfo is missing)."""
    vainfo = shutil.which("vainfo")
    if vainfo is None:
        return ""
    try:
        done = tool.run([vainfo, "--display", "drm", "--device", node], timeout=timeout, check=False,
                              env={"LIBVA_DRIVER_NAME": driver})
    except FFmpegError as err:
        return f"vainfo did not finish: {err}"
    text = (done.stdout + done.stderr).strip().splitlines()
    keep = [line for line in text if re.search(r"driver version|vainfo:|error|Enc|failed|returns", line, re.I)]
    return "\n".join(keep[:24]) + (f"\n(vainfo exit status {done.returncode})" if done.returncode else "")


def story(status: BackendStatus, *, vainfo: bool = True, timeout: float = DEFAULT_TIMEOUT) -> str:
    """Everything the probe knows about one backend, as text a user can read top to bottom."""
    lines = [f"== {status.name}: {'AVAILABLE' if status.available else 'unavailable'}"
             + (f" ({status.cause})" if status.cause else "")]
    if status.available:
        lines.append(f"   encoders: {', '.join(f'{c}={e}' for c, e in status.encoders.items())}")
        if status.device:
            lines.append(f"   device: {status.device}")
        if status.env:
            lines.append(f"   environment: {' '.join(f'{k}={v}' for k, v in status.env.items())}")
        if status.resource:
            lines.append(f"   Ray resource: {status.resource}={status.sessions}")
    for note in status.notes:
        lines.append(f"   - {note}")
    if vainfo and status.name in ("vaapi", "qsv"):
        for node in status.devices:
            if not node.openable:
                continue
            for driver in BACKENDS[status.name].probe.drivers:
                report = vainfo_report(node.path, driver, timeout=timeout)
                if report:
                    lines.append(f"   vainfo {node.path} LIBVA_DRIVER_NAME={driver}:")
                    lines += [f"     {line}" for line in report.splitlines()]
    for attempt in status.attempts:
        verdict = "ok" if attempt.ok else f"FAILED: {attempt.cause}"
        lines.append(f"   test {attempt.encoder} on {attempt.device or 'this node'}"
                     + (f" with {' '.join(f'{k}={v}' for k, v in attempt.env.items())}" if attempt.env else "")
                     + f" ({attempt.seconds:.2f} s): {verdict}")
        if not attempt.ok:
            lines.append(f"     $ {attempt.shell()}")
            for line in attempt.stderr.strip().splitlines()[-12:]:
                lines.append(f"     | {line}")
    if not status.available:
        if status.detail:
            lines.append(f"   cause: {status.cause}: {status.detail}")
        lines.append(f"   fix: {status.fix}")
    return "\n".join(lines)
