"""The simulated mixed cluster (scripts/simulate_cluster.py): several Ray nodes on this machine labelled
vaapi, nvenc, nvmpi and CPU, the hardware labels served by CPU stand-ins of different speeds (or presets: the
quality target's spread of scores). The jobs run on the session's one simulated cluster (conftest's
``simulated_cluster``), each a driver of its own: every test on that cluster is in this module, which runs whole
on one worker (scripts/test.sh), so the cluster starts once."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

import pytest

from tests import mediacheck as mc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "simulate_cluster.py")

pytestmark = pytest.mark.slow


@pytest.fixture
def simulate(simulated_cluster):
    """simulate(args...): scripts/simulate_cluster.py with ``args`` on the session's simulated cluster."""
    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, SCRIPT, *map(str, args), *simulated_cluster], capture_output=True,
                              text=True, timeout=timeout, cwd=ROOT)

    return run


def test_a_node_removed_mid_job_loses_no_frame(simulate, make_clip, tmp_path):
    src, dst = make_clip("long"), tmp_path / "out.mp4"
    done = simulate(src, dst, "--kill-node", "--segment-seconds", "2", "--report", tmp_path / "r.json",
                    "--timeline", tmp_path / "t.png")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "removing the vaapi node now" in done.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["simulation"]["killed_node"] is True

    # exact frames, in order, decodable: the removed node's segments were encoded elsewhere
    assert mc.decoded_frames(dst) == mc.decoded_frames(src) == 600 and mc.decode_errors(dst) == ""
    mc.assert_same_frames_in_order(src, dst)
    segs = report["segments"]
    assert [s["segment"] for s in segs] == list(range(10)) and sum(s["frames"] for s in segs) == 600

    # every label took part or was tried, each actor on its own node, and stand-ins say what they are
    used = {s["resource"] for s in segs}
    assert {"nvenc", "nvmpi", "cpu"} <= used
    for s in segs:
        assert s["node"] and s["actor"].startswith(f"encoder:{s['resource']}:")
        assert s["standin"] == (s["resource"] != "cpu")
        if s["standin"]:
            assert "(stand-in: libx264 on CPU)" in s["encoder"] and s["actor"].endswith(":stand-in")
            assert s["check"] == "decode"  # verify auto: a stand-in's segments are decoded where encoded
        if s["attempts"] > 1:
            assert s["check"] == "decode"  # and so is a segment that failed once
    assert len({s["node"] for s in segs}) >= 3
    assert "vaapi" in report["standins"] or all(s["resource"] != "vaapi" for s in segs)

    # what was lost on the removed node is in the report, with the cause, and was retried elsewhere
    lost = [f for f in report["failures"] if f["actor"].startswith("encoder:vaapi:")]
    for f in lost:
        assert f["reason"] == "actor-died"
        again = next(s for s in segs if s["segment"] == f["segment"])
        assert again["resource"] != "vaapi" and again["attempts"] >= 2 and again["failure_causes"]
    assert (tmp_path / "t.png").stat().st_size > 10_000


def test_hardware_that_does_not_work_falls_back_and_alone_fails_clearly(simulate, make_clip, tmp_path):
    """A vaapi node served by the real VAAPI backend (no GPU here): its actor cannot start; the job goes on
    without it, and a job limited to vaapi fails with the probe's cause and writes nothing."""
    src = make_clip("long")
    # both jobs on one simulated cluster (it starts once): the second is limited to vaapi
    done = simulate(src, tmp_path / "fallback.mp4", "--real", "vaapi", "--segment-seconds", "4",
                    "--report", tmp_path / "r.json", "--then", "vaapi", tmp_path / "alone.mp4")
    report = json.loads((tmp_path / "r.json").read_text())  # the first job's: it ended before the second began
    assert all(s["resource"] != "vaapi" for s in report["segments"])
    unavailable = [f for f in report["failures"] if f["actor"].startswith("encoder:vaapi:")]
    assert unavailable and unavailable[0]["reason"] == "unavailable"
    assert "no-device" in unavailable[0]["message"] and ":stand-in" not in unavailable[0]["actor"]
    assert mc.decoded_frames(tmp_path / "fallback.mp4") == 600

    assert "then: a job with only vaapi" in done.stdout, done.stderr[-3000:]
    alone = done
    assert alone.returncode == 6, alone.stderr[-3000:]
    error = alone.stderr.strip().splitlines()[-1]
    assert error.startswith("simulate_cluster: error: no encoder could start: encoder:vaapi:")
    assert "no-device" in error and "/dev/dri" in error
    assert not (tmp_path / "alone.mp4").exists() and not list(tmp_path.glob(".montage-ray-*"))


def test_a_paid_label_refused_by_its_provider_moves_its_work_to_local_encoders(simulate, make_clip, tmp_path):
    """The paid nvenc stand-ins refuse like an NVENC at its session limit after 1 segment each (a knob for
    simulations only): the job still ends exact, on the local encoders, never failing for it; the report
    says what the provider did, the back-off, and what nvenc cost (recorded in the cluster's ledger)."""
    src, dst = make_clip("long"), tmp_path / "out.mp4"
    done = simulate(src, dst, "--paid-nvenc", "--quota-after", "1", "--segment-seconds", "2",
                    "--report", tmp_path / "r.json")
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert mc.decoded_frames(dst) == mc.decoded_frames(src) == 600 and mc.decode_errors(dst) == ""
    mc.assert_same_frames_in_order(src, dst)
    segs = report["segments"]
    assert [s["segment"] for s in segs] == list(range(10))

    assert any(line.startswith("nvenc: remote") and "would cost $" in line for line in report["route"])
    on_nvenc = [s for s in segs if s["resource"] == "nvenc"]
    assert 1 <= len(on_nvenc) <= 2                      # one each, at most, before the provider refused
    refused = [f for f in report["failures"] if f["label"] == "nvenc"]
    assert refused and all(f["reason"] == "provider-session-limit" for f in refused)
    for f in refused:  # the refused segment went to a local encoder, and the refusal did not use up a try
        again = next(s for s in segs if s["segment"] == f["segment"])
        assert again["resource"] != "nvenc" and again["attempt"] == f["attempt"]
    assert report["provider"][0].startswith("nvenc: provider refused (session-limit) after")
    assert "OpenEncodeSessionEx failed" in report["provider"][0]
    assert any("left out of new jobs for 60 s" in line for line in report["provider"])

    cost = report["cost"]["nvenc"]
    assert cost["currency"] == "USD" and cost["seconds"] > 0 and cost["bytes"] > 0
    assert cost["cost"] == pytest.approx(cost["seconds"] / 3600 * 0.6 + cost["bytes"] / 1e9 * 0.09, abs=1e-6)
    assert cost["month_total"] == pytest.approx(cost["cost"])   # the ledger holds this job's spend
    assert set(report["cost"]) == {"nvenc"}                     # local labels cost nothing
    assert "provider: nvenc: provider refused" in done.stdout and "cost: nvenc $" in done.stdout


# -- the simulated cluster: the spread of scores with and without a target -------------------------------

def test_a_target_narrows_the_spread_of_unlike_stand_ins_to_a_third(make_clip, simulated_cluster, tmp_path):
    """Stand-ins with unlike presets (ultrafast .. medium, as unlike hardware) give segments whose PSNR
    differs by dB at one --quality; with --target-quality each segment is re-encoded until it is within the
    tolerance, and the spread of the scores is at most a third of what it was."""
    noisy = make_clip("noisy")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "simulate_cluster.py"), str(noisy),
                           str(tmp_path / "out.mp4"), "--preset-spread", "--segment-seconds", "1", "--report",
                           str(tmp_path / "r.json"), "--compare-target", "psnr:33.8", *simulated_cluster],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("quality: psnr per segment") == 2 and "compare: spread without a target" in done.stdout
    reports = {"without": json.loads((tmp_path / "r.json").read_text()),
               "with": json.loads((tmp_path / "r.target.json").read_text())}
    assert mc.decoded_frames(tmp_path / "out.target.mp4") == mc.decoded_frames(noisy)
    spread, presets, extra = {}, {}, {}
    for name, report in reports.items():
        segs = report["segments"]
        assert len(segs) >= 5 and all(s["metric"] == "psnr" and s["score"] is not None for s in segs)
        layout = report["simulation"]["layout"]
        presets[name] = {layout.get(s["resource"], {}).get("preset", "medium") for s in segs}
        scores = [s["score"] for s in segs]
        spread[name] = max(scores) - min(scores)
        extra[name] = (sum(s["seconds"] for s in segs), sum(s["tries"] - 1 for s in segs))
    segs = reports["with"]["segments"]
    assert all(abs(s["score"] - 33.8) <= 0.5 for s in segs)
    assert all(s["tries"] == len(s["tried"]) and s["knob"].startswith("-crf ") for s in segs)
    assert all(s["tries"] == 1 and s["knob"] == "-crf 23" for s in reports["without"]["segments"])
    assert len(presets["without"]) >= 2, f"the job without a target used one preset only: {presets}"
    print(f"\nspread without a target {spread['without']:.3f} dB ({sorted(presets['without'])}), with "
          f"psnr:33.8 {spread['with']:.3f} dB ({sorted(presets['with'])}); encode seconds (sum over segments, "
          f"re-encodes) without {extra['without'][0]:.1f} ({extra['without'][1]}), with {extra['with'][0]:.1f} "
          f"({extra['with'][1]}); wall {reports['without']['wall_seconds']:.1f} s vs "
          f"{reports['with']['wall_seconds']:.1f} s; median score {statistics.median(s['score'] for s in segs):.2f}")
    print(done.stdout.strip().splitlines()[-1])
    assert spread["without"] >= 1.0
    assert spread["with"] <= spread["without"] / 3
