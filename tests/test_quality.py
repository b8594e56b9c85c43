"""A quality target per segment (montage_ray/encoders/quality.py): the metric and target syntax, the knob search, real
encodes of noisy moving clips measured against their source pieces, and the refusal of a metric this ffmpeg
lacks. The spread of scores on a simulated cluster of stand-ins with unlike presets is in test_simulate."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from montage_ray.encoders import quality
from montage_ray.encoders.backends import BACKENDS, cpu_spec
from montage_ray.ffmpeg.caps import detect, ffmpeg_caps
from montage_ray.errors import InputError
from montage_ray.media.info import inspect
from montage_ray.job.options import EncodeOptions
from montage_ray.media.plan import plan_segments
from montage_ray.encoders.segment import SegmentEncodeError, encode_segment
from montage_ray.media.cut import split_source
from tests import mediacheck as mc
from tests.conftest import FFMPEG

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def noisy(make_clip):
    """6 s of 320x240 testsrc2 (motion) with temporal noise (conftest's "noisy")."""
    return make_clip("noisy")


@pytest.fixture(scope="module")
def noisy_pieces(noisy, tmp_path_factory):
    info = inspect(str(noisy))
    segments = plan_segments(info.packets, info.video.time_base, 1)
    return segments, split_source(info, segments, str(tmp_path_factory.mktemp("pieces")))


# -- syntax and the search (pure) -----------------------------------------------------------------------

@pytest.mark.parametrize("text, metric, value, tolerance", [
    ("psnr:42", "psnr", 42.0, 0.5), ("ssim:0.98", "ssim", 0.98, 0.005), ("xpsnr:40:0.25", "xpsnr", 40.0, 0.25),
    ("VMAF:93", "vmaf", 93.0, 1.0)])
def test_targets_parse_with_a_default_tolerance_per_metric(text, metric, value, tolerance):
    target = quality.parse_target(text)
    assert (target.metric, target.value, target.tolerance) == (metric, value, tolerance)


@pytest.mark.parametrize("text, says", [
    ("psnr", "METRIC:VALUE"), ("butteraugli:3", "unknown metric 'butteraugli'"), ("psnr:high", "not a number"),
    ("ssim:1.5", "from 0.1 to 1"), ("psnr:40:0", "more than 0"), ("psnr:nan", "not a number")])
def test_a_malformed_target_is_one_clear_line(text, says):
    with pytest.raises(InputError) as caught:
        quality.parse_target(text)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_the_search_steps_towards_the_target_then_interpolates_inside_the_bracket():
    knob, target = BACKENDS["cpu"].knobs["h264"], quality.parse_target("psnr:40")
    assert quality.next_value(knob, target, [(23.0, 38.0)]) < 23          # too low a score: more quality
    assert quality.next_value(knob, target, [(23.0, 42.0)]) > 23
    between = quality.next_value(knob, target, [(23.0, 38.0), (19.0, 41.0)])
    assert 19 < between < 23 and between == knob.clamp(between)          # x264 CRF steps of 0.25
    assert quality.next_value(knob, target, [(23.0, 39.8)]) is None       # reached: no more encodes
    assert quality.next_value(knob, target, [(0.0, 30.0)]) is None        # the best end of the range
    assert quality.next_value(knob, target, [(23.0, 30.0 + i) for i in range(5)]) is None   # tries used up
    # a bitrate knob: more bits, more quality; the start is the parity ladder
    rate = BACKENDS["nvmpi"].knobs["h264"]
    assert rate.start(23) == 8000 and quality.next_value(rate, target, [(8000, 38.0)]) > 8000


def test_every_encoder_family_has_its_knob_in_the_backend_table():
    for name, row in BACKENDS.items():
        for codec in row.encoders:
            knob = row.knobs[codec]
            spec = row.spec(codec, quality=23)
            assert quality.current_value(knob, spec.quality_args) == knob.start(23), (name, codec)
            moved = quality.with_knob(spec, knob, knob.start(23) + (-2 if knob.lower_is_better else 2000))
            assert moved.quality_args != spec.quality_args and moved.quality_args == tuple(
                knob.args(quality.current_value(knob, moved.quality_args)))
    assert BACKENDS["vaapi"].knobs["h264"].option == "-qp" and BACKENDS["qsv"].knobs["h264"].option == \
        "-global_quality" and BACKENDS["nvenc"].knobs["hevc"].option == "-cq"


# -- real encodes, measured against the source piece ---------------------------------------------------

@pytest.mark.parametrize("preset", ["ultrafast", "veryfast"])
def test_each_segment_reaches_the_target_whatever_its_preset(noisy_pieces, preset, tmp_path):
    """ultrafast and veryfast differ by about 2.5 dB at CRF 23 on this clip; both reach psnr 33.8 +- 0.5 by
    moving their CRF (one up, one down), and the kept bytes measure what the result says."""
    segments, paths = noisy_pieces
    target = quality.parse_target("psnr:33.8")
    seg = segments[1]
    result, encoded = encode_segment(cpu_spec("h264", preset=preset), seg, open(paths[1], "rb").read(),
                                     video_args=["-pix_fmt", "yuv420p"], target=target)
    assert result.metric == "psnr" and abs(result.score - 33.8) <= 0.5
    assert result.tries >= 2 and result.knob != "-crf 23" and result.knob.startswith("-crf ")
    assert result.tried[0][0] == "-crf 23" and not target.reached(result.tried[0][1])   # parity missed it
    assert len(result.tried) == result.tries and (result.knob, result.score) in result.tried
    assert result.frames == seg.frames and 0 < result.quality_seconds < result.seconds
    kept = tmp_path / "kept.mp4"
    kept.write_bytes(encoded)
    again = quality.measure(target, str(kept), paths[1], caps=ffmpeg_caps())
    assert again == pytest.approx(result.score, abs=1e-6)


def test_ssim_target_and_measure_only(noisy_pieces):
    segments, paths = noisy_pieces
    data = open(paths[2], "rb").read()
    plain, _ = encode_segment(cpu_spec("h264", preset="veryfast"), segments[2], data,
                              video_args=["-pix_fmt", "yuv420p"], target=quality.parse_measure("ssim"))
    assert plain.tries == 1 and plain.knob == "-crf 23" and 0.5 < plain.score < 1.0   # measured, not re-encoded
    wanted = round(plain.score + 0.04, 3)
    tuned, _ = encode_segment(cpu_spec("h264", preset="veryfast"), segments[2], data,
                              video_args=["-pix_fmt", "yuv420p"], target=quality.parse_target(f"ssim:{wanted}"))
    assert abs(tuned.score - wanted) <= 0.005 and tuned.tries >= 2
    assert float(tuned.knob.split()[1]) < 23                                   # more quality: a lower CRF


def test_xpsnr_where_the_ffmpeg_has_it(noisy_pieces, ffmpeg_builds):
    """ffmpeg 9.0.2 has xpsnr (7.1+): an actor on such a node measures it; 5.1 here does not."""
    segments, paths = noisy_pieces
    caps = ffmpeg_caps(str(ffmpeg_builds["9.0.2"]))
    assert caps.has_filter("xpsnr") and caps.has_filter("libvmaf") and quality.support(caps)["xpsnr"] == "yes"
    result, _ = encode_segment(cpu_spec("h264", preset="veryfast"), segments[3], open(paths[3], "rb").read(),
                               video_args=["-pix_fmt", "yuv420p"], caps=caps,
                               target=quality.parse_target("xpsnr:31:0.5"))
    assert result.metric == "xpsnr" and abs(result.score - 31) <= 0.5 and result.ffmpeg == "9.0.2"


def test_an_actor_whose_ffmpeg_lacks_the_metric_fails_its_segment_saying_so(noisy_pieces):
    segments, paths = noisy_pieces
    with pytest.raises(SegmentEncodeError) as caught:
        encode_segment(cpu_spec("h264", preset="ultrafast"), segments[0], open(paths[0], "rb").read(),
                       target=quality.parse_target("xpsnr:40"))
    assert "lacks the filter xpsnr, needed for --target-quality xpsnr" in str(caught.value)
    assert caught.value.reason == "failed" and caught.value.stderr == ""    # refused before any encode


def test_filters_are_learnt_from_each_ffmpeg():
    caps = detect(ffmpeg_caps().path)
    assert {"psnr", "ssim", "scale"} <= caps.filters and "xpsnr" not in caps.filters   # Debian's 5.1
    assert quality.support(caps)["xpsnr"].startswith(f"this ffmpeg ({caps.version}) lacks the filter xpsnr")
    assert "ffmpeg 7.1 and newer" in quality.support(caps)["xpsnr"]


def test_a_metric_this_ffmpeg_lacks_is_refused_with_one_line_before_any_encode(noisy, tmp_path):
    dst = tmp_path / "out.mp4"
    done = subprocess.run([sys.executable, "-m", "montage_ray", "encode", str(noisy), str(dst), "--target-quality",
                           "xpsnr:40"], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={**os.environ, "RAY_ADDRESS": ""})
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip() == (f"montage-ray: error: this ffmpeg ({ffmpeg_caps().version}) lacks the filter "
                                   "xpsnr, needed for --target-quality xpsnr; ffmpeg 7.1 and newer have it")
    assert not dst.exists() and not list(tmp_path.glob(".montage-ray-*"))


@pytest.mark.parametrize("options, says", [
    ({"target_quality": "vmaf:93"}, "lacks the filter libvmaf, needed for --target-quality vmaf"),
    ({"measure": "xpsnr"}, "lacks the filter xpsnr, needed for --measure xpsnr"),
    ({"target_quality": "psnr:40", "measure": "ssim"}, "not both"),
    ({"target_quality": "psnr:abc"}, "not a number")])
def test_options_refuse_what_cannot_be_measured(noisy, tmp_path, options, says):
    with pytest.raises(InputError) as caught:
        EncodeOptions(**options).validate(noisy, tmp_path / "out.mp4")
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_the_probe_says_which_metrics_this_ffmpeg_has():
    done = subprocess.run([sys.executable, "-m", "montage_ray", "probe"], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "quality metrics: psnr, ssim" in done.stdout
    assert "quality metric xpsnr: this ffmpeg" in done.stdout and "quality metric vmaf: this ffmpeg" in done.stdout
