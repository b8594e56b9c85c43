"""The spending ledger: a SQLite file on the head's disk, written by several processes at once, read through
the cluster or directly, kept across a killed actor, and never replaced when it cannot be read; a job's
settlement (report, ledger, back-off, ``ray_montage_cost``). The restarts of whole clusters are in
tests/test_ledger_restart.py."""

from __future__ import annotations

import json
import os
import pathlib
import sqlite3
import stat
import subprocess
import sys
import textwrap
import time

import pytest
import ray

from montage_ray.encoders.config import LabelConfig
from montage_ray.encoders.records import EncodeResult, FailedAttempt
from montage_ray.errors import LedgerError
from montage_ray.job.report import JobReport
from montage_ray.spending.budget import BudgetView, settle
from montage_ray.spending.cost import month_of
from montage_ray.spending.ledger import ACTOR_NAME, NAMESPACE, Ledger, LedgerFile, Spend
from montage_ray.spending.quota import Refusal
from montage_ray.spending.routing import JobFacts, Offer, route
from tests.raycheck import exported_total

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: 100 charges of one driver: half under its own job id, half under a job id both drivers share.
DRIVER = textwrap.dedent("""
    import sys, ray
    from montage_ray.spending.ledger import Ledger, LedgerFile, Spend
    how, where, job, start = sys.argv[1:5]
    if how == "cluster":
        ray.init(address=where, log_to_driver=False, logging_level="WARNING")
        ledger = Ledger()          # the file named by $MONTAGE_RAY_LEDGER, through the actor on the head
    else:
        ledger = LedgerFile(where)  # the file itself, as a private Ray's driver writes it
    import os, time
    while not os.path.exists(start):  # both drivers start billing at the same moment
        time.sleep(0.01)
    for i in range(100):
        ledger.add(Spend("2026-11", "nvenc", "shared" if i % 2 else job, 1.0, 1000.0, 0.01, "USD"))
    print("done", flush=True)
""")


def _drivers(how: str, where: str, tmp_path: pathlib.Path) -> None:
    start = tmp_path / "start"
    drivers = [subprocess.Popen([sys.executable, "-c", DRIVER, how, where, job, str(start)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for job in ("job-a", "job-b")]
    time.sleep(0.5 if how == "file" else 0.0)
    start.touch()
    for d in drivers:
        out, err = d.communicate(timeout=240)
        assert d.returncode == 0 and "done" in out, err[-2000:]


def _exact(nvenc: dict) -> None:
    jobs = nvenc["jobs"]
    assert {k: j["entries"] for k, j in jobs.items()} == {"job-a": 50, "job-b": 50, "shared": 100}
    assert nvenc["seconds"] == 200.0 and nvenc["bytes"] == 200_000.0
    assert nvenc["cost"] == 2.0 and jobs["shared"]["cost"] == 1.0   # exact: kept in millionths


def test_the_file_keeps_every_charge_and_back_off_as_a_row(ledger_path):
    ledger = LedgerFile()
    assert ledger.path == str(ledger_path)
    assert ledger.state("2026-11") == {"month": {}, "back_offs": {}, "path": str(ledger_path)}
    assert not ledger_path.exists()  # reading makes nothing
    spend = Spend("2026-11", "nvenc", "j1", 95.0, 4e8, 0.05, "USD")
    assert ledger.add(spend) == pytest.approx(0.05)
    assert ledger.add(spend) == pytest.approx(0.05)  # the same charge again (a retried call): kept once
    assert ledger.add(Spend("2026-11", "nvenc", "j2", 5.0, 0.0, 0.25, "EUR")) == pytest.approx(0.30)
    assert ledger.add(Spend("2026-12", "nvenc", "j3", 5.0, 0.0, 1.0)) == pytest.approx(1.0)
    nvenc = LedgerFile(ledger_path).month("2026-11")["nvenc"]   # another opener sees it all
    assert nvenc["jobs"]["j1"]["entries"] == 1 and nvenc["jobs"]["j1"]["seconds"] == 95.0
    assert nvenc["currency"] == "EUR" and nvenc["cost"] == pytest.approx(0.30)

    assert ledger.back_off("nvenc", "session-limit")["seconds"] == 60.0
    assert ledger.back_off("nvenc", "session-limit")["seconds"] == 120.0   # in a row: doubled
    assert ledger.back_offs()["nvenc"]["reason"] == "session-limit"
    assert ledger.back_offs(now=time.time() + 121) == {}
    assert ledger.clear_back_off("nvenc") and not ledger.clear_back_off("nvenc")
    assert ledger.back_offs() == {} and ledger.last_back_off("nvenc") is None
    assert ledger.back_off("nvenc", "quota")["seconds"] == 60.0             # after it worked: from the start

    db = sqlite3.connect(ledger_path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT COUNT(*) FROM charges").fetchone()[0] == 3
    assert db.execute("SELECT COUNT(*) FROM back_offs").fetchone()[0] == 4   # three back-offs and a clearing
    for sql in ("UPDATE charges SET cost_micros = 0", "DELETE FROM charges", "DELETE FROM back_offs"):
        with pytest.raises(sqlite3.IntegrityError, match="never"):
            db.execute(sql)
    assert stat.S_IMODE(os.stat(ledger_path).st_mode) == 0o600


def test_two_processes_writing_the_file_at_once_lose_nothing(ledger_path, tmp_path):
    _drivers("file", str(ledger_path), tmp_path)
    _exact(LedgerFile(ledger_path).month("2026-11")["nvenc"])


def test_two_drivers_through_the_cluster_lose_nothing_and_a_killed_actor_loses_nothing(ray_cluster, ledger_path,
                                                                                     tmp_path):
    _drivers("cluster", ray.get_runtime_context().gcs_address, tmp_path)
    # both drivers have exited: this one sees every entry, through the actor and in the file on the head
    _exact(Ledger().month("2026-11")["nvenc"])
    _exact(LedgerFile(ledger_path).month("2026-11")["nvenc"])

    ledger = Ledger()
    assert ledger.add(Spend("2026-11", "nvenc", "job-c", 1.0, 0.0, 0.5)) == pytest.approx(2.5)
    actor = ray.get_actor(ACTOR_NAME, namespace=NAMESPACE)
    ray.kill(actor, no_restart=False)          # killed between two charges: Ray restarts it
    assert ledger.add(Spend("2026-11", "nvenc", "job-c", 1.0, 0.0, 0.5)) == pytest.approx(3.0)
    ray.kill(actor, no_restart=True)           # gone for good: a new one is made, from the same file
    assert ledger.add(Spend("2026-11", "nvenc", "job-c", 1.0, 0.0, 0.5)) == pytest.approx(3.5)
    nvenc = Ledger().month("2026-11")["nvenc"]
    assert nvenc["jobs"]["job-c"]["entries"] == 3 and nvenc["seconds"] == 203.0
    assert Ledger().month("2026-10") == {}


def test_budget_view_gives_routing_what_is_left_and_the_back_offs():
    ledger = LedgerFile()
    ledger.add(Spend(month_of(), "nvenc", "j1", 600.0, 2e9, 7.25, "USD"))
    config = {"nvenc": LabelConfig("nvenc", remote=True, cost_per_hour=0.6, budget_per_month=10.0,
                                   min_time_saved=0.2), "cpu": LabelConfig("cpu")}
    view = BudgetView.load(config, ledger)
    assert not view.problem
    terms = view.terms("nvenc", config["nvenc"])
    assert terms["budget_left"] == pytest.approx(2.75) and terms["min_time_saved"] == 0.2
    assert terms["price"].cost_per_hour == 0.6 and "unavailable" not in terms
    assert view.terms("cpu", config["cpu"]) == {"price": None, "min_time_saved": None}

    ledger.back_off("nvenc", "session-limit")
    terms = BudgetView.load(config, ledger).terms("nvenc", config["nvenc"])
    assert terms["unavailable"].startswith("the provider refused it lately (session-limit), backing off until")
    ledger.clear_back_off("nvenc")
    assert "unavailable" not in BudgetView.load(config, ledger).terms("nvenc", config["nvenc"])


def _segment(index: int, label: str, started: float, seconds: float) -> EncodeResult:
    return EncodeResult(segment=index, frames=60, bytes_in=30_000_000, bytes_out=20_000_000, seconds=seconds,
                        encoder=label, backend="cpu", resource=label, standin=True, node="n", started=started)


def test_settle_records_cost_per_label_backs_off_refusals_and_exports_the_metric(ray_cluster):
    config = {"nvenc": LabelConfig("nvenc", remote=True, cost_per_hour=36.0, cost_per_gb=0.5,
                                   budget_per_month=10.0), "cpu": LabelConfig("cpu")}
    t0 = time.time()
    # two nvenc sessions busy at once (billed once: 0..15 s), a failed try that held it (15..20 s), and cpu
    segments = [_segment(0, "nvenc", t0, 10), _segment(1, "nvenc", t0 + 5, 10), _segment(2, "cpu", t0, 30)]
    failures = [FailedAttempt(3, 1, "nvenc", "a", "provider-session-limit", "refused", started=t0 + 15,
                              seconds=5, label="nvenc")]
    refusal = Refusal("nvenc", "session-limit", "OpenEncodeSessionEx failed: out of memory (10)", "a", 2)
    ledger = Ledger()  # through the cluster's actor
    bill = settle("settle1", t0, segments, failures, config, [refusal, refusal], ledger=ledger)

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
    assert ledger.month(month_of(t0))["nvenc"]["jobs"]["settle1"]["cost"] == pytest.approx(0.25)
    assert ledger.back_offs()["nvenc"]["seconds"] == 60.0

    settle("settle1", t0, segments, failures, config, [refusal], ledger=ledger)  # again: it doubles
    assert ledger.back_offs()["nvenc"]["seconds"] == 120.0
    settle("settle1", t0, segments, failures, config, [], ledger=ledger)  # worked again: cleared
    assert "nvenc" not in ledger.back_offs()
    assert LedgerFile().month(month_of(t0))["nvenc"]["cost"] == pytest.approx(0.75)  # the file on the head

    exported, _ = exported_total("ray_montage_cost", 'label="nvenc"', 'currency="USD"', at_least=0.75)
    assert exported == pytest.approx(0.75)


def _budget(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "montage_ray", "budget", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env=env)


def test_budget_command_prints_the_same_through_the_cluster_and_from_the_file(ray_cluster, ledger_path, tmp_path):
    ledger = Ledger()
    ledger.add(Spend("2026-11", "nvenc", "1a2b3c4d", 1800.0, 2e9, 0.48, "USD"))
    ledger.add(Spend("2026-11", "nvenc", "5e6f7a8b", 360.0, 0.5e9, 0.105, "USD"))
    config = tmp_path / "enc.yaml"
    config.write_text("labels:\n  nvenc: {remote: true, cost_per_hour: 0.6, budget_per_month: 10, currency: USD}\n")
    common = ["--month", "2026-11", "--encoders-config", str(config)]
    cluster = ["--address", ray.get_runtime_context().gcs_address, *common]
    direct = ["--ledger", str(ledger_path), *common]
    # the file alone, no cluster and no $MONTAGE_RAY_LEDGER: --ledger names it
    env = {k: v for k, v in os.environ.items() if k not in ("MONTAGE_RAY_LEDGER", "RAY_ADDRESS")}
    outputs = {}
    for name, args, run_env in (("cluster", cluster, None), ("file", direct, env)):
        done = _budget(*args, "--json", env=run_env)
        assert done.returncode == 0, done.stderr[-2000:]
        text = _budget(*args, env=run_env)
        assert text.returncode == 0, text.stderr[-2000:]
        outputs[name] = (json.loads(done.stdout), text.stdout)
    assert outputs["cluster"] == outputs["file"]
    data, text = outputs["file"]
    nvenc = data["labels"]["nvenc"]
    assert data["month"] == "2026-11" and data["ledger"] == str(ledger_path)
    assert nvenc["cost"] == pytest.approx(0.585) and nvenc["left"] == pytest.approx(9.415)
    assert set(nvenc["jobs"]) == {"1a2b3c4d", "5e6f7a8b"} and nvenc["jobs"]["1a2b3c4d"]["seconds"] == 1800.0
    assert text.splitlines() == ["2026-11 nvenc: $0.58 of $10.00, $9.41 left (2160 s, 2.50 GB, 2 job(s))",
                                 "  job 1a2b3c4d: $0.48 (1800 s, 2.00 GB)", "  job 5e6f7a8b: $0.10 (360 s, 0.50 GB)",
                                 f"(ledger {ledger_path})"]

    missing = _budget("--ledger", str(tmp_path / "nothing.sqlite"))
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"montage-ray: error: no ledger file at {str(tmp_path / 'nothing.sqlite')!r}"]


CORRUPT = {
    "garbage": b"this is not a database, but it is where the ledger was\n" * 100,
    "truncated": None,       # a real ledger cut to its first 1000 bytes
    "empty": b"",
    "foreign": None,         # another program's SQLite database
}


def _corrupt(path: pathlib.Path, kind: str) -> bytes:
    if kind == "truncated":
        ledger = LedgerFile(path)
        for i in range(50):
            ledger.add(Spend(month_of(), "nvenc", f"j{i}", 1.0, 0.0, 0.1))
        ledger.close()
        data = path.read_bytes()[:1000]
        path.write_bytes(data)
    elif kind == "foreign":
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE notes (text TEXT)")
        db.commit()
        db.close()
    else:
        path.write_bytes(CORRUPT[kind])
    return path.read_bytes()


@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_a_corrupt_ledger_leaves_paid_labels_out_and_is_never_replaced(ledger_path, kind):
    before = _corrupt(ledger_path, kind)
    config = {"nvenc": LabelConfig("nvenc", remote=True, cost_per_hour=0.6, budget_per_month=10.0),
              "vaapi": LabelConfig("vaapi", cost_per_hour=0.1, currency="USD"),   # paid, no budget
              "cpu": LabelConfig("cpu")}
    view = BudgetView.load(config, LedgerFile())
    assert view.problem.startswith(f"the spending ledger {ledger_path} ") and "\n" not in view.problem
    offers = [Offer(label, 1, 300, remote=label == "nvenc", bandwidth_mbps=500, **view.terms(label, config[label]))
              for label in config]
    decision = route(JobFacts(frames=18000, duration=600, input_bytes=1e9), offers)
    assert decision.labels == ("cpu",)
    assert f"nvenc left out: {view.problem}" in decision.reasons
    assert f"vaapi left out: {view.problem}" in decision.reasons

    t0 = time.time()
    bill = settle("j", t0, [_segment(0, "vaapi", t0, 10)], [], config,
                  [Refusal("nvenc", "quota", "Quota exceeded", "a", 0)], ledger=LedgerFile())
    assert bill.notes[0].startswith("vaapi: cost $0.000 not recorded in the ledger: the spending ledger")
    assert bill.notes[1].startswith("nvenc: back-off not recorded: the spending ledger")
    with pytest.raises(LedgerError):
        LedgerFile().add(Spend(month_of(), "nvenc", "j", 1.0, 0.0, 1.0))
    assert ledger_path.read_bytes() == before   # never started over from zero

    done = _budget("--ledger", str(ledger_path), "--json")
    assert done.returncode == 8 and done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(f"montage-ray: error: the spending ledger {ledger_path} ")
    assert ledger_path.read_bytes() == before


def test_a_ledger_that_cannot_be_made_leaves_paid_labels_out(tmp_path):
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    config = {"nvenc": LabelConfig("nvenc", cost_per_hour=0.6, currency="USD"), "cpu": LabelConfig("cpu")}
    view = BudgetView.load(config, LedgerFile(blocked / "ledger.sqlite"))
    assert view.problem.startswith(f"the spending ledger {blocked / 'ledger.sqlite'} cannot be made: ")
    assert view.terms("nvenc", config["nvenc"])["unavailable"] == view.problem
    assert not BudgetView.load({"cpu": LabelConfig("cpu")}, LedgerFile(blocked / "ledger.sqlite")).problem


def test_a_corrupt_ledger_on_the_head_is_one_line_through_the_cluster(ray_cluster, ledger_path):
    before = _corrupt(ledger_path, "garbage")
    view = BudgetView.load({"nvenc": LabelConfig("nvenc", cost_per_hour=0.6, currency="USD")}, Ledger())
    assert view.problem == f"the spending ledger {ledger_path} cannot be read: file is not a database"
    assert ledger_path.read_bytes() == before


def test_no_private_ray_kv_in_the_package():
    package = pathlib.Path(ROOT) / "montage_ray"
    for path in package.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "internal_kv" not in text, f"{path}: Ray's private KV store"
