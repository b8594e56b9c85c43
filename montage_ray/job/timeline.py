"""A picture of a finished job: one row per encoder actor, one bar per segment attempt.

Successful attempts are coloured by resource label and carry the segment number; failed attempts are red
and hatched, with their cause. A user sees at a glance who did what, who was idle and where time went::

    from montage_ray import encode
    from montage_ray.job.timeline import draw_timeline

    report = encode("in.mp4", "out.mp4")
    draw_timeline(report, "timeline.png")      # or: montage-ray encode ... --timeline timeline.png
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from montage_ray.encoders.backends import BACKENDS, Backend
from montage_ray.util.files import write_atomically
from montage_ray.job.report import JobReport

#: Bar colours by resource label, from the backend table (a label not in it gets the fallback).
LABEL_COLOURS = {name: backend.colour for name, backend in BACKENDS.items()}
FALLBACK_COLOUR = Backend.colour
FAILED_COLOUR = "#d62728"
PHASE_COLOURS = ("#e6e6e6", "#cfcfcf")
DRIVER_ROW = "driver (job phases)"


@dataclass(frozen=True)
class Bar:
    """One attempt on the timeline: seconds are relative to the job's start."""

    actor: str
    label: str
    segment: int
    start: float
    seconds: float
    failed: bool
    reason: str = ""


def bars(report: JobReport) -> list[Bar]:
    """Every attempt that ran (successful segments and failed tries), relative to the job's start."""
    origin = report.started
    out = [Bar(s.actor, s.resource or "cpu", s.segment, s.started - origin, s.seconds, False)
           for s in report.segments if s.started]
    out += [Bar(f.actor, f.label or "cpu", f.segment, f.started - origin, f.seconds, True, f.reason)
            for f in report.failures if f.started and f.segment >= 0]
    return sorted(out, key=lambda b: (b.start, b.actor))


def rows(report: JobReport, drawn: list[Bar]) -> list[str]:
    """Actor names, top to bottom: the job's workers in their order, then any other actor that ran."""
    names = [w["name"] for w in report.workers]
    for bar in drawn:
        if bar.actor not in names:
            names.append(bar.actor)
    return names


def draw_timeline(report: JobReport, path: str, *, overwrite: bool = True) -> str:
    """Draw ``report`` as a PNG at ``path`` (written atomically; without ``overwrite`` an existing file is not
    replaced) and return the path."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    drawn = bars(report)
    names = [DRIVER_ROW] + rows(report, drawn)
    y = {name: i for i, name in enumerate(names)}
    height = max(2.5, 0.45 * len(names) + 1.6)
    fig, ax = plt.subplots(figsize=(12, height), dpi=100)
    try:
        end = max([b.start + b.seconds for b in drawn] + [report.wall_seconds, 1e-3])
        for i, (phase, start, stop) in enumerate(report.phases):  # where the driver's time went
            ax.barh(0, stop - start, left=start, height=0.7, color=PHASE_COLOURS[i % 2], edgecolor="white")
            if stop - start > end / 30:
                ax.text((start + stop) / 2, 0, phase, ha="center", va="center", fontsize=7, clip_on=True)
        for bar in drawn:
            colour = FAILED_COLOUR if bar.failed else LABEL_COLOURS.get(bar.label, FALLBACK_COLOUR)
            ax.barh(y[bar.actor], max(bar.seconds, end / 500), left=bar.start, height=0.7, color=colour,
                    edgecolor="black", linewidth=0.5, hatch="xx" if bar.failed else None, alpha=0.9)
            text = f"{bar.segment}" + (f" {bar.reason}" if bar.failed else "")
            if bar.seconds > end / 40:
                ax.text(bar.start + bar.seconds / 2, y[bar.actor], text, ha="center", va="center", fontsize=7,
                        color="white" if not bar.failed else "black", clip_on=True)
        ax.set_yticks(range(len(names)), labels=names, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, end * 1.02)
        ax.set_xlabel("seconds since the job started")
        # where the rest of the time went, as a caption
        phases = ", ".join(f"{k} {v:.1f}s" for k, v in report.timings.items())
        ax.set_title(f"{os.path.basename(report.source)}: {report.frames} frames in {report.wall_seconds:.1f} s "
                     f"({report.speed:.2f}x realtime), {len(report.failures)} failed attempts\n{phases}",
                     fontsize=9)
        labels = sorted({b.label for b in drawn if not b.failed})
        legend = [Patch(color=LABEL_COLOURS.get(lb, FALLBACK_COLOUR), label=lb) for lb in labels]
        if any(b.failed for b in drawn):
            legend.append(Patch(facecolor=FAILED_COLOUR, hatch="xx", edgecolor="black", label="failed attempt"))
        if legend:
            ax.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)
        ax.grid(axis="x", linestyle=":", alpha=0.5)
        fig.tight_layout()
        write_atomically(path, lambda tmp: fig.savefig(tmp, format="png"), overwrite=overwrite, what="timeline")
    finally:
        plt.close(fig)
    return path
