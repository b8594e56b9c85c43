"""The spending ledger across whole Ray clusters: a head stopped and started again keeps the month's spending
(and the next job's routing sees what is left), and jobs on private Rays (no --address) share this
machine's ledger, so a budget holds across them. Real Ray, real encodes, CLI drivers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from montage_ray.spending.cost import money
from montage_ray.spending.ledger import LedgerFile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: $0.01 per busy second on the paid label, and a budget that many 6 s jobs fit in.
PRICE = {"cost_per_hour": 36.0, "budget_per_month": 10.0, "currency": "USD"}


class Head:
    """A simulated cluster (tests/service_cluster.py: a head with one CPU slot, a node with one ``vaapi``
    stand-in, priced here) started with ``$MONTAGE_RAY_LEDGER`` set for the head only, as KubeRay and
    cluster.yaml set it."""

    def __init__(self, config: str, ledger: str) -> None:
        env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "MONTAGE_RAY_LEDGER": ledger}
        self.proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "service_cluster.py"), config, "4"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        self.address = self.proc.stdout.readline().strip()
        assert self.address, "the simulated cluster did not start"
        settings = yaml.safe_load(open(config, encoding="utf-8"))   # as the cluster wrote it
        settings["labels"]["vaapi"].update(PRICE)   # the paid label: local, priced, with a budget
        with open(config, "w", encoding="utf-8") as fh:
            yaml.safe_dump(settings, fh)

    def stop(self) -> None:
        """The whole cluster goes (GCS, raylets, every actor), as with `ray stop` on each machine."""
        self.proc.stdin.close()
        assert self.proc.wait(timeout=120) == 0


def _driver_env(**extra: str) -> dict[str, str]:
    """A driver's environment without a ledger setting of its own: the head's holds."""
    env = {k: v for k, v in os.environ.items() if k not in ("MONTAGE_RAY_LEDGER", "RAY_ADDRESS")}
    return {**env, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **extra}


def _montage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "montage_ray", *args], capture_output=True, text=True,
                          timeout=240, cwd=ROOT, env=env)


def _encode(src, dst, config, *extra: str, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, dict]:
    done = _montage("encode", str(src), str(dst), "--encoders-config", str(config), "--segment-seconds", "1",
                    "--preset", "ultrafast", "--verify", "packets", "--report", f"{dst}.json", *extra, env=env)
    report = json.loads(open(f"{dst}.json", encoding="utf-8").read()) if done.returncode == 0 else {}
    return done, report


def test_spending_survives_a_cluster_restart_and_the_next_job_routes_on_what_is_left(make_clip, tmp_path):
    clip = make_clip("noaudio")
    config, head_ledger = tmp_path / "encoders.yaml", tmp_path / "head" / "ledger.sqlite"
    head = Head(str(config), str(head_ledger))
    try:
        done, first = _encode(clip, tmp_path / "a.mp4", config, "--address", head.address, env=_driver_env())
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        head.stop()
    spent = first["cost"]["vaapi"]["cost"]
    assert spent > 0 and first["cost"]["vaapi"]["month_total"] == pytest.approx(spent)
    month = first["cost"]["vaapi"]["month"]
    # the file is where the head was told to write it, whole, with no cluster running
    assert LedgerFile(head_ledger).spent(month, "vaapi") == pytest.approx(spent)
    direct = _montage("budget", "--json", "--ledger", str(head_ledger), "--month", month,
                      "--encoders-config", str(config), env=_driver_env())
    assert direct.returncode == 0, direct.stderr[-2000:]
    assert json.loads(direct.stdout)["labels"]["vaapi"]["left"] == pytest.approx(10.0 - spent)

    head = Head(str(config), str(head_ledger))   # the same head, started again
    try:
        through = _montage("budget", "--json", "--address", head.address, "--month", month,
                           "--encoders-config", str(config), env=_driver_env())
        assert through.returncode == 0, through.stderr[-2000:]
        assert json.loads(through.stdout) == json.loads(direct.stdout)   # same output either way

        done, second = _encode(clip, tmp_path / "b.mp4", config, "--address", head.address, env=_driver_env())
        assert done.returncode == 0, done.stderr[-3000:]
        (line,) = [r for r in second["route"] if r.startswith("vaapi")]
        assert line.endswith(f", {money(10.0 - spent)} left this month, used"), second["route"]
        assert second["cost"]["vaapi"]["month_total"] == pytest.approx(spent + second["cost"]["vaapi"]["cost"])

        # the head's ledger unreadable: the paid label is left out with the reason, the free ones do the job,
        # and the damaged file is left as it was
        broken = tmp_path / "broken.sqlite"
        broken.write_bytes(b"not a ledger\n" * 200)
        done, third = _encode(clip, tmp_path / "c.mp4", config, "--address", head.address,
                              env=_driver_env(MONTAGE_RAY_LEDGER=str(broken)))
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"vaapi left out: the spending ledger {broken} cannot be read: file is not a database" in third["route"]
        assert {s["resource"] for s in third["segments"]} == {"cpu"} and third["cost"] == {}
        assert broken.read_bytes() == b"not a ledger\n" * 200
    finally:
        head.stop()
    assert set(LedgerFile(head_ledger).month(month)["vaapi"]["jobs"]) == {first["job_id"], second["job_id"]}


def test_private_ray_jobs_share_the_machines_ledger_so_a_budget_holds(make_clip, tmp_path, ledger_path):
    """Jobs without --address each start a Ray of their own; the paid label here is the CPU itself (a local
    label), priced far above what its speed made routing expect, with a $1 budget: the first job spends it
    all, the next (another profile) is refused the paid label, and no Ray is running in between."""
    clip = make_clip("noaudio")
    config = tmp_path / "encoders.yaml"
    config.write_text("labels:\n  cpu: {cost_per_hour: 36000, budget_per_month: 1, currency: USD, "
                      "expected_fps: 100000, preset: ultrafast}\n")
    env = _driver_env(MONTAGE_RAY_LEDGER=str(ledger_path))
    done, first = _encode(clip, tmp_path / "a.mp4", config, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    spent = first["cost"]["cpu"]["cost"]
    assert spent > 1.0 and "cpu: paid, would cost $0.000, $1.00 left this month, used" in first["route"]
    assert LedgerFile(ledger_path).spent(first["cost"]["cpu"]["month"], "cpu") == pytest.approx(spent)

    done, _ = _encode(clip, tmp_path / "b.mp4", config, "--profile", "fast", env=env)
    assert done.returncode == 6 and not (tmp_path / "b.mp4").exists()
    assert done.stderr.strip().splitlines() == [
        "montage-ray: error: no encoder in the cluster can serve this job: cpu left out: this job would cost "
        "$0.000, $0.00 left this month; no usable encoder"]
