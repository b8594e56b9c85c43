"""Provider limits: tell a quota or rate-limit refusal from a broken encoder, and how long to back off.

A paid remote label can refuse work for reasons that say nothing about the video: the provider is out of
capacity, a rate limit was hit, or the GPU's encoder session limit is reached (NVENC's
``OpenEncodeSessionEx failed: out of memory`` / ``incompatible client key``). Such a refusal must never
fail a job: the label leaves the job, its segments go to local encoders, and the next jobs leave it out
until a back-off has passed. :func:`classify` is pure and table-tested::

    from montage_ray.quota import classify, next_backoff

    classify("[h264_nvenc] OpenEncodeSessionEx failed: out of memory (10)")   # 'session-limit'
    classify("Invalid data found when processing input")                     # None
    next_backoff(None), next_backoff(60.0)                                    # (60.0, 120.0)
"""

from __future__ import annotations

import re

#: (kind, pattern) in the order they are tried; patterns match ffmpeg's stderr, Ray's and providers' texts.
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("session-limit", re.compile(r"OpenEncodeSessionEx failed|incompatible client key|"
                                 r"session limit|too many (concurrent )?(encode )?sessions", re.I)),
    ("capacity", re.compile(r"out of capacity|insufficient capacity|no capacity|capacity (is )?exhausted|"
                            r"InsufficientInstanceCapacity|ZONE_RESOURCE_POOL_EXHAUSTED", re.I)),
    ("rate-limit", re.compile(r"rate.?limit|too many requests|\b429\b|throttl", re.I)),
    ("quota", re.compile(r"quota|limit exceeded", re.I)),
)

#: Back-off after a refusal: the first wait, doubled on every refusal in a row, up to the cap (seconds).
FIRST_BACKOFF, MAX_BACKOFF = 60.0, 3600.0


def classify(text: str | None) -> str | None:
    """``session-limit``, ``capacity``, ``rate-limit`` or ``quota`` when ``text`` is a provider's refusal."""
    if not text:
        return None
    for kind, pattern in PATTERNS:
        if pattern.search(text):
            return kind
    return None


def next_backoff(previous: float | None) -> float:
    """Seconds to leave a label out after a refusal, given the last back-off (None: the first refusal)."""
    if not previous or previous <= 0:
        return FIRST_BACKOFF
    return min(MAX_BACKOFF, 2 * previous)


#: What a CPU stand-in prints when its ``standin_quota_after`` is reached (TESTS AND SIMULATIONS ONLY):
#: the text a real T4 gives when its encoder sessions are used up, so the real classification path runs.
STANDIN_REFUSAL = ("[h264_nvenc @ 0x0] OpenEncodeSessionEx failed: out of memory (10): (no details)\n"
                   "[stand-in] simulated provider refusal (standin_quota_after reached)")
