"""Independent checks of an output against its source, with plain ffmpeg/ffprobe (not montage-ray's code)."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np

FFMPEG = os.environ.get("MONTAGE_FFMPEG", "ffmpeg")
FFPROBE = os.environ.get("MONTAGE_FFPROBE", "ffprobe")


def ffprobe(path, *args: str) -> dict:
    out = subprocess.run([FFPROBE, "-v", "error", "-of", "json", *args, str(path)], check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return json.loads(out)


def decode_errors(path) -> str:
    """What `ffmpeg -v error -i out -f null -` prints (empty for a clean file)."""
    done = subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
                          capture_output=True, text=True, timeout=300)
    return done.stderr.strip() + ("" if done.returncode == 0 else f" (exit {done.returncode})")


def decoded_frames(path) -> int:
    data = ffprobe(path, "-select_streams", "v:0", "-count_frames", "-show_entries", "stream=nb_read_frames")
    return int(data["streams"][0]["nb_read_frames"])


def video_times(path) -> np.ndarray:
    """Presentation times (seconds) of the first video stream's packets, sorted."""
    data = ffprobe(path, "-fflags", "+genpts", "-select_streams", "v:0", "-show_entries", "packet=pts_time")
    times = [float(p["pts_time"]) for p in data["packets"]]
    return np.sort(np.array(times))


def first_time(path, selector: str) -> float:
    data = ffprobe(path, "-fflags", "+genpts", "-select_streams", selector, "-show_entries", "packet=pts_time",
                   "-read_intervals", "%+#8")
    return min(float(p["pts_time"]) for p in data["packets"])


def streams(path) -> list[dict]:
    return ffprobe(path, "-show_streams")["streams"]


def frame_signatures(path, size: int = 24) -> np.ndarray:
    """Every frame decoded to a tiny grey picture, as an array (frames, size*size)."""
    raw = subprocess.run([FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-noautorotate", "-i", str(path),
                          "-map", "0:v:0", "-fps_mode", "passthrough", "-vf", f"scale={size}:{size}",
                          "-pix_fmt", "gray", "-f", "rawvideo", "-"], capture_output=True, check=True,
                         timeout=300).stdout
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, size * size).astype(np.float32)


def assert_same_frames_in_order(src, out, damaged=()) -> None:
    """Each output frame looks most like the source frame at the same position (none lost or doubled).

    ``damaged``: positions of source frames decoded from damaged packets, left out of the comparison (a
    decoder conceals such a frame differently from run to run, its frame threads racing); the count still
    covers them."""
    a, b = frame_signatures(src), frame_signatures(out)
    assert a.shape == b.shape, f"source has {a.shape[0]} frames, output {b.shape[0]}"
    skip = {int(i) for i in damaged}
    for i in range(len(a)):
        if i in skip:
            continue
        err_same = float(np.mean((a[i] - b[i]) ** 2))
        for j in (i - 1, i + 1):
            if 0 <= j < len(a) and float(np.mean((a[j] - a[i]) ** 2)) > 4.0:
                err_other = float(np.mean((a[j] - b[i]) ** 2))
                assert err_same < err_other, f"output frame {i} looks like source frame {j}, not {i}"


def run_ffmpeg(args: list[str]) -> None:
    subprocess.run([FFMPEG, "-hide_banner", "-v", "error", "-y", *map(str, args)], check=True, timeout=300)
