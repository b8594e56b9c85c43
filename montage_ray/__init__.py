"""montage-ray: fast, verified video encoding on a heterogeneous Ray cluster.

A job inspects the source and plans segments (:mod:`~montage_ray.media`), cuts them by stream copy, encodes
them on Ray actors (:mod:`~montage_ray.cluster`, :mod:`~montage_ray.encoders`) and joins and verifies the
result (:mod:`~montage_ray.media.join`). From Python, inside or outside an existing ``ray.init()``::

    from montage_ray import encode

    report = encode("input.mp4", "output.mp4", codec="h264", quality=23)
    print(report.summary())

From a shell: ``montage-ray encode input.mp4 output.mp4 --codec hevc --quality 26``.
The layers, lowest first (imports only run downward; ``docs/architecture.md``): :mod:`.errors` and
:mod:`.util`, :mod:`.ffmpeg`, :mod:`.media`, :mod:`.encoders`, :mod:`.probe`, :mod:`.spending`,
:mod:`.cluster`, :mod:`.job`, and the command line in ``_cli``.
"""

from typing import TYPE_CHECKING

from montage_ray import _moved
from montage_ray.errors import (ClusterError, EncoderError, InputError, MontageError,
                                VerificationError)
from montage_ray.util.version import VERSION

if TYPE_CHECKING:
    from montage_ray.job import EncodeOptions, JobReport, encode

_moved.install()


def __getattr__(name: str) -> object:
    """``encode``, ``EncodeOptions`` and ``JobReport``, imported on first use: an encoder actor's process
    imports the package for its own layers and never pays for the job's (PEP 562)."""
    if name in ("encode", "EncodeOptions", "JobReport"):
        from montage_ray import job
        return getattr(job, name)
    raise AttributeError(f"module 'montage_ray' has no attribute {name!r}")

__all__ = ["encode", "EncodeOptions", "JobReport", "MontageError", "InputError", "EncoderError", "ClusterError",
           "VerificationError"]
__version__ = VERSION
