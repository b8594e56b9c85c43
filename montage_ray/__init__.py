"""montage-ray: fast, verified video encoding on a heterogeneous Ray cluster.

A job inspects the source (:mod:`~montage_ray.media`), plans GOP-aligned segments
(:mod:`~montage_ray.plan`), cuts them by stream copy (:mod:`~montage_ray.split`), encodes them on Ray actors
(:mod:`~montage_ray.cluster`, :mod:`~montage_ray.segment_encode`) and joins and verifies the result
(:mod:`~montage_ray.join`). From Python, inside or outside an existing ``ray.init()``::

    from montage_ray import encode

    report = encode("input.mp4", "output.mp4", codec="h264", quality=23)
    print(report.summary())

From a shell: ``montage-ray encode input.mp4 output.mp4 --codec hevc --quality 26``.
"""

from montage_ray.errors import (ClusterError, EncoderError, InputError, MontageError,
                                VerificationError)
from montage_ray.job import encode
from montage_ray.options import EncodeOptions
from montage_ray.report import JobReport

__all__ = ["encode", "EncodeOptions", "JobReport", "MontageError", "InputError", "EncoderError", "ClusterError",
           "VerificationError"]
__version__ = "0.1.0"
