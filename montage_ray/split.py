"""Cut the source's video stream into the planned segments by stream copy (no re-encoding).

One ffmpeg pass with the segment muxer cuts at the planned packet numbers (``-segment_frames``), which are
clean keyframes, into NUT files that keep the source's timestamps exactly. Every piece is then counted:
a segment with the wrong number of packets is an error, never something to encode anyway::

    from montage_ray.split import split_source

    paths = split_source(info, segments, workdir)   # one NUT file per segment, in order
"""

from __future__ import annotations

import os
from typing import Sequence

from montage_ray import commands, ffmpeg_cli
from montage_ray.caps import ffmpeg_caps
from montage_ray.segment_encode import count_packets
from montage_ray.errors import EncoderError
from montage_ray.media import MediaInfo
from montage_ray.plan import Segment


def split_timeout(media: MediaInfo) -> float:
    """Stream copy runs at disk speed; allow 60 s plus 1 s for every 20 MB."""
    return 60.0 + media.size / 20e6


def split_source(media: MediaInfo, segments: Sequence[Segment], workdir: str) -> list[str]:
    """Write each segment's packets to ``workdir/src-NNNNNN.nut`` and return the paths in order."""
    # ffmpeg runs inside workdir and gets a relative name (see commands.cut_command): the segment muxer
    # reads its output name as a printf pattern, and the folder's own name (a user's, say "100%") must never
    # be one.
    pattern = "src-%06d.nut"
    args = commands.cut_command(media.path, media.video.index, [s.first_packet for s in segments[1:]], pattern,
                                caps=ffmpeg_caps())
    ffmpeg_cli.run(args, timeout=split_timeout(media), cwd=workdir)
    paths = [os.path.join(workdir, pattern % i) for i in range(len(segments))]
    for seg, path in zip(segments, paths):
        got = count_packets(path) if os.path.exists(path) else 0
        if got != seg.frames:
            raise EncoderError(f"cutting segment {seg.index} gave {got} packets instead of {seg.frames}; "
                               "the source's packet table may be inconsistent (try remuxing it first)")
    if os.path.exists(os.path.join(workdir, pattern % len(segments))):
        raise EncoderError("cutting the source gave more segments than planned")
    return paths
