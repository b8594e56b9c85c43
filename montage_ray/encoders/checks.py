"""How the encoded segments of a job are checked: the job's policy (:class:`Verify`, ``--verify``) and the
check it gives each segment (:class:`Check`), spent where faults happen.

Every segment's packets are counted and their structure read where it was encoded (a keyframe first,
decode times rising, one packet per frame). A full decode of every frame costs 10-20 % of a software
encode's CPU, so ``auto`` (the default) spends it on the segments whose encoder can fail without saying
so: hardware encoders, the CPU stand-ins that serve their labels, encoders on another node than the
driver, any encoder that already failed in this job, and any segment that failed once. The software
encoders on the driver's own node (x264, x265, SVT-AV1) report their own failures; their segments are
counted and read, and the driver decodes every join of the output (:func:`montage_ray.media.join.verify_output`,
on for every job whatever the policy)::

    from montage_ray.encoders.checks import Check, Verify, segment_check

    segment_check(Verify.AUTO, hardware=False, standin=False, remote=False, failed=False)
    # (Check.PACKETS, 'software encoder')
    segment_check(Verify.AUTO, hardware=False, standin=True, remote=False, failed=False)
    # (Check.DECODE, 'stand-in')
"""

from __future__ import annotations

from enum import StrEnum


class Verify(StrEnum):
    """A job's policy for checking its segments (``--verify``)."""

    AUTO = "auto"          # decode where faults happen, count and read the structure elsewhere
    DECODE = "decode"      # every segment decoded in full
    PACKETS = "packets"    # every segment counted and its structure read, none decoded

    @classmethod
    def parse(cls, value: "str | Verify") -> "Verify":
        """``value`` as a policy; ValueError naming the choices for anything else."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"verify must be one of {', '.join(v.value for v in cls)}, not {value!r}") from None


class Check(StrEnum):
    """The check one segment got where it was encoded."""

    DECODE = "decode"      # packets counted, structure read, every frame decoded
    PACKETS = "packets"    # packets counted, structure read


def segment_check(verify: Verify, *, hardware: bool, standin: bool, remote: bool, failed: bool
                  ) -> tuple[Check, str]:
    """The check a segment gets under ``verify``, and why: its encoder is ``hardware``, a ``standin`` for a
    hardware label, on a ``remote`` node (not the driver's), or ``failed`` already in this job (or this
    segment did)."""
    if verify == Verify.DECODE:
        return Check.DECODE, "--verify decode"
    if verify == Verify.PACKETS:
        return Check.PACKETS, "--verify packets"
    for reason, applies in (("failed before in this job", failed), ("stand-in", standin),
                            ("hardware encoder", hardware), ("remote node", remote)):
        if applies:
            return Check.DECODE, reason
    return Check.PACKETS, "software encoder"


def accepts(verify: Verify, checked: str, *, hardware: bool, standin: bool) -> bool:
    """Whether a segment an earlier run checked with ``checked`` (a :class:`Check` value, "" when unknown)
    may be reused by a job whose policy is ``verify``: a decoded one always; one only counted unless this
    job would decode it (``--verify decode``, or ``auto`` for a hardware encoder or a stand-in)."""
    if checked == Check.DECODE:
        return True
    if checked != Check.PACKETS:
        return False
    return verify == Verify.PACKETS or (verify == Verify.AUTO and not (hardware or standin))
