"""What encoding on a paid label costs: pure pricing functions (no Ray here), table-tested.

A paid label (the cloud GPU) is billed ``cost_per_hour`` while the job's actors there are busy, plus
``cost_per_gb`` for what travels over the link; a label may also have a monthly budget. Amounts are plain
floats in the label's currency; :func:`money` writes them for people::

    from montage_ray.spending.cost import Price, charge, money, month_of

    price = Price(cost_per_hour=0.60, cost_per_gb=0.09, currency="USD")
    charge(price, seconds=1800, nbytes=2e9)     # 0.30 + 0.18 = 0.48
    money(0.48, "USD")                          # '$0.48'
    month_of(1764547200.0)                      # '2025-12' (calendar month, UTC)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable

#: Currency symbols written before the amount; any other currency is written after it ("0.42 CHF").
SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£"}


@dataclass(frozen=True)
class Price:
    """What one label costs: per hour busy, per GB moved, in ``currency``; a GB is ``bytes_per_gb`` as its
    provider bills it (:attr:`~montage_ray.spending.providers.Provider.bytes_per_gb`; decimal by default)."""

    cost_per_hour: float = 0.0
    cost_per_gb: float = 0.0
    currency: str = "USD"
    bytes_per_gb: float = 1e9

    @property
    def free(self) -> bool:
        return not self.cost_per_hour and not self.cost_per_gb


def charge(price: Price, seconds: float, nbytes: float) -> float:
    """The cost of ``seconds`` busy and ``nbytes`` moved at ``price`` (never negative)."""
    return max(0.0, seconds) / 3600 * price.cost_per_hour + max(0.0, nbytes) / price.bytes_per_gb * price.cost_per_gb


def busy_seconds(spans: Iterable[tuple[float, float]]) -> float:
    """Seconds covered by at least one ``(start, seconds)`` span: sessions busy at once are billed once."""
    total, end = 0.0, float("-inf")
    for start, length in sorted((s, max(0.0, n)) for s, n in spans):
        stop = start + length
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def money(amount: float, currency: str = "USD") -> str:
    """``$0.42``, ``€1.50``, ``0.42 CHF``: two decimals (a third below one cent, so small jobs show)."""
    text = f"{amount:.2f}" if amount == 0 or abs(amount) >= 0.01 else f"{amount:.3f}"
    symbol = SYMBOLS.get(currency)
    return f"{symbol}{text}" if symbol else f"{text} {currency}"


def month_of(epoch: float | None = None) -> str:
    """The calendar month (UTC) of ``epoch`` (default: now) as ``YYYY-MM``: the ledger's and budget's key."""
    return time.strftime("%Y-%m", time.gmtime(time.time() if epoch is None else epoch))
