"""What flows between the stages of a job about encoding: plain, frozen records, no behaviour of note.

:class:`JobSettings` goes to every encoder actor with a job's segments; :class:`EncodeResult` comes back
for each segment encoded; :class:`FailedAttempt` is a try that did not. The report, the budget, the cache
and the cluster all read them, so they live here rather than with the code that makes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from montage_ray.encoders import quality
from montage_ray.encoders.checks import Verify
from montage_ray.media.info import VideoInfo


@dataclass(frozen=True)
class EncodeResult:
    """What one successful segment encode did, for the job report."""

    segment: int
    frames: int
    bytes_in: int
    bytes_out: int
    seconds: float
    encoder: str            # the spec's label, e.g. "cpu:libx264" or "vaapi (stand-in: libx264 on CPU)"
    backend: str
    resource: str | None
    standin: bool
    node: str
    actor: str = ""
    attempt: int = 1
    stderr: str = field(default="", repr=False)
    started: float = 0.0    # wall-clock time (epoch seconds) the encode began on its node
    ffmpeg: str = ""        # version of the ffmpeg that encoded it (nodes may run different ones)
    ffmpeg_build: str = ""  # which build of it (FFmpegCaps.build): the segment cache keys pieces by it
    hdr: str = ""           # HDR source only: "kept", or "lost: why" (see montage_ray.encoders.hdr)
    # with a quality target (see montage_ray.encoders.quality):
    metric: str = ""        # the metric measured against the source piece ("" when none was asked)
    score: float | None = None   # the kept encode's score
    knob: str = ""          # the kept encode's knob, e.g. "-crf 24.5" ("" when the encoder has none)
    tries: int = 1          # encodes made to reach the target (1: the first one was kept as it was)
    tried: tuple[tuple[str, float], ...] = ()   # every try's (knob, score), in order
    quality_seconds: float = 0.0  # time spent measuring and re-encoding after the first encode
    reused: bool = False    # taken from the segment cache (montage_ray.job.cache): encoded by an earlier run
    check: str = ""         # how its actor checked it: "decode" or "packets" (montage_ray.encoders.checks.Check)
    check_why: str = ""     # why that check (the job's --verify, or what auto went by)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class FailedAttempt:
    """A failed try of one segment on one encoder (successful tries are the ``segments``)."""

    segment: int
    attempt: int
    encoder: str
    actor: str
    reason: str             # failed, crash, timeout, frame-count, actor-died, not-scheduled, unavailable
    message: str
    stderr: str = ""        # ffmpeg's stderr, trimmed to its tail
    started: float = 0.0    # wall-clock time (epoch seconds) the attempt began; 0 when it never ran
    seconds: float = 0.0    # how long it ran before it failed
    node: str = ""
    label: str = ""         # the resource label of the actor


@dataclass(frozen=True)
class JobSettings:
    """What every segment of one job shares: the codec and quality asked for, and the source's look."""

    codec: str
    quality: int
    preset: str
    video: VideoInfo
    job_id: str = ""        # carried into the actors' log lines
    frame_filter: str | None = None  # plan.fit_frame's filter for sizes the encoders cannot take as they are
    verify: Verify = Verify.AUTO  # how the actors check their segments (see montage_ray.encoders.checks)
    target: quality.Target | None = None  # --target-quality / --measure: each actor measures its segment

    @property
    def sar(self) -> str | None:
        sar = self.video.sar
        return f"{sar.numerator}/{sar.denominator}" if sar else None
