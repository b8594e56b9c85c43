"""The end of an MP4's video presentation, read and set in its sample tables (no ffmpeg, no remux).

ffmpeg's MP4 muxer takes the last sample's duration from its packet, and the edit list (the part of the
track that is shown) from that: ffmpeg 4.2 encodes without packet durations, so a segment's last sample
lasts 0 and the joined track's edit list ends at (or, with B-frames, before) its last frame, which players
then never show (a one-frame clip shows nothing); 5.1 and 9.0 give it the encoder's nominal frame duration,
so a variable-frame-rate source's longer last frame comes out short. The join knows where the source's video
ends; :func:`set_video_end` writes that end into the joined file's video track in place (fixed-size fields
only: no sample moves, no box grows)::

    from montage_ray.media.mp4 import set_video_end, video_end

    set_video_end("joined.mp4", 12.008)   # the video shows from its first frame for 12.008 s
    video_end("joined.mp4")               # 12.008 (the edit's duration, seconds)

What is written: the edit list's last edit (its duration, so every frame up to the source's end is inside),
the last sample's duration in the time-to-sample table (lengthened where that sample has an entry of its own,
the common case, so that it is shown until the end), the media, track and movie durations (the media's and
the movie's only ever grow: an audio track may be longer).
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass

#: Boxes that hold other boxes on the way from ``moov`` to a track's sample tables.
_CONTAINERS = frozenset({b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts"})


class NotPatchable(Exception):
    """The file's layout is not the one :func:`set_video_end` edits (no video track, no edit list, a box it
    does not know); the file is left as it was."""


@dataclass
class _Box:
    kind: bytes
    start: int          # offset of the box's header in the file
    body: int           # offset of its body
    end: int            # offset just past it


def _children(data: bytes, base: int, start: int, end: int) -> list[_Box]:
    """The boxes in ``data[start:end]`` (``base``: the file offset of ``data[0]``)."""
    out = []
    pos = start
    while pos + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, pos)
        header = 8
        if size == 1:
            size = struct.unpack_from(">Q", data, pos + 8)[0]
            header = 16
        elif size == 0:
            size = end - pos
        if size < header or pos + size > end:
            raise NotPatchable(f"a {kind!r} box runs past its parent")
        out.append(_Box(kind, base + pos, base + pos + header, base + pos + size))
        pos += size
    return out


def _find_moov(fh) -> tuple[int, bytes]:
    """(file offset, bytes) of the ``moov`` box, found by walking the top-level boxes."""
    size_all = os.fstat(fh.fileno()).st_size
    pos = 0
    while pos + 8 <= size_all:
        fh.seek(pos)
        head = fh.read(16)
        size, kind = struct.unpack_from(">I4s", head)
        if size == 1:
            size = struct.unpack_from(">Q", head, 8)[0]
        elif size == 0:
            size = size_all - pos
        if size < 8:
            break
        if kind == b"moov":
            fh.seek(pos)
            return pos, fh.read(size)
        pos += size
    raise NotPatchable("no moov box")


@dataclass
class _Track:
    """Where the fields of one track live in the ``moov`` bytes (offsets into them) and what they hold."""

    timescale: int
    mdhd_duration: tuple[int, int]           # (offset, size in bytes) of the media duration
    tkhd_duration: tuple[int, int]
    edits: list[tuple[int, int, int, int]]  # (offset of segment_duration, its size, duration, media_time)
    stts: list[tuple[int, int]]             # (count, delta) entries
    stts_last: int                          # offset of the last entry's delta
    ctts: list[tuple[int, int]]             # (count, offset) entries, [] without one
    handler: bytes


def _full_box_version(moov: bytes, box: _Box, base: int) -> int:
    return moov[box.body - base]


def _track(moov: bytes, base: int, trak: _Box) -> _Track | None:
    def kids(box: _Box) -> dict[bytes, _Box]:
        return {b.kind: b for b in _children(moov, base, box.body - base, box.end - base)}

    parts = kids(trak)
    if b"tkhd" not in parts or b"mdia" not in parts:
        return None
    mdia = kids(parts[b"mdia"])
    if b"hdlr" not in mdia or b"mdhd" not in mdia or b"minf" not in mdia:
        return None
    handler = moov[mdia[b"hdlr"].body - base + 8:mdia[b"hdlr"].body - base + 12]
    minf = kids(mdia[b"minf"])
    if b"stbl" not in minf:
        return None
    stbl = kids(minf[b"stbl"])
    tkhd, mdhd = parts[b"tkhd"], mdia[b"mdhd"]
    at = mdhd.body - base
    if _full_box_version(moov, mdhd, base):
        timescale = struct.unpack_from(">I", moov, at + 20)[0]
        mdhd_duration = (at + 24, 8)
    else:
        timescale = struct.unpack_from(">I", moov, at + 12)[0]
        mdhd_duration = (at + 16, 4)
    at = tkhd.body - base
    tkhd_duration = (at + 28, 8) if _full_box_version(moov, tkhd, base) else (at + 20, 4)
    edits: list[tuple[int, int, int, int]] = []
    if b"edts" in parts:
        elst = kids(parts[b"edts"]).get(b"elst")
        if elst is not None:
            at = elst.body - base
            wide = moov[at] == 1
            count = struct.unpack_from(">I", moov, at + 4)[0]
            pos = at + 8
            for _ in range(count):
                if wide:
                    duration, media_time = struct.unpack_from(">Qq", moov, pos)
                    edits.append((pos, 8, duration, media_time))
                    pos += 20
                else:
                    duration, media_time = struct.unpack_from(">Ii", moov, pos)
                    edits.append((pos, 4, duration, media_time))
                    pos += 12
    stts: list[tuple[int, int]] = []
    stts_last = -1
    if b"stts" in stbl:
        at = stbl[b"stts"].body - base
        count = struct.unpack_from(">I", moov, at + 4)[0]
        stts = [struct.unpack_from(">II", moov, at + 8 + 8 * i) for i in range(count)]
        stts_last = at + 8 + 8 * (count - 1) + 4 if count else -1
    ctts: list[tuple[int, int]] = []
    if b"ctts" in stbl:
        at = stbl[b"ctts"].body - base
        signed = ">Ii" if moov[at] == 1 else ">II"
        count = struct.unpack_from(">I", moov, at + 4)[0]
        ctts = [struct.unpack_from(signed, moov, at + 8 + 8 * i) for i in range(count)]
    return _Track(timescale, mdhd_duration, tkhd_duration, edits, stts, stts_last, ctts, handler)


def _movie(moov: bytes, base: int) -> tuple[int, tuple[int, int], list[_Track]]:
    """(movie timescale, (offset, size) of the movie duration, the tracks)."""
    top = _children(moov, base, 8 if struct.unpack_from(">I", moov)[0] != 1 else 16, len(moov))
    mvhd = next((b for b in top if b.kind == b"mvhd"), None)
    if mvhd is None:
        raise NotPatchable("no mvhd box")
    at = mvhd.body - base
    if moov[at]:
        timescale, where = struct.unpack_from(">I", moov, at + 20)[0], (at + 24, 8)
    else:
        timescale, where = struct.unpack_from(">I", moov, at + 12)[0], (at + 16, 4)
    tracks = [t for t in (_track(moov, base, b) for b in top if b.kind == b"trak") if t is not None]
    return timescale, where, tracks


def _read(moov: bytes, where: tuple[int, int]) -> int:
    return struct.unpack_from(">Q" if where[1] == 8 else ">I", moov, where[0])[0]


def _write(moov: bytearray, where: tuple[int, int], value: int) -> None:
    if where[1] == 4 and not 0 <= value < 2 ** 32:
        raise NotPatchable(f"{value} does not fit a 32-bit duration")
    struct.pack_into(">Q" if where[1] == 8 else ">I", moov, where[0], value)


def _sample_times(track: _Track) -> tuple[list[int], list[int]]:
    """(decode times, composition times) of every sample, in media ticks."""
    dts, t = [], 0
    for count, delta in track.stts:
        for _ in range(count):
            dts.append(t)
            t += delta
    offsets = [off for count, off in track.ctts for _ in range(count)] if track.ctts else [0] * len(dts)
    if len(offsets) != len(dts):
        raise NotPatchable("the composition offsets do not match the samples")
    return dts, [d + o for d, o in zip(dts, offsets)]


def _video(path: str) -> tuple[int, bytes, int, tuple[int, int], _Track]:
    with open(path, "rb") as fh:
        base, moov = _find_moov(fh)
    movie_scale, movie_duration, tracks = _movie(moov, base)
    video = [t for t in tracks if t.handler == b"vide"]
    if not video:
        raise NotPatchable("no video track")
    return base, moov, movie_scale, movie_duration, video[0]


def video_end(path: str) -> float:
    """How long the video track is shown, seconds: its last edit's duration (its media's without one)."""
    _, moov, movie_scale, _, track = _video(path)
    shown = [e for e in track.edits if e[3] >= 0]
    if shown:
        return shown[-1][2] / movie_scale
    return _read(moov, track.mdhd_duration) / track.timescale


def set_video_end(path: str, seconds: float) -> bool:
    """Make the video track of the MP4 at ``path`` show its frames from its edit's start for ``seconds``
    (the source's video duration), in place. False when nothing needed changing; :class:`NotPatchable` when
    the layout is not one this edits (the file is then untouched)."""
    base, moov, movie_scale, movie_duration, track = _video(path)
    shown = [e for e in track.edits if e[3] >= 0]
    if not shown or not track.stts:
        raise NotPatchable("the video track has no edit list or no samples")
    edit_at, edit_size, old_duration, media_time = shown[-1]
    media_len = int(round(seconds * track.timescale))
    new_duration = int(math.ceil(seconds * movie_scale - 1e-9))
    _, cts = _sample_times(track)
    if max(cts) >= media_time + media_len:
        raise NotPatchable("a frame is shown after the given end")  # the end would cut a frame: not ours to do
    patched = bytearray(moov)
    _write(patched, (edit_at, edit_size), new_duration)
    # the last sample (in decode order) is shown at least until the end (its duration is what a demuxer
    # gives its packet; with B-frames the last frame shown may be another, whose duration stays as it is)
    last_count, last_delta = track.stts[-1]
    reach = media_time + media_len - cts[-1]
    if last_count == 1 and reach > last_delta:
        struct.pack_into(">I", patched, track.stts_last, reach)
    _write(patched, track.mdhd_duration, max(_read(moov, track.mdhd_duration), media_len))
    empty = sum(e[2] for e in track.edits if e[3] < 0)
    _write(patched, track.tkhd_duration, empty + new_duration)
    _write(patched, movie_duration, max(_read(moov, movie_duration), empty + new_duration))
    if bytes(patched) == moov:
        return False
    with open(path, "r+b") as fh:
        fh.seek(base)
        fh.write(patched)
    return new_duration != old_duration
