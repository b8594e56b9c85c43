"""The questions :mod:`~montage_ray.ffmpeg.caps` asks an ffmpeg binary about itself, one builder each.

They need nothing but the binary's path (the answers are what the rest of the builders, in
:mod:`~montage_ray.ffmpeg.commands`, are spelt by), so they sit below :mod:`~montage_ray.ffmpeg.caps`.
"""

from __future__ import annotations


def help_command(binary: str, *what: str) -> list[str]:
    """``ffmpeg -hide_banner WHAT...``: ``-version``, ``-h full``, ``-bsfs``, ``-filters``, ``-h muxer=mp4``."""
    return [binary, "-hide_banner", *what]


def tiny_time_base_command(binary: str, time_base: str) -> list[str]:
    """One generated frame encoded with ``-enc_time_base time_base`` into nothing: does this ffmpeg take it?"""
    return [binary, "-hide_banner", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "color=s=16x16:d=0.04",
            "-frames:v", "1", "-c:v", "rawvideo", "-enc_time_base", time_base, "-f", "null", "-"]
