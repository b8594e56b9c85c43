"""The encoders YAML: only vetted encoder options reach ffmpeg; a field of the wrong type is one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from montage_ray.encoders.config import check_config_for_codec, check_extra_args, load_encoders_config
from montage_ray.errors import InputError

ACCEPTED = {
    "x264 tuning": ("cpu", ["-tune", "film", "-x264-params", "ref=4:bframes=3:deblock=-1,-1", "-rc-lookahead", 40]),
    "gop and rate": ("cpu", ["-g", 48, "-bf", "2", "-refs", "3", "-b:v", "5M", "-maxrate:v", "6M"]),
    "x265 params": ("cpu", ["-x265-params", "aq-mode=3:no-sao=1"]),
    "svt-av1 params": ("cpu", ["-svtav1-params", "tune=0:enable-overlays=1"]),
    "nvenc private": ("nvenc", ["-rc-lookahead", "32", "-spatial-aq", "1", "-tune", "hq"]),
    "vaapi private": ("vaapi", ["-low_power", "1", "-idr_interval", "2"]),
    "nothing": ("cpu", []),
}

REFUSED = {
    "output file": ("cpu", ["-f", "mp4", "-y", "/tmp/x.mp4"], "'-f' is not an encoder option"),
    "overwrite flag": ("cpu", ["-y"], "'-y' is not an encoder option"),
    "input": ("cpu", ["-i", "/etc/passwd"], "'-i' is not"),
    "map": ("cpu", ["-map", "0:a"], "'-map' is not"),
    "movie filter": ("cpu", ["-vf", "movie=/etc/hostname[wm];[in][wm]overlay"], "'-vf' is not"),
    "filter_complex": ("cpu", ["-filter_complex", "amovie=x"], "'-filter_complex' is not"),
    "lavfi-ish filter:v": ("cpu", ["-filter:v", "null"], "'-filter:v' is not"),
    "path value": ("cpu", ["-tune", "/etc/passwd"], "not a plain value"),
    "url value": ("cpu", ["-x264-params", "http://x"], "not a plain value"),
    "space in value": ("cpu", ["-tune", "film -y"], "not a plain value"),
    "option as value": ("cpu", ["-tune", "-y"], "not a plain value"),
    "x264 stats file": ("cpu", ["-x264-params", "stats=x264.log"], "reads or writes files"),
    "x265 csv file": ("cpu", ["-x265-params", "csv=out.csv"], "reads or writes files"),
    "passlogfile": ("cpu", ["-passlogfile", "x"], "'-passlogfile' is not"),
    "qsv plugin": ("qsv", ["-load_plugin", "hevc_hw"], "'-load_plugin' is not"),
    "profile set by montage-ray": ("cpu", ["-profile:v", "baseline"], "'-profile:v' is not"),
    "x264 option on nvenc": ("nvenc", ["-x264-params", "ref=2"], "'-x264-params' is not"),
    "dangling option": ("cpu", ["-g"], "needs a value"),
    "a string, not a list": ("cpu", "-an", "must be a list"),
    "value of wrong type": ("cpu", ["-g", [1]], "must be text or a number"),
    "boolean value": ("cpu", ["-g", True], "must be text or a number"),
    "printf in value": ("cpu", ["-tune", "%s%n"], "not a plain value"),
}


@pytest.mark.parametrize("backend,args", ACCEPTED.values(), ids=list(ACCEPTED))
def test_vetted_encoder_options_pass(backend, args):
    assert check_extra_args(args, backend) == tuple(str(a) for a in args)


@pytest.mark.parametrize("backend,args,needle", REFUSED.values(), ids=list(REFUSED))
def test_anything_else_is_refused_with_one_line(backend, args, needle):
    with pytest.raises(InputError) as err:
        check_extra_args(args, backend)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_options_of_another_codecs_encoder_are_refused_once_the_codec_is_known(tmp_path: Path):
    path = tmp_path / "e.yaml"
    path.write_text("labels:\n  cpu: {extra_args: ['-x265-params', 'aq-mode=3']}\n")
    config = load_encoders_config(path)          # libx265 is one of the cpu backend's encoders
    check_config_for_codec(config, "hevc")
    with pytest.raises(InputError, match="'-x265-params' is not .* for h264"):
        check_config_for_codec(config, "h264")


FIELDS = {
    "quality_rank text": ("quality_rank: high", "quality_rank must be a whole number"),
    "readrate text": ("readrate: fast", "readrate must be a number above 0"),
    "readrate zero": ("readrate: 0", "readrate must be a number above 0"),
    "threads float": ("threads: 1.5", "threads must be a whole number"),
    "threads bool": ("threads: true", "threads must be a whole number"),
    "standin text": ("standin: 'yes'", "standin must be true or false"),
    "remote number": ("remote: 1", "remote must be true or false"),
    "bandwidth text": ("bandwidth_mbps: lots", "bandwidth_mbps must be a number"),
    "expected_fps negative": ("expected_fps: -3", "expected_fps must be a number above 0"),
    "extra_args string": ("extra_args: '-an'", "extra_args must be a list"),
    "backend list": ("backend: [cpu]", "backend must be a backend name"),
    "preset number": ("preset: 5", "preset must be a preset name"),
}


@pytest.mark.parametrize("line,needle", FIELDS.values(), ids=list(FIELDS))
def test_every_field_has_its_type_checked(tmp_path: Path, line, needle):
    path = tmp_path / "e.yaml"
    path.write_text("labels:\n  vaapi: {" + line + "}\n")
    with pytest.raises(InputError) as err:
        load_encoders_config(path)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_a_label_must_be_a_plain_name(tmp_path: Path):
    path = tmp_path / "e.yaml"
    path.write_text("labels:\n  'a b/c': {}\n")
    with pytest.raises(InputError, match="must be a name"):
        load_encoders_config(path)


def test_good_config_loads_with_its_values(tmp_path: Path):
    path = tmp_path / "e.yaml"
    path.write_text("labels:\n  vaapi: {backend: cpu, standin: true, readrate: 4, quality_rank: 2, "
                    "extra_args: ['-g', 30]}\n  cpu: {threads: 2}\n")
    config = load_encoders_config(path)
    assert config["vaapi"].readrate == 4 and config["vaapi"].quality_rank == 2
    assert config["vaapi"].extra_args == ("-g", "30") and config["cpu"].threads == 2


@pytest.mark.parametrize("settings,needle", [("{extra_args: '-an'}", "extra_args must be a list"),
                                             ("{quality_rank: high}", "quality_rank"),
                                             ("{extra_args: ['-vf', 'movie=/etc/hostname']}", "'-vf'")])
def test_cli_refuses_a_bad_config_with_one_line_and_exit_2(settings, needle, make_clip, tmp_path: Path):
    from tests.test_cli import assert_one_line_error, cli

    config = tmp_path / "e.yaml"
    config.write_text("labels:\n  cpu: " + settings + "\n")
    done = cli("encode", str(make_clip("bframes")), "o.mp4", "--encoders-config", str(config), cwd=tmp_path,
               timeout=60)
    assert_one_line_error(done, needle)
    assert done.returncode == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["e.yaml"]
