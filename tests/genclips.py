"""Generated source clips of many kinds for the exactness property test (tests/test_exact.py), made with
plain ffmpeg and lavfi (testsrc2 + sine), small and short.

A clip is described by a :class:`Kind` (container, video codec, timing, length, start time, audio); a seeded
``random.Random`` draws kinds (:func:`draw`), and :func:`make` writes one. Timing kinds:

- ``cfr``: 30 fps; ``ntsc``: 24000/1001 fps;
- ``vfr``: uneven spacing (gaps of 23, 36, 53 ms in turn, from ``setpts`` on a 1 ms time base);
- ``drops``: 30 fps with frames dropped (every 4th and 7th: gaps of one, two and three frames);
- ``oddlast``: uneven spacing, and the last frame lasting an odd 77 ms (set on the packet by ``setts``),
  or a last frame long after the one before it.

Every clip is independent of montage-ray's code, so that what the test counts of it is the source's own."""

from __future__ import annotations

import os
import random
import subprocess
from dataclasses import asdict, dataclass

#: Video codecs by container: (encoder arguments, audio codecs that container holds).
VIDEO = {
    "h264": ["-c:v", "libx264", "-preset", "ultrafast", "-bf", "0", "-g", "12"],
    "h264-bf": ["-c:v", "libx264", "-preset", "veryfast", "-bf", "3", "-g", "15", "-sc_threshold", "0"],
    "h264-opengop": ["-c:v", "libx264", "-preset", "veryfast", "-bf", "3",
                     "-x264-params", "open_gop=1:keyint=15:min-keyint=15:scenecut=0"],
    "vp8": ["-c:v", "libvpx", "-b:v", "200k", "-g", "12", "-deadline", "realtime", "-cpu-used", "8"],
    "vp9": ["-c:v", "libvpx-vp9", "-b:v", "200k", "-g", "12", "-deadline", "realtime", "-cpu-used", "8"],
}
CONTAINERS = {"mp4": ("h264", "h264-bf", "h264-opengop"), "mkv": ("h264", "h264-bf", "vp9"),
              "webm": ("vp8", "vp9")}
AUDIO = {"aac": ["-c:a", "aac", "-b:a", "64k"], "vorbis": ["-c:a", "libvorbis", "-q:a", "1"],
         "opus": ["-c:a", "libopus", "-b:a", "48k"]}
AUDIO_IN = {"mp4": ("aac",), "mkv": ("aac", "vorbis", "opus"), "webm": ("vorbis", "opus")}
TIMINGS = ("cfr", "ntsc", "vfr", "drops", "oddlast")
OUTPUTS = (".mp4", ".mkv")


@dataclass(frozen=True)
class Kind:
    """One generated clip: ``frames`` frames of ``video`` in ``container`` with ``timing``, starting at
    ``start`` seconds, with ``audio`` (None: no audio) lasting ``audio_extra`` seconds more (or less) than
    the video, encoded by the job into ``output`` (.mp4 or .mkv)."""

    container: str
    video: str
    timing: str
    frames: int
    start: float = 0.0
    audio: str | None = None
    audio_extra: float = 0.0
    output: str = ".mp4"

    @property
    def name(self) -> str:
        parts = [self.container, self.video, self.timing, f"{self.frames}f"]
        if self.start:
            parts.append(f"start{self.start:g}")
        if self.audio:
            parts.append(f"{self.audio}{self.audio_extra:+g}")
        return "-".join(parts) + "-to" + self.output[1:]

    def to_json(self) -> dict:
        return asdict(self)


def draw(rng: random.Random) -> Kind:
    """A random clip kind (mostly a few seconds; one in four is a 1-5 frame clip)."""
    container = rng.choice(sorted(CONTAINERS))
    video = rng.choice(CONTAINERS[container])
    timing = rng.choice(TIMINGS)
    frames = rng.randint(1, 5) if rng.random() < 0.25 else rng.randint(50, 110)
    start = rng.choice([0.0, 0.0, 1.234, 0.517])
    audio = rng.choice([None, *AUDIO_IN[container]])
    extra = rng.choice([0.0, 0.7, -0.4]) if audio else 0.0
    return Kind(container, video, timing, frames, start, audio, extra, rng.choice(OUTPUTS))


def _base(n: int, timing: str) -> int:
    """Milliseconds of frame ``n`` for the uneven spacing (gaps 23, 36, 53 in turn)."""
    return (n // 3) * 112 + (0, 23, 59)[n % 3]


#: The uneven spacing as a setpts expression in milliseconds (the same as :func:`_base`).
_UNEVEN = "(N-mod(N\\,3))/3*112+eq(mod(N\\,3)\\,1)*23+eq(mod(N\\,3)\\,2)*59"

#: The odd last frame: shown this long after the one before it, and lasting ODD_LAST_MS itself.
LAST_GAP_MS, ODD_LAST_MS = 311, 77


def make(kind: Kind, path: str, ffmpeg: str = "ffmpeg") -> str:
    """Write the clip of ``kind`` to ``path`` (its extension should be ``kind.container``'s) with ``ffmpeg``
    (5.1 or newer: ``-fps_mode``, ``setts``)."""
    fps = "24000/1001" if kind.timing == "ntsc" else "30"
    vf: list[str] = []
    out_rate: list[str] = []
    if kind.timing == "drops":
        vf.append("select='not(eq(mod(n\\,4)\\,3))*not(eq(mod(n\\,7)\\,6))'")
        out_rate = ["-fps_mode", "vfr"]
    elif kind.timing in ("vfr", "oddlast"):
        expr = _UNEVEN
        last = kind.frames - 1
        if kind.timing == "oddlast" and last > 0:
            expr += f"+eq(N\\,{last})*{_base(last - 1, kind.timing) + LAST_GAP_MS - _base(last, kind.timing)}"
        vf += ["settb=1/1000", f"setpts=({expr})/1000/TB"]
        out_rate = ["-fps_mode", "vfr", "-r", "1000"]
    args = [ffmpeg, "-hide_banner", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=size=160x120:rate={fps}"]
    maps = ["-map", "0:v"]
    if kind.audio:
        video_seconds = kind.frames / 30 + (0.35 if kind.timing == "oddlast" else 0.0) \
            + (0.6 * kind.frames / 30 if kind.timing in ("vfr", "drops") else 0.0)
        seconds = max(0.1, video_seconds + kind.audio_extra)
        args += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds:.3f}"]
        maps += ["-map", "1:a", *AUDIO[kind.audio]]
    if vf:
        args += ["-vf", ",".join(vf)]
    args += [*maps, "-frames:v", str(kind.frames), *VIDEO[kind.video], "-pix_fmt", "yuv420p", *out_rate]
    second = kind.start or kind.timing == "oddlast"
    first = path + ".pass1" + os.path.splitext(path)[1] if second else path
    subprocess.run([*args, first], check=True, timeout=120)
    if second:
        remux = [ffmpeg, "-hide_banner", "-v", "error", "-y", "-i", first, "-map", "0", "-c", "copy"]
        if kind.timing == "oddlast":
            remux += ["-bsf:v", f"setts=duration='if(eq(N\\,{kind.frames - 1})\\,{ODD_LAST_MS / 1000}/TB\\,DURATION)'"]
        if kind.start:
            remux += ["-output_ts_offset", f"{kind.start}"]
        subprocess.run([*remux, path], check=True, timeout=120)
        os.unlink(first)
    return path
