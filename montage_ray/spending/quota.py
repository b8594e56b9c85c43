"""Provider limits: tell a quota or rate-limit refusal from a broken encoder, and how long to back off.

A paid remote label can refuse work for reasons that say nothing about the video: the provider is out of
capacity, a rate limit was hit, or the GPU's encoder session limit is reached (NVENC's
``OpenEncodeSessionEx failed: out of memory`` / ``incompatible client key``). Such a refusal must never
fail a job: the label leaves the job, its segments go to local encoders, and the next jobs leave it out
until a back-off has passed. :func:`classify` is pure and table-tested::

    from montage_ray.spending.quota import classify, next_backoff

    classify("[h264_nvenc] OpenEncodeSessionEx failed: out of memory (10)")   # 'session-limit'
    classify("Invalid data found when processing input")                     # None
    next_backoff(None), next_backoff(60.0)                                    # (60.0, 120.0)
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any, Sequence

from montage_ray.encoders.backends import SOFTWARE
from montage_ray.spending.providers import PROVIDERS, provider_named

log = logging.getLogger(__name__)

#: The encoder's own refusal (NVENC's session limit), tried before every provider's texts
#: (:attr:`~montage_ray.spending.providers.Provider.refusals`): patterns match ffmpeg's stderr, Ray's and
#: providers' texts.
SESSION_LIMIT = re.compile(r"OpenEncodeSessionEx failed|incompatible client key|"
                           r"session limit|too many (concurrent )?(encode )?sessions", re.I)


def patterns() -> list[tuple[str, re.Pattern[str]]]:
    """(kind, pattern) in the order they are tried: the session limit, then each provider's refusals."""
    return [("session-limit", SESSION_LIMIT), *(r for p in PROVIDERS.values() for r in p.refusals)]


def classify(text: str | None) -> str | None:
    """``session-limit``, ``capacity``, ``rate-limit`` or ``quota`` (or another kind a provider's row names)
    when ``text`` is a refusal."""
    if not text:
        return None
    for kind, pattern in patterns():
        if pattern.search(text):
            return kind
    return None


def next_backoff(previous: float | None, provider: str | None = None) -> float:
    """Seconds to leave a label out after a refusal, given the last back-off (None: the first refusal), by
    the rule of ``provider`` (default: :data:`~montage_ray.spending.providers.DEFAULT`)."""
    return provider_named(provider).next_backoff(previous)


#: What a CPU stand-in prints when its ``standin_quota_after`` is reached (TESTS AND SIMULATIONS ONLY):
#: the text a real T4 gives when its encoder sessions are used up, so the real classification path runs.
STANDIN_REFUSAL = ("[h264_nvenc @ 0x0] OpenEncodeSessionEx failed: out of memory (10): (no details)\n"
                   "[stand-in] simulated provider refusal (standin_quota_after reached)")


@dataclass(frozen=True)
class Refusal:
    """A label a provider refused during a job: what it said, and how many segments it had done by then."""

    label: str
    kind: str               # session-limit, capacity, rate-limit, quota
    message: str
    actor: str = ""
    done: int = 0           # segments that label finished in this job before the refusal

    def describe(self) -> str:
        return (f"{self.label}: provider refused ({self.kind}) after {self.done} segment(s) on {self.actor}: "
                f"{self.message}; its work moved to the other encoders")


def refuse_label(workers: Sequence[Any], worker: Any, text: str, refusals: list[Refusal]) -> Refusal | None:
    """When ``text`` (a failed try on ``worker``) is a provider's refusal: take every worker of that label out
    of the job's rotation, record it once in ``refusals`` and return it; else None (an ordinary failure, or a
    CPU slot, which no provider limits)."""
    kind = classify(text)
    if kind is None or worker.label == SOFTWARE:  # CPU slots have no provider to refuse them
        return None
    for w in workers:
        if w.label == worker.label:
            w.alive = False
    known = next((r for r in refusals if r.label == worker.label), None)
    if known is not None:
        return known
    line = next((x for x in text.splitlines() if classify(x)), text.strip().splitlines()[0] if text.strip() else kind)
    refusal = Refusal(worker.label, kind, line.strip(), worker.name,
                      sum(w.done for w in workers if w.label == worker.label))
    refusals.append(refusal)
    log.warning("provider refused %s (%s): %s; moving its work to the other encoders", worker.label, kind, line)
    return refusal


def standin_check(config: Any, served: int) -> None:
    """TESTS AND SIMULATIONS ONLY: a CPU stand-in with ``standin_quota_after: N`` refuses its (N+1)-th
    segment with the error a real NVENC at its session limit gives (never for a real backend)."""
    after = getattr(config, "standin_quota_after", None)
    if after is None or served <= after:
        return
    if not config.stands_in:
        return
    from montage_ray.encoders.segment import SegmentEncodeError

    raise SegmentEncodeError(f"encoder session refused by the provider (stand-in, after {after} segments)",
                             stderr=STANDIN_REFUSAL, reason="failed", started=time.time())
