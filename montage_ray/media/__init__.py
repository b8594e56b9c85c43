"""The media pipeline: what a file is, where to cut it, the cut, the join and the checks of the result.

- :mod:`~montage_ray.media.info`: :func:`inspect` -> :class:`MediaInfo` (streams, packet index, HDR), by
  ffprobe, without decoding.
- :mod:`~montage_ray.media.plan`: pure planning of :class:`~montage_ray.media.plan.Segment` rows, and the
  segment-length policy.
- :mod:`~montage_ray.media.cut`: the stream-copy cut into segment pieces, in the background.
- :mod:`~montage_ray.media.join`: the join of encoded pieces with the source's other streams, and the
  verification of the joined file before it is published.

A new check of the output goes into :mod:`~montage_ray.media.join` (``verify_output``); nothing here knows
about encoders or Ray.
"""

from montage_ray.media.info import MediaInfo, inspect

__all__ = ["MediaInfo", "inspect"]


def __getattr__(name: str) -> object:
    from montage_ray._moved import moved_name  # montage_ray.media was a module: its other names, deprecated

    return moved_name(__name__, name)
