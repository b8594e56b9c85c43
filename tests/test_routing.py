"""Offload routing and the encoders config: pure decisions, table-tested."""

from __future__ import annotations

import dataclasses

import pytest

from montage_ray.encoders.config import LabelConfig, load_encoders_config
from montage_ray.probe.spec import resolve_spec
from montage_ray.errors import InputError
from montage_ray.spending.routing import JobFacts, Offer, remote_rate, route

MB = 1e6
VAAPI = Offer("vaapi", sessions=1, fps=240)
QSV = Offer("qsv", sessions=1, fps=200, quality_rank=1)
CPU = Offer("cpu", sessions=4, fps=20, hardware=False)
CLOUD_FAST_LINK = Offer("nvenc", sessions=3, fps=400, remote=True, bandwidth_mbps=500, quality_rank=2)
CLOUD_SLOW_LINK = Offer("nvenc", sessions=3, fps=400, remote=True, bandwidth_mbps=20, quality_rank=2)
CLOUD_NO_LINK = Offer("nvenc", sessions=3, fps=400, remote=True)

# The original design's cases: file size, duration, local GPU or not, quality profile.
CASES = [
    # name, job, offers, labels used
    ("100MB/60s, local GPU, fast link: the cloud adds enough",
     JobFacts(frames=1800, duration=60, input_bytes=100 * MB), [VAAPI, CPU, CLOUD_FAST_LINK],
     ("vaapi", "cpu", "nvenc")),
    ("100MB/60s, local GPU, slow link: transfer costs more than it saves",
     JobFacts(frames=1800, duration=60, input_bytes=100 * MB), [VAAPI, CPU, CLOUD_SLOW_LINK], ("vaapi", "cpu")),
    ("100MB/60s, no local GPU, slow link: the first round trip alone eats the gain",
     JobFacts(frames=1800, duration=60, input_bytes=100 * MB), [CPU, CLOUD_SLOW_LINK], ("cpu",)),
    ("100MB/60s, no local GPU, slow link, 2 s segments: the first trip is one short segment",
     JobFacts(frames=1800, duration=60, input_bytes=100 * MB, segment_seconds=2), [CPU, CLOUD_SLOW_LINK],
     ("cpu", "nvenc")),
    ("1GB/600s, no local GPU, slow link: a long job pays for the trip",
     JobFacts(frames=18000, duration=600, input_bytes=1000 * MB), [CPU, CLOUD_SLOW_LINK], ("cpu", "nvenc")),
    ("10 s clip: small job, one local encoder, hardware first",
     JobFacts(frames=300, duration=10, input_bytes=15 * MB), [CPU, VAAPI, CLOUD_FAST_LINK], ("vaapi",)),
    ("10 s clip without local hardware: one CPU encoder",
     JobFacts(frames=300, duration=10, input_bytes=15 * MB), [CPU, CLOUD_FAST_LINK], ("cpu",)),
    ("remote label with unknown bandwidth is never used",
     JobFacts(frames=1800, duration=60, input_bytes=100 * MB), [CPU, CLOUD_NO_LINK], ("cpu",)),
    ("master prefers the best-quality label, even remote",
     JobFacts(frames=1800, duration=60, input_bytes=100 * MB, profile="master"),
     [VAAPI, QSV, CPU, CLOUD_SLOW_LINK], ("nvenc",)),
    ("master without ranks configured uses everything local",
     JobFacts(frames=1800, duration=60, input_bytes=100 * MB, profile="master"),
     [Offer("vaapi", 1, 240), Offer("cpu", 4, 20, hardware=False)], ("vaapi", "cpu")),
    ("master with local best quality: the remote is not considered",
     JobFacts(frames=1800, duration=60, input_bytes=100 * MB, profile="master"),
     [Offer("qsv", 1, 200, quality_rank=3), CPU, CLOUD_FAST_LINK], ("qsv",)),
    ("nothing offered", JobFacts(frames=1800, duration=60, input_bytes=100 * MB), [], ()),
]


@pytest.mark.parametrize("name,job,offers,expected", CASES, ids=[c[0] for c in CASES])
def test_route(name, job, offers, expected):
    decision = route(job, offers)
    assert decision.labels == expected
    assert decision.reasons  # every decision says why


def test_link_caps_remote_throughput():
    job = JobFacts(frames=1800, duration=60, input_bytes=100 * MB)
    # 20 Mbit/s moves 2.5 MB/s; each frame is 100 MB * 1.5 / 1800 ~ 83 kB: ~30 frames/s
    assert remote_rate(CLOUD_SLOW_LINK, job) == pytest.approx(30.0, rel=0.01)
    assert remote_rate(CLOUD_FAST_LINK, job) == pytest.approx(750.0, rel=0.01)
    assert remote_rate(VAAPI, job) == 240


def test_encoders_config_round_trip(tmp_path):
    path = tmp_path / "enc.yaml"
    path.write_text("labels:\n  vaapi: {backend: cpu, standin: true, readrate: 4, preset: veryfast}\n"
                    "  nvenc: {backend: nvenc, remote: true, bandwidth_mbps: 200, quality_rank: 2}\n"
                    "  cpu: {extra_args: ['-bf', '0']}\n")
    config = load_encoders_config(path)
    assert config["vaapi"] == LabelConfig("vaapi", backend="cpu", standin=True, readrate=4, preset="veryfast")
    assert config["nvenc"].remote and config["nvenc"].bandwidth_mbps == 200
    spec = resolve_spec("vaapi", config["vaapi"], codec="h264", quality=23, preset="medium", threads=1)
    assert spec.is_standin and spec.resource == "vaapi" and spec.encoder == "libx264"
    assert spec.label == "vaapi (stand-in: libx264 on CPU) [veryfast, at most 4x realtime]"
    assert spec.input_args[:2] == ("-readrate", "4")
    assert spec.codec_args[spec.codec_args.index("-preset") + 1] == "veryfast"
    cpu = resolve_spec("cpu", config["cpu"], codec="h264", quality=23, preset="medium", threads=2)
    assert cpu.codec_args[-2:] == ("-bf", "0") and not cpu.is_standin


@pytest.mark.parametrize("text,needle", [
    ("labels: [1, 2]", "labels:"),
    ("labels:\n  vaapi: {backend: quantum}", "unknown backend"),
    ("labels:\n  vaapi: {speed: 3}", "unknown setting"),
    ("labels:\n  vaapi: {preset: ludicrous}", "unknown preset"),
    ("labels: {vaapi: [", "cannot be read"),
])
def test_bad_encoders_config_is_an_input_error(tmp_path, text, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=needle):
        load_encoders_config(path)


# --- cost and budget ---------------------------------------------------------------------------------------
from montage_ray.spending.cost import Price  # noqa: E402

T4 = Price(cost_per_hour=0.60, cost_per_gb=0.09, currency="USD")
LONG = JobFacts(frames=18000, duration=600, input_bytes=1000 * MB)   # 10 min, 1 GB: nvenc would cost ~$0.10


def paid(budget_left=None, min_time_saved=None, unavailable=None, rank=2, bandwidth=500):
    return Offer("nvenc", sessions=3, fps=400, remote=True, bandwidth_mbps=bandwidth, quality_rank=rank,
                 price=T4, budget_left=budget_left, min_time_saved=min_time_saved, unavailable=unavailable)


COST_CASES = [
    # name, job, offers, labels used, a reason that must be given
    ("within budget: used, the expected cost said", LONG, [VAAPI, CPU, paid(budget_left=5.0)],
     ("vaapi", "cpu", "nvenc"), "nvenc: remote, 56 s -> 17 s with it, would cost $0.10, used"),
    ("no budget configured: priced but not capped", LONG, [VAAPI, CPU, paid()],
     ("vaapi", "cpu", "nvenc"), "would cost $0.10, used"),
    ("budget nearly exhausted: left out, with cost and what is left", LONG, [VAAPI, CPU, paid(budget_left=0.05)],
     ("vaapi", "cpu"), "nvenc left out: this job would cost $0.10, $0.05 left this month"),
    ("budget overspent: shows nothing left", LONG, [VAAPI, CPU, paid(budget_left=-0.3)],
     ("vaapi", "cpu"), "nvenc left out: this job would cost $0.10, $0.00 left this month"),
    ("not worth it: saves 24 %, the label asks 30 %", JobFacts(frames=18000, duration=600, input_bytes=1000 * MB),
     [Offer("vaapi", 1, 300), CPU, paid(budget_left=5.0, min_time_saved=0.3, bandwidth=100)],
     ("vaapi", "cpu"), "nvenc: remote, would take 36 s vs 47 s without (saves 24 %, needs 30 %), left out"),
    ("worth it at the label's own 20 %", JobFacts(frames=18000, duration=600, input_bytes=1000 * MB),
     [Offer("vaapi", 1, 300), CPU, paid(budget_left=5.0, min_time_saved=0.2, bandwidth=100)],
     ("vaapi", "cpu", "nvenc"), "would cost $"),
    ("fast profile: the same share rule", JobFacts(frames=18000, duration=600, input_bytes=1000 * MB, profile="fast"),
     [Offer("vaapi", 1, 300), CPU, paid(budget_left=5.0, min_time_saved=0.3, bandwidth=100)],
     ("vaapi", "cpu"), "needs 30 %"),
    ("master prefers it within budget, even where fast/standard would not",
     JobFacts(frames=18000, duration=600, input_bytes=1000 * MB, profile="master"),
     [Offer("vaapi", 1, 300, quality_rank=2), CPU, paid(budget_left=5.0, min_time_saved=0.3, bandwidth=100)],
     ("vaapi", "nvenc"), "would cost $"),
    ("master alone on the paid label: within budget", JobFacts(frames=18000, duration=600, input_bytes=1000 * MB,
                                                               profile="master"),
     [VAAPI, CPU, paid(budget_left=5.0)], ("nvenc",), "nvenc: remote, the only label: 24 s, would cost $0.14, used"),
    ("master over budget: the next-best labels do the job",
     JobFacts(frames=18000, duration=600, input_bytes=1000 * MB, profile="master"),
     [VAAPI, QSV, CPU, paid(budget_left=0.01)], ("qsv",), "nvenc left out: this job would cost $0.14, $0.01 left"),
    ("provider backing off: left out whatever the budget", LONG,
     [VAAPI, CPU, paid(budget_left=5.0, unavailable="the provider refused it lately (session-limit), backing off "
                                                    "until 12:00:00")],
     ("vaapi", "cpu"), "nvenc left out: the provider refused it lately (session-limit)"),
    ("only the paid label, budget exhausted: nothing to use", LONG, [paid(budget_left=0.0)], (),
     "nvenc left out: this job would cost"),
]


@pytest.mark.parametrize("name,job,offers,expected,reason", COST_CASES, ids=[c[0] for c in COST_CASES])
def test_route_with_cost(name, job, offers, expected, reason):
    decision = route(job, offers)
    assert decision.labels == expected, decision.reasons
    assert any(reason in line for line in decision.reasons), decision.reasons
    assert (dict(decision.expected_costs).get("nvenc", 0) > 0) == ("nvenc" in expected)


# --- paid local labels: a budget holds whatever the label's place and the job's profile --------------------
def local_paid(budget_left=None, label="vaapi", fps=240, rank=0):
    return Offer(label, sessions=1, fps=fps, quality_rank=rank, price=Price(cost_per_hour=36.0),
                 budget_left=budget_left)


# LONG on vaapi (240 fps) + CPU (80 fps): 56 s, vaapi held all of it at $0.01/s: $0.56
LOCAL_CASES = [
    ("standard, within budget: used, with its cost and what is left", LONG, [local_paid(1.0), CPU],
     ("vaapi", "cpu"), "vaapi: paid, would cost $0.56, $1.00 left this month, used"),
    ("standard, over budget: left out, the free labels do the job", LONG, [local_paid(0.5), CPU], ("cpu",),
     "vaapi left out: this job would cost $0.56, $0.50 left this month"),
    ("fast, over budget: the same", dataclasses.replace(LONG, profile="fast"), [local_paid(0.5), CPU], ("cpu",),
     "vaapi left out: this job would cost $0.56, $0.50 left this month"),
    ("master, over budget: the same", dataclasses.replace(LONG, profile="master"), [local_paid(0.5), CPU],
     ("cpu",), "vaapi left out: this job would cost $0.56, $0.50 left this month"),
    ("master, the best-quality label is paid and over budget: the next-best do the job",
     dataclasses.replace(LONG, profile="master"), [local_paid(0.1, "qsv", 200, rank=1), VAAPI, CPU],
     ("vaapi", "cpu"), "qsv left out: this job would cost"),
    ("overspent (a job cost more than expected): left out, nothing left", LONG, [local_paid(-2.0), CPU],
     ("cpu",), "vaapi left out: this job would cost $0.56, $0.00 left this month"),
    ("no budget: priced, used, no cap", LONG, [local_paid(None), CPU], ("vaapi", "cpu"),
     "vaapi: paid, would cost $0.56, used"),
    ("small job: the paid encoder over budget, the free one does it",
     JobFacts(frames=300, duration=10, input_bytes=15 * MB), [local_paid(0.001), CPU], ("cpu",),
     "vaapi left out: this job would cost $0.01, $0.001 left this month"),
    ("small job within budget: the paid encoder alone", JobFacts(frames=300, duration=10, input_bytes=15 * MB),
     [local_paid(1.0), CPU], ("vaapi",), "vaapi: paid, would cost $0.01, $1.00 left this month, used"),
    ("only a paid local label, budget spent: nothing to use", LONG, [local_paid(0.0)], (),
     "vaapi left out: this job would cost"),
    ("a ledger that cannot be read: every paid label left out", LONG,
     [dataclasses.replace(local_paid(None), unavailable="the spending ledger /x cannot be read: not a database"), CPU],
     ("cpu",), "vaapi left out: the spending ledger /x cannot be read"),
]


@pytest.mark.parametrize("name,job,offers,expected,reason", LOCAL_CASES, ids=[c[0] for c in LOCAL_CASES])
def test_route_keeps_paid_local_labels_to_their_budget(name, job, offers, expected, reason):
    decision = route(job, offers)
    assert decision.labels == expected, decision.reasons
    assert any(reason in line for line in decision.reasons), decision.reasons
    paid = {o.label for o in offers if o.price}
    assert {label for label, cost in decision.expected_costs} == paid & set(expected)
