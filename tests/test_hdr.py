"""HDR survives: HDR10 side data compared on frame 0 (and every segment's first frame) in and out, HLG kept,
encoders that cannot carry it named in the report and left out by master, Dolby Vision refused unless allowed.

Real encodes of lavfi clips made HDR by x265 itself; the side data is read back with plain ffprobe
(tests/mediacheck.py), not with montage-ray's reader.
"""

from __future__ import annotations

import dataclasses
import struct
import subprocess
from fractions import Fraction
from pathlib import Path

import pytest

from montage_ray import encode
from montage_ray.encoders import hdr
from montage_ray.encoders.backends import BACKENDS, cpu_spec
from montage_ray.ffmpeg.caps import ffmpeg_caps
from montage_ray.encoders.config import LabelConfig
from montage_ray.errors import InputError
from montage_ray.media.info import ContentLight, MasteringDisplay, inspect
from montage_ray.spending import routing
from montage_ray.spending.routing import Offer
from tests import mediacheck as mc

MASTER_DISPLAY = "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,1)"
HDR10_PARAMS = (f"colorprim=bt2020:transfer=smpte2084:colormatrix=bt2020nc:master-display={MASTER_DISPLAY}"
                ":max-cll=1000,400")
HLG_PARAMS = "colorprim=bt2020:transfer=arib-std-b67:colormatrix=bt2020nc"
MASTERING_TYPE, LIGHT_TYPE = "Mastering display metadata", "Content light level metadata"


def _x265_clip(path: Path, params: str, trc: str, seconds: int = 4) -> Path:
    """testsrc2 as 10-bit HEVC with BT.2020 and the given x265 params, a keyframe every second."""
    subprocess.run([mc.FFMPEG, "-hide_banner", "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size=320x240:rate=25:duration={seconds}", "-pix_fmt", "yuv420p10le",
                    "-c:v", "libx265", "-preset", "ultrafast",
                    "-x265-params", f"log-level=error:keyint=25:min-keyint=25:{params}",
                    "-color_primaries", "bt2020", "-color_trc", trc, "-colorspace", "bt2020nc", str(path)],
                   check=True, timeout=120)
    return path


@pytest.fixture(scope="module")
def hdr10_clip(clip_dir: Path) -> Path:
    return _x265_clip(clip_dir / "hdr10.mp4", HDR10_PARAMS, "smpte2084")


@pytest.fixture(scope="module")
def hlg_clip(clip_dir: Path) -> Path:
    return _x265_clip(clip_dir / "hlg.mp4", HLG_PARAMS, "arib-std-b67")


def add_dolby_vision_config(src: Path, dst: Path, *, profile: int = 8, compat: int = 1) -> Path:
    """Copy an MP4 whose moov follows its mdat, adding a Dolby Vision configuration box (dvcC, profile 8.1:
    RPU present, HDR10-compatible base layer) to its video sample entry: what ffprobe reads as the stream's
    "DOVI configuration record". (The clip has no RPU NAL units: ffmpeg cannot make them.)"""
    payload = bytes([1, 0]) + struct.pack(">H", (profile << 9) | (4 << 3) | 0b101) + struct.pack(">I", compat << 28)
    box = struct.pack(">I", 8 + len(payload) + 16) + b"dvcC" + payload + bytes(16)
    data, grown = bytearray(src.read_bytes()), []

    def walk(start: int, end: int) -> bool:
        at = start
        while at + 8 <= end:
            size, kind = struct.unpack(">I4s", data[at:at + 8])
            if kind in (b"moov", b"trak", b"mdia", b"minf", b"stbl"):
                grown.append(at)
                if walk(at + 8, at + size):
                    return True
                grown.pop()
            elif kind == b"stsd":
                entry = at + 16
                end_of_entry = entry + struct.unpack(">I", data[entry:entry + 4])[0]
                data[end_of_entry:end_of_entry] = box
                for offset in (*grown, at, entry):
                    struct.pack_into(">I", data, offset, struct.unpack(">I", data[offset:offset + 4])[0] + len(box))
                return True
            at += size
        return False

    assert walk(0, len(data)), "no sample description"
    dst.write_bytes(bytes(data))
    return dst


def side_data(path: Path, *, keyframes: bool = False) -> list[dict]:
    """Plain ffprobe: each (key)frame's pts_time and side data, in display order."""
    args = ["-select_streams", "v:0", "-show_frames", "-show_entries", "frame=pts_time,side_data_list"]
    if keyframes:
        args = ["-skip_frame", "nokey", *args]
    else:
        args = ["-read_intervals", "%+#1", *args]
    return mc.ffprobe(path, *args)["frames"]


def hdr_entries(frame: dict) -> dict[str, dict]:
    return {s["side_data_type"]: s for s in frame.get("side_data_list", [])
            if s["side_data_type"] in (MASTERING_TYPE, LIGHT_TYPE)}


def colours(path: Path) -> tuple[str, str, str, str]:
    s = mc.ffprobe(path, "-select_streams", "v:0", "-show_entries",
                   "stream=pix_fmt,color_primaries,color_transfer,color_space")["streams"][0]
    return s["pix_fmt"], s["color_primaries"], s["color_transfer"], s["color_space"]


# -- detection (media.py) ---------------------------------------------------------------------------------


def test_inspect_reads_hdr10_hlg_and_sdr(hdr10_clip, hlg_clip, make_clip):
    info = inspect(hdr10_clip).video.hdr
    assert info is not None and info.kind == "hdr10" and info.dolby_vision is None
    assert info.mastering == MasteringDisplay(
        red=(Fraction(34000, 50000), Fraction(16000, 50000)), green=(Fraction(13250, 50000), Fraction(34500, 50000)),
        blue=(Fraction(7500, 50000), Fraction(3000, 50000)), white=(Fraction(15635, 50000), Fraction(16450, 50000)),
        max_luminance=Fraction(1000), min_luminance=Fraction(1, 10000))
    assert info.light == ContentLight(1000, 400)
    hlg = inspect(hlg_clip).video.hdr
    assert hlg is not None and (hlg.kind, hlg.mastering, hlg.light) == ("hlg", None, None)
    assert inspect(make_clip("noaudio")).video.hdr is None   # 8-bit SDR
    assert inspect(make_clip("tenbit")).video.hdr is None    # 10-bit SDR: its first frame read, nothing found


def test_backend_table_spells_the_metadata_in_each_encoders_units(hdr10_clip):
    info = inspect(hdr10_clip).video.hdr
    assert BACKENDS["cpu"].hdr["hevc"].params(info.mastering, info.light) == [
        "-x265-params", f"master-display={MASTER_DISPLAY}:max-cll=1000,400"]
    assert BACKENDS["cpu"].hdr["av1"].params(info.mastering, info.light) == [
        "-svtav1-params", "mastering-display=G(0.26500,0.69000)B(0.15000,0.06000)R(0.68000,0.32000)"
                          "WP(0.31270,0.32900)L(1000.0000,0.0001):content-light=1000,400"]
    # an encoders config's own -x265-params are kept, the metadata appended to them
    spec = cpu_spec("hevc")
    spec = dataclasses.replace(spec, codec_args=spec.codec_args + ("-x265-params", "aq-mode=3"))
    carried, lost = hdr.for_encoder(spec, info, ffmpeg_caps())
    assert lost == ""
    at = carried.codec_args.index("-x265-params")
    assert carried.codec_args[at + 1] == f"aq-mode=3:master-display={MASTER_DISPLAY}:max-cll=1000,400"
    assert carried.codec_args.count("-x265-params") == 1
    # encoders that cannot carry it say why
    assert "cannot carry" in hdr.for_encoder(cpu_spec("h264"), info, ffmpeg_caps())[1]
    assert "hevc" not in BACKENDS["nvenc"].hdr and "hevc" not in BACKENDS["nvmpi"].hdr
    assert BACKENDS["vaapi"].hdr["hevc"].video_filter == "format=p010,hwupload"


# -- real encodes -------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("ray_cluster")
def test_hevc_keeps_hdr10_on_frame_0_and_in_every_segment(hdr10_clip, tmp_path):
    dst = tmp_path / "hdr10.mkv"
    report = encode(hdr10_clip, dst, codec="hevc", preset="ultrafast", segment_seconds=1)
    assert len(report.segments) >= 3
    assert [s.hdr for s in report.segments] == ["kept"] * len(report.segments)
    source = hdr_entries(side_data(hdr10_clip)[0])
    assert set(source) == {MASTERING_TYPE, LIGHT_TYPE}
    assert hdr_entries(side_data(dst)[0]) == source          # x265 in and out: the same numbers exactly
    assert colours(dst) == ("yuv420p10le", "bt2020", "smpte2084", "bt2020nc")
    # the join's stream copy kept it: every keyframe, so the first frame of every segment, carries it
    keys = side_data(dst, keyframes=True)
    starts = {round(t, 2) for t in _segment_starts(report)}
    carried = {round(float(k["pts_time"]), 2) for k in keys if hdr_entries(k) == source}
    assert starts <= carried and len(starts) >= 3
    assert report.hdr[0].startswith("source: HDR10 (PQ)")
    assert f"kept on all {len(report.segments)} segments" in report.hdr
    assert "output frame 0: kept" in report.hdr


def _segment_starts(report) -> list[float]:
    """When each segment starts in the output (25 fps, frame-exact segments in order)."""
    total, out = 0.0, []
    for seg in report.segments:
        out.append(total)
        total += seg.frames / 25
    return out


@pytest.mark.usefixtures("ray_cluster")
def test_av1_keeps_hdr10_within_av1_precision(hdr10_clip, tmp_path):
    dst = tmp_path / "hdr10-av1.mp4"
    report = encode(hdr10_clip, dst, codec="av1", preset="ultrafast", segment_seconds=2)
    assert [s.hdr for s in report.segments] == ["kept"] * len(report.segments)
    out = hdr_entries(side_data(dst)[0])
    mastering = out[MASTERING_TYPE]
    for key, value in (("red_x", 0.68), ("red_y", 0.32), ("green_x", 0.265), ("green_y", 0.69), ("blue_x", 0.15),
                       ("blue_y", 0.06), ("white_point_x", 0.3127), ("white_point_y", 0.329)):
        assert abs(float(Fraction(mastering[key])) - value) < 4e-5, key
    assert abs(float(Fraction(mastering["max_luminance"])) - 1000) < 0.01
    assert abs(float(Fraction(mastering["min_luminance"])) - 0.0001) < 1e-4
    assert (out[LIGHT_TYPE]["max_content"], out[LIGHT_TYPE]["max_average"]) == (1000, 400)
    assert colours(dst)[1:] == ("bt2020", "smpte2084", "bt2020nc")
    last = report.segments[-1]
    later = hdr_entries(side_data(dst, keyframes=True)[-1])  # the last keyframe: in the last segment
    assert last.hdr == "kept" and later == out


@pytest.mark.usefixtures("ray_cluster")
def test_hlg_stays_hlg(hlg_clip, tmp_path):
    dst = tmp_path / "hlg.mp4"
    report = encode(hlg_clip, dst, codec="hevc", preset="ultrafast", segment_seconds=2)
    assert colours(dst) == ("yuv420p10le", "bt2020", "arib-std-b67", "bt2020nc")
    assert [s.hdr for s in report.segments] == ["kept"] * len(report.segments)
    assert hdr_entries(side_data(dst)[0]) == {}                 # nothing invented
    assert report.hdr[0] == "source: HLG"


@pytest.mark.usefixtures("ray_cluster")
def test_an_encoder_that_cannot_carry_it_is_named_per_segment(hdr10_clip, tmp_path):
    dst = tmp_path / "h264.mp4"
    report = encode(hdr10_clip, dst, codec="h264", preset="ultrafast", segment_seconds=2)
    assert hdr_entries(side_data(dst)[0]) == {}
    assert all(s.hdr.startswith("lost: libx264 cannot carry HDR10 metadata") for s in report.segments)
    lines = [line for line in report.hdr if line.startswith("segment ")]
    assert len(lines) == len(report.segments) >= 2
    assert any(line.startswith("output frame 0: lost: ") and "no mastering display" in line for line in report.hdr)
    assert "hdr: segment 0 on cpu:libx264: HDR metadata lost: " in report.summary()


def test_master_leaves_out_encoders_that_drop_hdr(hdr10_clip):
    info = inspect(hdr10_clip).video.hdr
    offers = [Offer("nvenc", 3, 300), Offer("vaapi", 1, 200), Offer("cpu", 2, 25, hardware=False),
              Offer("nvmpi", 1, 100)]
    config = {"nvmpi": LabelConfig(label="nvmpi", backend="cpu", standin=True)}   # a CPU stand-in: x265
    kept, lines = routing.master_offers(offers, info, "hevc", config)
    assert [o.label for o in kept] == ["vaapi", "cpu", "nvmpi"]
    assert lines == ["nvenc left out: HDR source and hevc_nvenc cannot carry HDR10 metadata ("
                     + BACKENDS["nvenc"].hdr_gap + ") (master)"]
    kept, lines = routing.master_offers(offers, info, "h264", config)   # nobody can: nobody is left out
    assert kept == offers and "it will be lost" in lines[0]
    assert routing.master_offers(offers, None, "hevc", config) == (offers, [])   # SDR: nothing to do


# -- Dolby Vision ---------------------------------------------------------------------------------------


def test_dolby_vision_is_detected_from_its_configuration_record(hdr10_clip, tmp_path):
    dv = add_dolby_vision_config(hdr10_clip, tmp_path / "dv.mp4")
    info = inspect(dv)
    assert info.video.hdr.dolby_vision == "profile 8.1" and info.video.hdr.kind == "hdr10"
    with pytest.raises(InputError, match=r"Dolby Vision \(profile 8.1\): re-encoding drops its RPU .* --allow-dv-loss"):
        hdr.refuse_dolby_vision(info, allow_loss=False)
    assert "HDR10 base layer is kept" in hdr.refuse_dolby_vision(info, allow_loss=True)
    assert hdr.refuse_dolby_vision(inspect(hdr10_clip), allow_loss=False) is None


@pytest.mark.usefixtures("ray_cluster")
def test_a_dolby_vision_job_is_refused_unless_allowed(hdr10_clip, tmp_path):
    dv = add_dolby_vision_config(hdr10_clip, tmp_path / "dv.mp4")
    dst = tmp_path / "out.mp4"
    with pytest.raises(InputError, match="--allow-dv-loss") as refused:
        encode(dv, dst, codec="hevc", preset="ultrafast")
    assert refused.value.exit_code == 2 and not dst.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["dv.mp4"]   # nothing partial left beside DST
    report = encode(dv, dst, codec="hevc", preset="ultrafast", allow_dv_loss=True)
    assert any("Dolby Vision (profile 8.1) dropped as allowed" in line for line in report.hdr)
    assert hdr_entries(side_data(dst)[0]) == hdr_entries(side_data(hdr10_clip)[0])


def test_the_probe_says_which_encoders_keep_hdr10():
    from montage_ray._cli.probe_cmd import table
    from montage_ray.probe.node import probe_node

    node = probe_node()
    cpu = node.hdr_support()["cpu"]
    assert cpu["h264"].startswith("lost: libx264 cannot carry HDR10 metadata")
    assert cpu["hevc"].startswith("kept: libx265") and cpu["av1"].startswith("kept: libsvtav1")
    assert node.to_json()["hdr"]["cpu"] == cpu
    assert "hdr: cpu hevc: HDR10 metadata kept: libx265" in table(node)
    assert set(node.hdr_support()) == {name for name, s in node.backends.items() if s.available}


def test_the_cli_flag_allows_dolby_vision_loss():
    from montage_ray._cli import build_parser
    from montage_ray._cli.encode_cmd import options_from_args

    parse = build_parser().parse_args
    assert options_from_args(parse(["encode", "in.mp4", "out.mp4", "--allow-dv-loss"])).allow_dv_loss is True
    assert options_from_args(parse(["encode", "in.mp4", "out.mp4"])).allow_dv_loss is False
