"""Pricing, provider-refusal classification and the cost fields of the encoders config: pure, table-tested."""

from __future__ import annotations

import subprocess
import sys

import pytest

from montage_ray.encoders.config import load_encoders_config
from montage_ray.spending.cost import Price, busy_seconds, charge, money, month_of
from montage_ray.errors import InputError
from montage_ray.spending.providers import DEFAULT, PROVIDERS
from montage_ray.spending.quota import STANDIN_REFUSAL, classify, next_backoff

T4 = Price(cost_per_hour=0.60, cost_per_gb=0.09, currency="USD")


@pytest.mark.parametrize("price,seconds,nbytes,expected", [
    (T4, 3600, 0, 0.60),                 # an hour busy
    (T4, 0, 1e9, 0.09),                  # one GB moved
    (T4, 1800, 2e9, 0.30 + 0.18),
    (T4, 60, 50e6, 0.01 + 0.0045),
    (Price(cost_per_hour=1.2), 90, 5e9, 0.03),   # no transfer price
    (Price(), 3600, 1e9, 0.0),           # free
    (T4, -5, -1, 0.0),                   # never negative
])
def test_charge(price, seconds, nbytes, expected):
    assert charge(price, seconds, nbytes) == pytest.approx(expected)


@pytest.mark.parametrize("spans,expected", [
    ([], 0.0),
    ([(0, 10)], 10.0),
    ([(0, 10), (20, 5)], 15.0),          # apart: both count
    ([(0, 10), (5, 10)], 15.0),          # overlapping sessions: billed once
    ([(0, 10), (2, 3)], 10.0),           # one inside the other
    ([(5, 10), (0, 6), (100, 1)], 16.0),  # unsorted
])
def test_busy_seconds(spans, expected):
    assert busy_seconds(spans) == pytest.approx(expected)


@pytest.mark.parametrize("amount,currency,text", [
    (0.42, "USD", "$0.42"), (10, "USD", "$10.00"), (1.5, "EUR", "€1.50"), (0.42, "CHF", "0.42 CHF"),
    (0.004, "USD", "$0.004"), (0, "USD", "$0.00"),
])
def test_money(amount, currency, text):
    assert money(amount, currency) == text


def test_month_is_the_utc_calendar_month():
    assert month_of(1764547199.0) == "2025-11"   # 2025-11-30 23:59:59 UTC
    assert month_of(1764547200.0) == "2025-12"   # a second later


@pytest.mark.parametrize("text,kind", [
    ("[h264_nvenc @ 0x5] OpenEncodeSessionEx failed: out of memory (10): (no details)", "session-limit"),
    ("[hevc_nvenc @ 0x5] OpenEncodeSessionEx failed: incompatible client key (21): (no details)",
     "session-limit"),
    (STANDIN_REFUSAL, "session-limit"),
    ("The zone does not have enough resources: ZONE_RESOURCE_POOL_EXHAUSTED", "capacity"),
    ("InsufficientInstanceCapacity: We currently do not have sufficient g4dn.xlarge capacity", "capacity"),
    ("gpu node: out of capacity, try again later", "capacity"),
    ("HTTP 429 Too Many Requests", "rate-limit"),
    ("request was throttled", "rate-limit"),
    ("Quota 'NVIDIA_T4_GPUS' exceeded. Limit: 1.0 in region us-east1", "quota"),
    # ordinary encoder failures are not a provider's refusal
    ("Invalid data found when processing input", None),
    ("[h264_nvenc @ 0x5] No capable devices found", None),
    ("Cannot load libcuda.so.1", None),
    ("frame count 59 != 60", None),
    ("frame=  429 fps= 31 q=28.0 size=     256kB time=00:00:14.30", None),   # a progress line in the stderr tail
    ("", None),
    (None, None),
])
def test_classify(text, kind):
    assert classify(text) == kind


def test_backoff_doubles_up_to_a_cap():
    waits = [next_backoff(None)]
    for _ in range(10):
        waits.append(next_backoff(waits[-1]))
    first, cap = PROVIDERS[DEFAULT].first_backoff, PROVIDERS[DEFAULT].max_backoff
    assert (first, cap) == (60.0, 3600.0)
    assert waits[0] == first and waits[1] == 2 * first and waits[-1] == cap
    assert waits == sorted(waits)


def test_cost_fields_of_the_encoders_config(tmp_path):
    path = tmp_path / "enc.yaml"
    path.write_text("labels:\n  nvenc: {backend: nvenc, remote: true, bandwidth_mbps: 200, cost_per_hour: 0.6,\n"
                    "          cost_per_gb: 0.09, budget_per_month: 10, currency: USD, min_time_saved: 0.2}\n"
                    "  vaapi: {backend: cpu, standin: true, standin_quota_after: 3}\n  cpu: {}\n")
    config = load_encoders_config(path)
    nv = config["nvenc"]
    assert (nv.cost_per_hour, nv.cost_per_gb, nv.budget_per_month, nv.currency, nv.min_time_saved) == \
        (0.6, 0.09, 10.0, "USD", 0.2)
    assert config["vaapi"].standin_quota_after == 3
    assert config["cpu"].cost_per_hour is None and config["cpu"].budget_per_month is None


@pytest.mark.parametrize("settings,message", [
    ("{cost_per_hour: cheap, currency: USD}", "cost_per_hour of 'nvenc' must be a number >= 0, not 'cheap'"),
    ("{cost_per_hour: -1, currency: USD}", "cost_per_hour of 'nvenc' must be a number >= 0"),
    ("{cost_per_gb: true, currency: USD}", "cost_per_gb of 'nvenc' must be a number >= 0, not True"),
    ("{budget_per_month: .inf, currency: USD}", "budget_per_month of 'nvenc' must be a number >= 0"),
    ("{budget_per_month: 10}", "'nvenc' has a cost or budget; name its currency"),
    ("{budget_per_month: 10, currency: dollars}", "currency of 'nvenc' must be a 3-letter code"),
    ("{min_time_saved: 20}", "min_time_saved of 'nvenc' is a share of the job time"),
    ("{backend: nvenc, standin_quota_after: 2}", "standin_quota_after of 'nvenc' is for CPU stand-ins only"),
    ("{backend: cpu, standin: true, standin_quota_after: -1}", "must be a whole number >= 0"),
])
def test_bad_cost_fields_are_one_clear_line(tmp_path, settings, message):
    path = tmp_path / "enc.yaml"
    path.write_text(f"labels:\n  nvenc: {settings}\n")
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        load_encoders_config(path)


def test_bad_cost_field_exits_2_with_one_line(tmp_path):
    path = tmp_path / "enc.yaml"
    path.write_text("labels:\n  nvenc: {budget_per_month: ten, currency: USD}\n")
    done = subprocess.run([sys.executable, "-m", "montage_ray", "budget", "--encoders-config", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"montage-ray: error: encoders config {str(path)!r}: budget_per_month of 'nvenc' must be a number >= 0, "
        "not 'ten'"]
