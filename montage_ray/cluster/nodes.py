"""What the cluster offers: encoder placements, labels and the offers the router weighs (pure, no Ray calls).

Every function here reads the output of ``ray.nodes()`` (a list of dicts) and nothing else, so each one is
table-tested without a cluster. ``{"vaapi": 1}`` on a node means one VAAPI session there, ``CPU: 4`` four
CPU slots; a node carrying a provider's node label (:data:`~montage_ray.spending.providers.PROVIDERS`;
scripts/ray-start-node.sh sets the default one's with ``MONTAGE_RAY_REMOTE=1``) makes its labels remote::

    from montage_ray.cluster.nodes import offered_labels, offers, placements

    nodes = [{"NodeID": "ab12cd", "Alive": True, "NodeManagerAddress": "10.0.0.1",
              "Resources": {"CPU": 2.0, "vaapi": 1.0}}]
    offered_labels(nodes)                     # {'vaapi': 1, 'cpu': 2}
    [p.name for p in placements(nodes)]       # ['encoder:vaapi:10.0.0.1-ab12cd:0', 'encoder:cpu:...:0', ...]
    offers(nodes, {}, pixels=1920 * 1080)     # [Offer('vaapi', 1, 200.0, ...), Offer('cpu', 2, 25.0, ...)]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from montage_ray.encoders.backends import HARDWARE_LABELS, default_fps
from montage_ray.encoders.config import LabelConfig
from montage_ray.errors import ClusterError
from montage_ray.spending.providers import marked_by
from montage_ray.spending.routing import Offer

#: Pixels of the frame size that the backends' default speeds are given for (1080p).
REFERENCE_PIXELS = 1920 * 1080

Node = Mapping[str, Any]


@dataclass(frozen=True)
class Placement:
    """One encoder session to start: a label on a node."""

    label: str                 # "cpu" or a resource label
    node_id: str
    node_name: str
    index: int                 # n-th session of this label on this node
    node_cpus: int = 1         # CPUs of that node (CPU actors share them when a job has few segments)
    address: str = ""          # the node's address, as Ray knows it

    @property
    def name(self) -> str:
        return f"encoder:{self.label}:{self.node_name}:{self.index}"

    @property
    def node(self) -> str:
        """The node as the report, the metrics and ``montage-ray status`` name it (:func:`node_tag`)."""
        return node_tag(self.address or self.node_name.rsplit("-", 1)[0], self.node_id)


def node_tag(address: str, node_id: str) -> str:
    """How the report, every metric's ``node`` tag and ``montage-ray status`` name a node: its address as Ray
    knows it (hosts may share a hostname) and the first 8 hex digits of its id, ``10.0.0.1/1a2b3c4d``."""
    return f"{address}/{node_id[:8]}"


def _alive(node: Node) -> bool:
    return bool(node.get("Alive", node.get("alive", True)))


def placements(nodes: Iterable[Node], labels: Iterable[str] | None = None,
               extra_labels: Iterable[str] = ()) -> list[Placement]:
    """One placement per session each alive node offers.

    Hardware labels come first (they are usually fastest), then CPU slots. ``labels`` limits the labels;
    ``extra_labels`` are resource labels beyond the backend table (an encoders config may name them).
    """
    wanted = set(labels) if labels is not None else None
    known = list(HARDWARE_LABELS) + [x for x in extra_labels if x not in HARDWARE_LABELS and x != "cpu"]
    hardware: list[Placement] = []
    cpus: list[Placement] = []
    for node in nodes:
        if not _alive(node):
            continue
        resources = node.get("Resources", {})
        node_id = node.get("NodeID", "")
        address = node.get("NodeManagerAddress", "node")
        node_name = f"{address}-{node_id[:6]}"
        node_cpus = int(resources.get("CPU", 0))
        for label in known:
            if wanted is None or label in wanted:
                hardware += [Placement(label, node_id, node_name, i, node_cpus, address)
                             for i in range(int(resources.get(label, 0)))]
        if wanted is None or "cpu" in wanted:
            cpus += [Placement("cpu", node_id, node_name, i, node_cpus, address) for i in range(node_cpus)]
    return hardware + cpus


def offered_labels(nodes: Iterable[Node], extra_labels: Iterable[str] = ()) -> dict[str, int]:
    """{label: sessions} over the alive nodes (CPU slots under "cpu")."""
    counts: dict[str, int] = {}
    for p in placements(nodes, None, extra_labels):
        counts[p.label] = counts.get(p.label, 0) + 1
    return counts


def remote_labels(nodes: Iterable[Node]) -> dict[str, float | None]:
    """{resource label: link Mbit/s or None} for the labels that alive nodes marked remote offer: nodes that
    carry a provider's node label, the link speed from that provider's bandwidth label."""
    out: dict[str, float | None] = {}
    for node in nodes:
        tags = node.get("Labels") or {}
        provider = marked_by(tags)
        if not _alive(node) or provider is None:
            continue
        try:
            bandwidth: float | None = float(tags[provider.bandwidth_label])
        except (KeyError, ValueError):
            bandwidth = None
        for label in HARDWARE_LABELS:
            if node.get("Resources", {}).get(label, 0) > 0:
                out[label] = bandwidth if out.get(label) is None else out[label]
    return out


def remote_nodes(nodes: Iterable[Node], config: Mapping[str, LabelConfig]) -> dict[str, list[tuple[str, str]]]:
    """{remote label: [(node id, node address), ...]}: the alive nodes offering each label that is remote,
    by the encoders config or by the node's own label (the links worth measuring)."""
    nodes = [n for n in nodes if _alive(n)]
    marked = remote_labels(nodes)
    out: dict[str, list[tuple[str, str]]] = {}
    for label in sorted(set(marked) | {k for k, c in config.items() if c.remote}):
        for node in nodes:
            if node.get("Resources", {}).get(label, 0) > 0:
                out.setdefault(label, []).append((node.get("NodeID", ""), node.get("NodeManagerAddress", "")))
    return out


#: ``terms(label, its config)``: more fields of a label's Offer (price, budget left, a back-off), such as
#: :meth:`montage_ray.spending.budget.BudgetView.terms` gives from what it read before routing.
OfferTerms = Callable[[str, "LabelConfig | None"], Mapping[str, Any]]


def offers(nodes: Iterable[Node], config: Mapping[str, LabelConfig], *, pixels: int,
           labels: Iterable[str] | None = None, terms: OfferTerms | None = None,
           measured: Mapping[str, float] | None = None) -> list[Offer]:
    """What the router weighs: one :class:`~montage_ray.spending.routing.Offer` per label the cluster offers.

    Speeds are the encoders config's ``expected_fps``, else the backend table's default, scaled from 1080p
    to ``pixels``; remote comes from the config or the nodes' labels, a remote label's bandwidth from
    ``measured`` ({label: Mbit/s}, see :mod:`montage_ray.cluster.link`), else the config, else the nodes'
    labels, and the offer says which. ``labels`` limits the labels; ClusterError names a wanted label that
    no node offers. ``terms`` adds each label's cost terms (given, like ``measured``, not read here: this
    module stays pure).
    """
    nodes = list(nodes)
    offered = offered_labels(nodes, config)
    if labels is not None:
        unknown = set(labels) - set(offered)
        if unknown:
            raise ClusterError(f"the cluster offers no {', '.join(sorted(unknown))} "
                               f"(it offers: {', '.join(sorted(offered)) or 'nothing'})")
        offered = {k: v for k, v in offered.items() if k in set(labels)}
    scale = max(pixels / REFERENCE_PIXELS, 0.05)
    remotes = remote_labels(nodes)
    out = []
    for label, sessions in offered.items():
        cfg = config.get(label)
        fps = (cfg.expected_fps if cfg and cfg.expected_fps else default_fps(label)) / scale
        remote = bool(cfg and cfg.remote) or label in remotes
        bandwidth, source = None, ""
        for value, said in (((measured or {}).get(label), "measured"),
                            (cfg.bandwidth_mbps if cfg else None, "configured"),
                            (remotes.get(label), "node label")):
            if value:
                bandwidth, source = value, said
                break
        out.append(Offer(label, sessions, fps, remote=remote, bandwidth_mbps=bandwidth, bandwidth_source=source,
                         quality_rank=cfg.quality_rank if cfg else 0, hardware=label != "cpu",
                         **(terms(label, cfg) if terms else {})))
    return out
