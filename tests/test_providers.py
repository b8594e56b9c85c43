"""The provider table drives what montage-ray does with a cloud provider's labels (pure; no Ray).

The default row keeps what the code always did; a second row, added here as a user would add one, changes
which labels are remote and at what link speed (so routing), what a GB of transfer costs, which texts are
refusals and how long a refused label is left out, with no other change to the code.
"""

from __future__ import annotations

import re

import pytest

from montage_ray.cluster.nodes import offers, remote_labels
from montage_ray.encoders.config import LabelConfig, load_encoders_config
from montage_ray.errors import InputError
from montage_ray.job.options import EncodeOptions
from montage_ray.spending.budget import price_of, settle
from montage_ray.spending.cost import charge
from montage_ray.spending.ledger_file import LedgerFile
from montage_ray.spending.providers import DEFAULT, PROVIDERS, Provider, check_providers, provider_of
from montage_ray.spending.quota import Refusal, classify, next_backoff
from montage_ray.spending.routing import JobFacts, route

GIB = 2**30

#: A second provider as a user would add it: its own node labels, a refusal text of its own, a shorter
#: back-off, and transfer billed in binary gigabytes.
HIRE = Provider("gpuhire", node_label="gpuhire.example/remote", bandwidth_label="gpuhire.example/link-mbps",
                refusals=(("capacity", re.compile(r"no instances left in pool", re.I)),),
                first_backoff=10.0, max_backoff=30.0, bytes_per_gb=GIB)

LOCAL = {"NodeID": "aaaaaa11", "Alive": True, "NodeManagerAddress": "10.0.0.1", "Resources": {"CPU": 2.0, "vaapi": 1.0}}
HIRED = {"NodeID": "bbbbbb22", "Alive": True, "NodeManagerAddress": "10.9.0.2", "Resources": {"CPU": 0.0, "nvenc": 2.0},
         "Labels": {"gpuhire.example/remote": "true", "gpuhire.example/link-mbps": "20"}}


@pytest.fixture
def second(monkeypatch):
    monkeypatch.setitem(PROVIDERS, HIRE.name, HIRE)
    return HIRE


def test_the_default_row_is_what_a_remote_or_paid_label_always_had():
    cloud = PROVIDERS[DEFAULT]
    assert (cloud.node_label, cloud.bandwidth_label, cloud.bytes_per_gb) == \
        ("montage.ai/remote", "montage.ai/bandwidth-mbps", 1e9)
    assert provider_of(LabelConfig("nvenc", remote=True)) is cloud
    assert provider_of(LabelConfig("vaapi", cost_per_hour=0.1)) is cloud          # a paid local label
    assert provider_of(LabelConfig("vaapi", budget_per_month=5.0)) is cloud
    assert provider_of(LabelConfig("vaapi")) is None and provider_of(None) is None  # local and free
    assert price_of(LabelConfig("nvenc", remote=True, cost_per_gb=0.09)).bytes_per_gb == 1e9


def test_a_second_row_marks_its_nodes_remote_and_routing_weighs_its_link(second):
    nodes = [LOCAL, HIRED]
    job = JobFacts(frames=18000, duration=600, input_bytes=1e9)
    with pytest.MonkeyPatch.context() as mp:      # the same cluster before the row existed
        mp.delitem(PROVIDERS, second.name)
        assert remote_labels(nodes) == {}
        before = {o.label: o for o in offers(nodes, {}, pixels=1920 * 1080)}
        assert not before["nvenc"].remote
        assert "nvenc" in route(job, list(before.values())).labels
    assert remote_labels(nodes) == {"nvenc": 20.0}
    after = {o.label: o for o in offers(nodes, {}, pixels=1920 * 1080)}
    assert (after["nvenc"].remote, after["nvenc"].bandwidth_mbps, after["nvenc"].bandwidth_source) == \
        (True, 20.0, "node label")
    routed = route(job, list(after.values()))
    assert "nvenc" not in routed.labels       # 1.5 GB over 20 Mbit/s: slower than the local encoders alone
    assert any(r.startswith("nvenc: remote (link 20 Mbit/s, node label)") and r.endswith("left out")
               for r in routed.reasons), routed.reasons


def test_a_second_row_bills_its_own_gigabyte(second):
    hired = LabelConfig("nvenc", remote=True, provider="gpuhire", cost_per_gb=1.0, currency="USD")
    cloud = LabelConfig("nvenc", remote=True, cost_per_gb=1.0, currency="USD")
    assert charge(price_of(hired), 0, GIB) == pytest.approx(1.0)
    assert charge(price_of(cloud), 0, GIB) == pytest.approx(GIB / 1e9)
    job = JobFacts(frames=18000, duration=600, input_bytes=1e9)
    costs = [dict(route(job, offers([HIRED], {"nvenc": cfg}, pixels=1920 * 1080,
                                    terms=lambda label, c: {"price": price_of(c)})).expected_costs)["nvenc"]
             for cfg in (hired, cloud)]
    assert costs[0] == pytest.approx(costs[1] * 1e9 / GIB)


def test_a_second_row_adds_its_refusals_and_its_back_off(second, tmp_path):
    text = "provisioning failed: no instances left in pool eu-2"
    with pytest.MonkeyPatch.context() as mp:
        mp.delitem(PROVIDERS, second.name)
        assert classify(text) is None          # an ordinary failure without the row
    assert classify(text) == "capacity"
    assert [next_backoff(p, "gpuhire") for p in (None, 10.0, 20.0)] == [10.0, 20.0, 30.0]
    assert next_backoff(None) == PROVIDERS[DEFAULT].first_backoff

    ledger = LedgerFile(tmp_path / "ledger.sqlite")
    config = {"nvenc": LabelConfig("nvenc", remote=True, provider="gpuhire")}
    bills = [settle("job1", 0.0, [], [], config, refusals=[Refusal("nvenc", "capacity", text, "a", 0)],
                    ledger=ledger) for _ in range(3)]
    assert [b.provider[1] for b in bills] == [f"nvenc: left out of new jobs for {s} s (back-off)" for s in (10, 20, 30)]


def test_the_encoders_config_names_a_provider(tmp_path, second):
    path = tmp_path / "enc.yaml"
    path.write_text("labels:\n  nvenc: {backend: nvenc, provider: gpuhire, cost_per_hour: 1.0, currency: USD}\n")
    config = load_encoders_config(path)
    assert config["nvenc"].provider == "gpuhire" and provider_of(config["nvenc"]) is second
    check_providers(config)
    path.write_text("labels:\n  nvenc: {backend: nvenc, provider: nimbus}\n")
    with pytest.raises(InputError, match=r"'nvenc' names unknown provider 'nimbus' \(known: cloud, gpuhire\)"):
        check_providers(load_encoders_config(path))
    # a job checks it with the rest of its options, before it looks at the source
    with pytest.raises(InputError, match="unknown provider 'nimbus'"):
        EncodeOptions(encoders_config=str(path)).validate(tmp_path / "missing.mp4", tmp_path / "out.mp4")
    path.write_text("labels:\n  nvenc: {provider: 3}\n")
    with pytest.raises(InputError, match="provider must be a provider name, not 3"):
        load_encoders_config(path)
