"""Encoders: how one segment is encoded, on which backend, with what settings.

- :mod:`~montage_ray.encoders.backends`: the backend table (name, Ray resource, ffmpeg encoder per codec,
  device arguments, quality mapping, probe recipe). **A new hardware backend is a row here.**
- :mod:`~montage_ray.encoders.config`: the encoders YAML (per-label overrides, stand-ins, prices).
- :mod:`~montage_ray.encoders.records`: what flows out of an encode (:class:`EncodeResult`, a failed attempt,
  the job's encoder settings).
- :mod:`~montage_ray.encoders.segment`: :func:`encode_segment`, one segment's bytes in, checked bytes out.
- :mod:`~montage_ray.encoders.hdr`, :mod:`~montage_ray.encoders.quality`: HDR carriage and quality targets.
"""
