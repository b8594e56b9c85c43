"""Who runs a remote or paid label: the provider table (data, as the backend table is for encoders).

A :class:`Provider` row holds what montage-ray needs to know about a cloud provider, and nothing else reads
those facts from anywhere but here: the Ray node labels that mark its nodes as reached over a slow link
(``scripts/ray-start-node.sh`` sets the default provider's), its texts that mean "not now" (capacity, rate
limit, quota: :mod:`~montage_ray.spending.quota` tells them from a broken encoder), how long to leave a
label out after one, and how it bills transfer. A label's prices stay in the encoders config, because one
provider rents many kinds of GPU::

    # encoders.yaml
    labels:
      nvenc: {backend: nvenc, remote: true, provider: cloud, cost_per_hour: 0.60, cost_per_gb: 0.09, currency: USD}

    from montage_ray.spending.providers import PROVIDERS, provider_of

    provider_of(config["nvenc"]).bytes_per_gb       # 1e9: transfer is billed in decimal gigabytes
    PROVIDERS["cloud"].node_label                   # 'montage.ai/remote'

A label belongs to the provider its config names (``provider:``); else, when its config makes it remote or
priced, to :data:`DEFAULT`; else to none (a local, free label). A node carrying a provider's node label
makes the labels it offers remote, with the link speed of the provider's bandwidth label.

A second provider is one more row of :data:`PROVIDERS` (and its own module only if it needs code).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

from montage_ray.encoders.config import LabelConfig
from montage_ray.errors import InputError


@dataclass(frozen=True)
class Provider:
    """One cloud provider: how its nodes are marked, what its refusals say, how it backs off and bills."""

    name: str
    node_label: str                  # a node whose label here is "true" is this provider's: its labels are remote
    bandwidth_label: str             # the node label giving the link's Mbit/s, when set
    refusals: tuple[tuple[str, re.Pattern[str]], ...] = ()  # (kind, pattern) of its "not now" texts, in order
    first_backoff: float = 60.0      # seconds a label is left out after a refusal ...
    max_backoff: float = 3600.0      # ... doubled on every refusal in a row, up to this
    bytes_per_gb: float = 1e9        # what it bills as one GB of transfer

    def next_backoff(self, previous: float | None) -> float:
        """Seconds to leave a label out after a refusal, given the last back-off (None: the first refusal)."""
        if not previous or previous <= 0:
            return self.first_backoff
        return min(self.max_backoff, 2 * previous)


#: Every provider montage-ray knows, by the name an encoders config gives as ``provider:``.
PROVIDERS: dict[str, Provider] = {
    "cloud": Provider(
        "cloud", node_label="montage.ai/remote", bandwidth_label="montage.ai/bandwidth-mbps",
        refusals=(
            ("capacity", re.compile(r"out of capacity|insufficient capacity|no capacity|capacity (is )?exhausted|"
                                    r"InsufficientInstanceCapacity|ZONE_RESOURCE_POOL_EXHAUSTED", re.I)),
            ("rate-limit", re.compile(r"rate.?limit|too many requests|HTTP(/[\d.]+)?:? ?429|\bthrottl(ed|ing)\b",
                                      re.I)),
            ("quota", re.compile(r"quota|limit exceeded", re.I)),
        )),
}

#: The provider of a remote or priced label whose config names none.
DEFAULT = "cloud"


def provider_named(name: str | None) -> Provider:
    """The row of ``name`` (None: :data:`DEFAULT`); InputError naming the known ones if there is none."""
    found = PROVIDERS.get(name or DEFAULT)
    if found is None:
        raise InputError(f"unknown provider {name!r} (known: {', '.join(PROVIDERS)})")
    return found


def provider_of(cfg: LabelConfig | None) -> Provider | None:
    """The provider that runs a configured label: the one it names, else :data:`DEFAULT` when it is remote
    or priced, else None (a local, free label)."""
    if cfg is None:
        return None
    if cfg.provider is not None:
        return provider_named(cfg.provider)
    priced = cfg.cost_per_hour is not None or cfg.cost_per_gb is not None or cfg.budget_per_month is not None
    return provider_named(DEFAULT) if cfg.remote or priced else None


def check_providers(config: Mapping[str, LabelConfig]) -> None:
    """Every provider the encoders config names is in the table (InputError: one line, exit 2)."""
    for label, cfg in config.items():
        if cfg.provider is not None and cfg.provider not in PROVIDERS:
            raise InputError(f"encoders config: {label!r} names unknown provider {cfg.provider!r} "
                             f"(known: {', '.join(PROVIDERS)})")


def marked_by(tags: Mapping[str, str]) -> Provider | None:
    """The provider whose node label a node's ``tags`` carry (``montage.ai/remote=true``), if any."""
    return next((p for p in PROVIDERS.values() if str(tags.get(p.node_label, "")).lower() == "true"), None)
