"""What the cluster offers, read from ``ray.nodes()`` rows: placements, labels, remote labels, offers (pure)."""

from __future__ import annotations

import pytest

from montage_ray.cluster.nodes import offered_labels, offers, placements, remote_labels
from montage_ray.encoders.config import LabelConfig
from montage_ray.errors import ClusterError

NODES = [
    {"NodeID": "aaaaaa11", "Alive": True, "NodeManagerAddress": "10.0.0.1",
     "Resources": {"CPU": 4.0, "vaapi": 1.0, "qsv": 1.0, "memory": 1e9}},
    {"NodeID": "bbbbbb22", "Alive": True, "NodeManagerAddress": "10.0.0.2", "Resources": {"CPU": 2.0, "nvenc": 3.0}},
    {"NodeID": "cccccc33", "Alive": False, "NodeManagerAddress": "10.0.0.3", "Resources": {"CPU": 8.0}},
    {"NodeID": "dddddd44", "Alive": True, "NodeManagerAddress": "10.0.0.4", "Resources": {"CPU": 4.0, "nvmpi": 1.0}},
]


def test_placements_one_per_session_hardware_first():
    found = placements(NODES)
    labels = [p.label for p in found]
    assert labels[:6] == ["vaapi", "qsv", "nvenc", "nvenc", "nvenc", "nvmpi"]
    assert labels.count("cpu") == 4 + 2 + 4  # the dead node offers nothing
    assert found[0].name == "encoder:vaapi:10.0.0.1-aaaaaa:0"
    assert {p.node_cpus for p in found if p.node_id == "bbbbbb22"} == {2}


def test_placements_limited_to_labels():
    assert [p.label for p in placements(NODES, labels={"nvenc"})] == ["nvenc"] * 3


def test_nodes_marked_remote_make_their_labels_remote():
    nodes = NODES + [{"NodeID": "eeeeee55", "Alive": True, "NodeManagerAddress": "10.8.0.9",
                      "Resources": {"CPU": 4.0, "nvenc": 3.0},
                      "Labels": {"montage.ai/remote": "true", "montage.ai/bandwidth-mbps": "200"}},
                     {"NodeID": "ffffff66", "Alive": True, "NodeManagerAddress": "10.8.0.10",
                      "Resources": {"CPU": 2.0, "nvmpi": 1.0}, "Labels": {"montage.ai/remote": "true"}}]
    assert remote_labels(nodes) == {"nvenc": 200.0, "nvmpi": None}
    assert remote_labels(NODES) == {}


@pytest.mark.parametrize("nodes,extra,expected", [
    ([], (), {}),
    (NODES, (), {"vaapi": 1, "qsv": 1, "nvenc": 3, "nvmpi": 1, "cpu": 10}),
    ([{"NodeID": "x", "alive": False, "Resources": {"CPU": 4.0, "vaapi": 1.0}}], (), {}),   # lower-case key
    ([{"NodeID": "x", "Resources": {"CPU": 1.0, "fpga": 2.0}}], (), {"cpu": 1}),            # unknown label...
    ([{"NodeID": "x", "Resources": {"CPU": 1.0, "fpga": 2.0}}], ("fpga",), {"fpga": 2, "cpu": 1}),  # ...configured
    ([{"NodeID": "x", "Resources": {"GPU": 1.0}}], (), {}),                                # no CPU, no encoder
])
def test_offered_labels(nodes, extra, expected):
    assert offered_labels(nodes, extra) == expected


def test_placement_names_and_slots_per_node():
    found = placements(NODES[:2], labels={"nvenc", "cpu"})
    assert [(p.label, p.index) for p in found if p.label == "nvenc"] == [("nvenc", 0), ("nvenc", 1), ("nvenc", 2)]
    assert [p.name for p in found if p.node_id == "bbbbbb22" and p.label == "cpu"] == \
        ["encoder:cpu:10.0.0.2-bbbbbb:0", "encoder:cpu:10.0.0.2-bbbbbb:1"]


REMOTE = {"NodeID": "eeeeee55", "Alive": True, "NodeManagerAddress": "10.8.0.9", "Resources": {"nvenc": 3.0},
          "Labels": {"montage.ai/remote": "true", "montage.ai/bandwidth-mbps": "200"}}


@pytest.mark.parametrize("nodes,config,pixels,labels,expected", [
    # label, sessions, fps, remote, bandwidth, quality rank, hardware
    (NODES[1:2], {}, 1920 * 1080, None, [("nvenc", 3, 300.0, False, None, 0, True), ("cpu", 2, 25.0, False, None, 0,
                                                                                        False)]),
    (NODES[1:2], {}, 960 * 540, None, [("nvenc", 3, 1200.0, False, None, 0, True),  # a quarter of the pixels
                                       ("cpu", 2, 100.0, False, None, 0, False)]),
    (NODES[1:2], {}, 1920 * 1080, ["nvenc"], [("nvenc", 3, 300.0, False, None, 0, True)]),
    (NODES[1:2], {"nvenc": LabelConfig("nvenc", expected_fps=150, quality_rank=2, remote=True, bandwidth_mbps=50)},
     1920 * 1080, ["nvenc"], [("nvenc", 3, 150.0, True, 50, 2, True)]),
    ([REMOTE], {}, 1920 * 1080, None, [("nvenc", 3, 300.0, True, 200.0, 0, True)]),         # remote by node label
    ([{"NodeID": "x", "Resources": {"CPU": 1.0, "fpga": 1.0}}], {"fpga": LabelConfig("fpga")}, 1920 * 1080, None,
     [("fpga", 1, 60.0, False, None, 0, True), ("cpu", 1, 25.0, False, None, 0, False)]),  # not in the table: 60
])
def test_offers_for_the_router(nodes, config, pixels, labels, expected):
    got = offers(nodes, config, pixels=pixels, labels=labels)
    assert [(o.label, o.sessions, round(o.fps, 3), o.remote, o.bandwidth_mbps, o.quality_rank, o.hardware)
            for o in got] == expected


def test_offers_name_a_label_no_node_offers():
    with pytest.raises(ClusterError, match="offers no qsv .*it offers: cpu, nvenc"):
        offers(NODES[1:2], {}, pixels=1920 * 1080, labels=["qsv", "nvenc"])


def test_offers_carry_the_cost_terms_they_are_given():
    from montage_ray.spending.cost import Price

    price = Price(0.6, 0.09, "USD")
    asked = []

    def terms(label, cfg):
        asked.append((label, cfg))
        return {"price": price, "budget_left": 2.5, "unavailable": "backing off"} if label == "nvenc" else {}

    config = {"nvenc": LabelConfig("nvenc", remote=True, cost_per_hour=0.6)}
    got = {o.label: o for o in offers(NODES[1:2], config, pixels=1920 * 1080, terms=terms)}
    assert asked == [("nvenc", config["nvenc"]), ("cpu", None)]
    assert (got["nvenc"].price, got["nvenc"].budget_left, got["nvenc"].unavailable) == (price, 2.5, "backing off")
    assert (got["cpu"].price, got["cpu"].budget_left, got["cpu"].unavailable) == (None, None, None)
    assert offers(NODES[1:2], config, pixels=1920 * 1080)[0].price is None   # no terms: nothing priced
