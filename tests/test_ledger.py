"""The spending ledger on a real local Ray: shared by concurrent drivers, kept after they exit, read by the
``montage-ray budget`` command; a job's settlement (report, ledger, back-off, ``ray_montage_cost``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
import ray

from montage_ray.spending.budget import BudgetView, settle
from montage_ray.encoders.config import LabelConfig
from montage_ray.spending.cost import month_of
from montage_ray.spending.ledger import NAMESPACE, Ledger, Spend
from montage_ray.spending.quota import Refusal
from montage_ray.job.report import JobReport
from montage_ray.encoders.records import FailedAttempt
from montage_ray.encoders.records import EncodeResult
from tests.raycheck import exported_total

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DRIVER = textwrap.dedent("""
    import sys, ray
    from montage_ray.spending.ledger import Ledger, Spend
    address, name, job = sys.argv[1:4]
    ray.init(address=address, log_to_driver=False, logging_level="WARNING")
    ledger = Ledger(name)
    for i in range(100):
        ledger.add(Spend("2026-11", "nvenc", "shared" if i % 2 else job, 1.0, 1000.0, 0.01, "USD"))
    print("done", flush=True)
    ray.shutdown()
""")


@pytest.fixture()
def ledger_name() -> str:
    return f"test-ledger-{uuid.uuid4().hex[:8]}"


def _address() -> str:
    return ray.get_runtime_context().gcs_address


def test_two_drivers_at_once_lose_no_update_and_it_outlives_them(ray_cluster, ledger_name):
    drivers = [subprocess.Popen([sys.executable, "-c", DRIVER, _address(), ledger_name, job], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for job in ("job-a", "job-b")]
    for d in drivers:
        out, err = d.communicate(timeout=240)
        assert d.returncode == 0 and "done" in out, err[-2000:]
    # both drivers have exited: this third one still sees every entry, exactly
    nvenc = Ledger(ledger_name).month("2026-11")["nvenc"]
    jobs = nvenc["jobs"]
    assert sum(j["entries"] for j in jobs.values()) == 200
    assert {k: j["entries"] for k, j in jobs.items()} == {"job-a": 50, "job-b": 50, "shared": 100}
    assert nvenc["seconds"] == 200.0 and nvenc["bytes"] == 200_000.0
    assert nvenc["cost"] == pytest.approx(2.0) and jobs["shared"]["cost"] == pytest.approx(1.0)

    # the ledger actor dies (its node went away): the restarted one goes on from the stored copy
    actor = ray.get_actor(ledger_name, namespace=NAMESPACE)
    ray.kill(actor, no_restart=False)
    assert Ledger(ledger_name).add(Spend("2026-11", "nvenc", "job-c", 1.0, 0.0, 0.5, "USD")) == pytest.approx(2.5)
    assert Ledger(ledger_name).month("2026-11")["nvenc"]["seconds"] == 201.0
    assert Ledger(ledger_name).month("2026-10") == {}


def test_budget_view_gives_routing_what_is_left_and_the_back_offs(ray_cluster, ledger_name):
    ledger = Ledger(ledger_name)
    ledger.add(Spend(month_of(), "nvenc", "j1", 600.0, 2e9, 7.25, "USD"))
    config = {"nvenc": LabelConfig("nvenc", remote=True, cost_per_hour=0.6, budget_per_month=10.0,
                                   min_time_saved=0.2), "cpu": LabelConfig("cpu")}
    view = BudgetView.load(config, ledger_name)
    assert not view.problem
    terms = view.terms("nvenc", config["nvenc"])
    assert terms["budget_left"] == pytest.approx(2.75) and terms["min_time_saved"] == 0.2
    assert terms["price"].cost_per_hour == 0.6 and "unavailable" not in terms
    assert view.terms("cpu", config["cpu"]) == {"price": None, "min_time_saved": None}

    ledger.back_off("nvenc", 60.0, "session-limit")
    terms = BudgetView.load(config, ledger_name).terms("nvenc", config["nvenc"])
    assert terms["unavailable"].startswith("the provider refused it lately (session-limit), backing off until")
    ledger.clear_back_off("nvenc")
    assert "unavailable" not in BudgetView.load(config, ledger_name).terms("nvenc", config["nvenc"])


def _segment(index: int, label: str, started: float, seconds: float) -> EncodeResult:
    return EncodeResult(segment=index, frames=60, bytes_in=30_000_000, bytes_out=20_000_000, seconds=seconds,
                        encoder=label, backend="cpu", resource=label, standin=True, node="n", started=started)


def test_settle_records_cost_per_label_backs_off_refusals_and_exports_the_metric(ray_cluster, ledger_name):
    config = {"nvenc": LabelConfig("nvenc", remote=True, cost_per_hour=36.0, cost_per_gb=0.5,
                                   budget_per_month=10.0), "cpu": LabelConfig("cpu")}
    t0 = time.time()
    # two nvenc sessions busy at once (billed once: 0..15 s), a failed try that held it (15..20 s), and cpu
    segments = [_segment(0, "nvenc", t0, 10), _segment(1, "nvenc", t0 + 5, 10), _segment(2, "cpu", t0, 30)]
    failures = [FailedAttempt(3, 1, "nvenc", "a", "provider-session-limit", "refused", started=t0 + 15,
                              seconds=5, label="nvenc")]
    refusal = Refusal("nvenc", "session-limit", "OpenEncodeSessionEx failed: out of memory (10)", "a", 2)
    bill = settle("settle1", t0, segments, failures, config, [refusal, refusal], ledger_name=ledger_name)

    cost = bill.cost["nvenc"]
    assert set(bill.cost) == {"nvenc"} and bill.notes == []
    assert cost["seconds"] == pytest.approx(20.0) and cost["bytes"] == 100_000_000
    assert cost["cost"] == pytest.approx(20 / 3600 * 36 + 0.1 * 0.5) == pytest.approx(0.25)
    assert cost["month_total"] == pytest.approx(0.25)
    assert len(bill.provider) == 2   # a label refused twice (at start and while encoding) is backed off once
    assert bill.provider[0].startswith("nvenc: provider refused (session-limit) after 2 segment(s)")
    assert bill.provider[1] == "nvenc: left out of new jobs for 60 s (back-off)"
    report = JobReport(source="a", output="b", codec="h264", frames=240, duration=8, job_id="settle1", started=t0,
                       segments=segments, failures=failures, cost=bill.cost, provider=bill.provider)
    assert "cost: nvenc $0.25 (20 s, 0.10 GB)" in report.summary()
    assert "provider: nvenc: left out of new jobs for 60 s (back-off)" in report.summary()
    ledger = Ledger(ledger_name)
    assert ledger.month(month_of(t0))["nvenc"]["jobs"]["settle1"]["cost"] == pytest.approx(0.25)
    assert ledger.back_offs()["nvenc"]["seconds"] == 60.0

    settle("settle1", t0, segments, failures, config, [refusal], ledger_name=ledger_name)  # again: it doubles
    assert ledger.back_offs()["nvenc"]["seconds"] == 120.0
    settle("settle1", t0, segments, failures, config, [], ledger_name=ledger_name)  # worked again: cleared
    assert "nvenc" not in ledger.back_offs()
    assert ledger.month(month_of(t0))["nvenc"]["cost"] == pytest.approx(0.75)

    exported, _ = exported_total("ray_montage_cost", 'label="nvenc"', 'currency="USD"', at_least=0.75)
    assert exported == pytest.approx(0.75)


def test_budget_command_prints_the_month_per_label_and_job(ray_cluster, ledger_name, tmp_path):
    ledger = Ledger(ledger_name)
    ledger.add(Spend("2026-11", "nvenc", "1a2b3c4d", 1800.0, 2e9, 0.48, "USD"))
    ledger.add(Spend("2026-11", "nvenc", "5e6f7a8b", 360.0, 0.5e9, 0.105, "USD"))
    config = tmp_path / "enc.yaml"
    config.write_text("labels:\n  nvenc: {remote: true, cost_per_hour: 0.6, budget_per_month: 10, currency: USD}\n")
    base = [sys.executable, "-m", "montage_ray", "budget", "--address", _address(), "--ledger", ledger_name,
            "--month", "2026-11", "--encoders-config", str(config)]
    done = subprocess.run(base + ["--json"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads(done.stdout)
    nvenc = data["labels"]["nvenc"]
    assert data["month"] == "2026-11" and nvenc["cost"] == pytest.approx(0.585) and nvenc["left"] == pytest.approx(9.415)
    assert set(nvenc["jobs"]) == {"1a2b3c4d", "5e6f7a8b"} and nvenc["jobs"]["1a2b3c4d"]["seconds"] == 1800.0

    done = subprocess.run(base, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "2026-11 nvenc: $0.58 of $10.00, $9.41 left (2160 s, 2.50 GB, 2 job(s))"
    assert lines[1:] == ["  job 1a2b3c4d: $0.48 (1800 s, 2.00 GB)", "  job 5e6f7a8b: $0.10 (360 s, 0.50 GB)"]
