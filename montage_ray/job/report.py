"""The job report: what was encoded, by whom, how fast, and where the time went (and, with a quality
target, each segment's measured score, knob and tries: :meth:`JobReport.quality_summary`).

:class:`JobReport` is what :func:`montage_ray.encode` returns; ``to_dict()`` is the ``--report`` JSON and
:meth:`JobReport.summary` the table printed at the end of a CLI run::

    report = encode("in.mp4", "out.mp4")
    print(report.summary())
    report.timings["encode"], report.segments[0].encoder
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from montage_ray.util.files import write_atomically
from montage_ray.encoders.records import EncodeResult, FailedAttempt




@dataclass
class JobReport:
    """Everything a finished job can tell: source, output, per-segment results, failures, timings."""

    source: str
    output: str
    codec: str
    frames: int
    duration: float
    job_id: str = ""
    started: float = 0.0                                   # wall-clock start (epoch seconds)
    wall_seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)   # seconds per phase (probe, plan, encode, ...)
    phases: list[tuple[str, float, float]] = field(default_factory=list)  # (phase, start, end) since start
    segments: list[EncodeResult] = field(default_factory=list)
    failures: list[FailedAttempt] = field(default_factory=list)
    encoders: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ray_address: str = ""
    profile: str = "standard"
    route: list[str] = field(default_factory=list)         # why each label was used or left out
    workers: list[dict] = field(default_factory=list)      # the encoder actors that took part
    duplicates: int = 0                                    # straggling segments re-issued at the tail
    # what the paid labels cost
    cost: dict[str, dict] = field(default_factory=dict)    # paid label -> {cost, currency, seconds, bytes, ...}
    provider: list[str] = field(default_factory=list)      # what providers refused, and what was done about it
    hdr: list[str] = field(default_factory=list)           # HDR source: what it has, segments that lost it, output
    segments_reused: int = 0                               # taken from the segment cache (an earlier run's)

    @property
    def speed(self) -> float:
        """Realtime factor: seconds of video encoded per second of wall time."""
        return self.duration / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def standins(self) -> list[str]:
        """Labels served by CPU stand-ins in this job (empty in production); each segment's ``encoder``
        says what stood in."""
        return sorted({s.resource or s.backend for s in self.segments if s.standin})

    def to_dict(self) -> dict:
        data = asdict(self)
        data["speed"] = self.speed
        data["standins"] = self.standins
        for seg in data["segments"]:
            seg["fps"] = seg["frames"] / seg["seconds"] if seg["seconds"] else 0.0
            failed = [f for f in self.failures if f.segment == seg["segment"]]
            seg["attempts"] = len(failed) + 1  # the failed tries and the one that counted
            seg["failure_causes"] = [f"{f.reason} on {f.actor}: {f.message}" for f in failed]
        return data

    def write_json(self, path: str, *, overwrite: bool = True) -> None:
        """Write the report as JSON, atomically (see :func:`montage_ray.util.files.write_atomically`); without
        ``overwrite`` an existing file is not replaced."""
        def write(tmp: str) -> None:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(self.to_dict(), fh, indent=2)

        write_atomically(path, write, overwrite=overwrite, what="report")

    def summary(self) -> str:
        """A small table per encoder (segments, frames, fps, share of the work, failures) and the timings."""
        rows = {}
        for seg in self.segments:
            row = rows.setdefault(seg.encoder, {"segments": 0, "frames": 0, "seconds": 0.0, "failures": 0})
            row["segments"] += 1
            row["frames"] += seg.frames
            row["seconds"] += seg.seconds
        for fail in self.failures:
            rows.setdefault(fail.encoder, {"segments": 0, "frames": 0, "seconds": 0.0, "failures": 0})
            rows[fail.encoder]["failures"] += 1
        width = max([len("encoder")] + [len(k) for k in rows])
        lines = [f"{'encoder':<{width}}  segments  frames     fps  share  failures"]
        total = max(self.frames, 1)
        for name, row in sorted(rows.items()):
            fps = row["frames"] / row["seconds"] if row["seconds"] else 0.0
            lines.append(f"{name:<{width}}  {row['segments']:>8}  {row['frames']:>6}  {fps:>6.1f}  "
                         f"{100 * row['frames'] / total:>4.0f}%  {row['failures']:>8}")
        phases = ", ".join(f"{k} {v:.2f}s" for k, v in self.timings.items())
        lines.append(f"{self.frames} frames, {self.duration:.2f} s of video in {self.wall_seconds:.2f} s "
                     f"({self.speed:.2f}x realtime); {phases}")
        if self.cost:
            from montage_ray.spending.cost import money

            lines.append("cost: " + ", ".join(f"{label} {money(c['cost'], c['currency'])} ({c['seconds']:.0f} s, "
                                              f"{c['bytes'] / 1e9:.2f} GB)" for label, c in sorted(self.cost.items())))
        lines.extend(f"provider: {line}" for line in self.provider)
        lines.extend(f"hdr: {line}" for line in self.hdr)
        checks = self.check_summary()
        if checks:
            lines.append(checks)
        quality_line = self.quality_summary()
        if quality_line:
            lines.append(quality_line)
        if self.segments_reused:
            lines.append(f"reused: {self.segments_reused} of {len(self.segments)} segments, encoded and verified "
                         "by an earlier run (segment cache)")
        return "\n".join(lines)

    def check_summary(self) -> str:
        """One line on how the segments were checked where they were encoded (see
        :mod:`montage_ray.encoders.checks`): how many decoded in full and how many counted and read, and why
        ("" when no segment says: all reused from an older cache)."""
        counts: dict[tuple[str, str], int] = {}
        for seg in self.segments:
            if seg.check:
                key = (seg.check, seg.check_why)
                counts[key] = counts.get(key, 0) + 1
        if not counts:
            return ""
        shown = {"decode": "decoded in full", "packets": "counted and read"}
        parts = [f"{n} {shown.get(check, check)}" + (f" ({why})" if why else "")
                 for (check, why), n in sorted(counts.items(), key=lambda kv: (kv[0][0], -kv[1]))]
        return "segment checks: " + ", ".join(parts) + "; the output's structure, frames and joins checked"

    def quality_summary(self) -> str:
        """One line on the measured scores (``--target-quality``, ``--measure``): their spread over the
        segments, the re-encodes and the time spent measuring and re-encoding ("" when nothing was measured)."""
        scored = [s for s in self.segments if s.score is not None]
        if not scored:
            return ""
        scores = [s.score for s in scored]
        extra = sum(s.tries - 1 for s in scored)
        spent = sum(s.quality_seconds for s in scored)
        return (f"quality: {scored[0].metric} per segment {min(scores):.3f} to {max(scores):.3f} (spread "
                f"{max(scores) - min(scores):.3f}); {extra} re-encodes, {spent:.1f} s measuring and re-encoding "
                f"of {sum(s.seconds for s in scored):.1f} s encoding")
