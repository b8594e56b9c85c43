"""The job: one encode from source to verified destination, and what it tells its user.

- :mod:`~montage_ray.job.options`: :class:`EncodeOptions`, every option checked once before any work.
- :mod:`~montage_ray.job.run`: :func:`encode`, the phases (inspect, route, plan, cut + encode, join,
  verify, publish).
- :mod:`~montage_ray.job.report`: :class:`JobReport`, what was encoded, by whom, how fast, at what cost.
- :mod:`~montage_ray.job.progress`, :mod:`~montage_ray.job.timeline`: the live bar and the picture after.
- :mod:`~montage_ray.job.cache`: segments kept across runs, so that a killed job resumes.
"""

from montage_ray.job.options import EncodeOptions
from montage_ray.job.report import JobReport
from montage_ray.job.run import encode

__all__ = ["EncodeOptions", "JobReport", "encode"]


def __getattr__(name: str) -> object:
    from montage_ray._moved import moved_name  # montage_ray.job was a module: its other names, deprecated

    return moved_name(__name__, name)
