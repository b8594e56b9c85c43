"""The ffmpeg tool layer: the only place montage-ray starts a process.

- :mod:`~montage_ray.ffmpeg.tool`: finding ffmpeg/ffprobe (``MONTAGE_FFMPEG``/``MONTAGE_FFPROBE``), running
  an argument list under a hard timeout, reading ffprobe's JSON.
- :mod:`~montage_ray.ffmpeg.caps`: what this ffmpeg build can do (version, option spellings, filters).
- :mod:`~montage_ray.ffmpeg.commands`: one builder per kind of ffmpeg/ffprobe call, spelt for the build.

A new kind of ffmpeg call is a builder in :mod:`~montage_ray.ffmpeg.commands`; a new version difference is a
field of :class:`~montage_ray.ffmpeg.caps.FFmpegCaps`.
"""
