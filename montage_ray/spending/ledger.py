"""The spending ledger: what each paid label cost per calendar month, per job, seen by every driver.

One small **detached named actor** per cluster (``montage-ledger`` in the ``montage-ray`` namespace) owns
the ledger: Ray runs its methods one at a time, so two jobs recording at once can never lose an update.
After every change it writes the whole ledger to Ray's internal KV store (the GCS), so it outlives the
driver that created it, and a restarted ledger actor (its node died) starts from what was stored. Reads
come straight from the KV store and start nothing. Besides spending it keeps each label's provider
**back-off** (a quota or rate-limit refusal: leave the label out until then)::

    import ray
    from montage_ray.spending.ledger import Ledger, Spend

    ray.init(address="auto")
    ledger = Ledger()
    ledger.add(Spend(month="2026-11", label="nvenc", job_id="1a2b3c4d", seconds=95.0, nbytes=4.1e8,
                     cost=0.05, currency="USD"))
    ledger.spent("2026-11", "nvenc")            # 0.05 (+ what other jobs spent there this month)
    ledger.month("2026-11")["nvenc"]["jobs"]    # {'1a2b3c4d': {'seconds': 95.0, 'bytes': ..., ...}}
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import ray

#: Where the ledger lives: the actor's namespace and name, and the internal KV namespace of its copy.
NAMESPACE, DEFAULT_NAME = "montage-ray", "montage-ledger"

#: A resource only Ray's head node has.
HEAD_RESOURCE = "node:__internal_head__"


@dataclass(frozen=True)
class Spend:
    """One job's use of one paid label."""

    month: str          # YYYY-MM (UTC), see montage_ray.spending.cost.month_of
    label: str
    job_id: str
    seconds: float      # busy seconds billed there
    nbytes: float       # bytes moved to and from it
    cost: float
    currency: str = "USD"


def _kv_key(name: str) -> str:
    return f"ledger/{name}"


def _kv_load(name: str) -> dict[str, Any]:
    from ray.experimental import internal_kv

    raw = internal_kv._internal_kv_get(_kv_key(name), namespace=NAMESPACE)
    state = json.loads(raw) if raw else {}
    state.setdefault("months", {})
    state.setdefault("backoff", {})
    return state


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class LedgerActor:
    """Serialises every change to the ledger and stores it in the internal KV after each one."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._state = _kv_load(name)

    def _store(self) -> None:
        from ray.experimental import internal_kv

        internal_kv._internal_kv_put(_kv_key(self._name), json.dumps(self._state), overwrite=True,
                                     namespace=NAMESPACE)

    def add(self, spend: dict[str, Any]) -> float:
        """Add one job's spend; returns the label's total for that month."""
        label = self._state["months"].setdefault(spend["month"], {}).setdefault(
            spend["label"], {"cost": 0.0, "seconds": 0.0, "bytes": 0.0, "currency": spend["currency"], "jobs": {}})
        job = label["jobs"].setdefault(spend["job_id"], {"cost": 0.0, "seconds": 0.0, "bytes": 0.0, "entries": 0})
        for key, value in (("cost", spend["cost"]), ("seconds", spend["seconds"]), ("bytes", spend["nbytes"])):
            job[key] += value
            label[key] += value
        job["entries"] += 1
        job["last"] = time.time()
        self._store()
        return label["cost"]

    def back_off(self, label: str, seconds: float, reason: str) -> dict[str, Any]:
        entry = {"until": time.time() + seconds, "seconds": seconds, "reason": reason}
        self._state["backoff"][label] = entry
        self._store()
        return entry

    def clear_back_off(self, label: str) -> None:
        if self._state["backoff"].pop(label, None) is not None:
            self._store()


class Ledger:
    """The cluster's ledger as seen from a driver (connect to Ray first)."""

    def __init__(self, name: str = DEFAULT_NAME) -> None:
        self.name = name
        self._handle: Any = None

    def _actor(self) -> Any:
        if self._handle is None:
            # on the head node: never on a paid or remote node that may go away
            self._handle = LedgerActor.options(name=self.name, namespace=NAMESPACE, lifetime="detached",
                                               get_if_exists=True, resources={HEAD_RESOURCE: 0.001}
                                               ).remote(self.name)
        return self._handle

    # -- writes (through the actor: one at a time) -------------------------------------------------
    def add(self, spend: Spend, timeout: float = 60.0) -> float:
        """Record ``spend``; returns the label's total of that month."""
        return self._call("add", asdict(spend), timeout=timeout)

    def back_off(self, label: str, seconds: float, reason: str, timeout: float = 60.0) -> dict[str, Any]:
        """Leave ``label`` out of jobs for ``seconds`` (a provider refused it for ``reason``)."""
        return self._call("back_off", label, seconds, reason, timeout=timeout)

    def clear_back_off(self, label: str, timeout: float = 60.0) -> None:
        self._call("clear_back_off", label, timeout=timeout)

    def _call(self, method: str, *args: Any, timeout: float) -> Any:
        """One update, waiting out a restart of the ledger actor (its node went away, or it was killed):
        a call made while it restarts fails at once with ActorUnavailableError and is sent again. A reply
        lost after the update was stored would count it twice: the ledger errs towards spending more."""
        from ray.exceptions import ActorUnavailableError

        deadline = time.monotonic() + timeout
        while True:
            try:
                return ray.get(getattr(self._actor(), method).remote(*args),
                               timeout=max(1.0, deadline - time.monotonic()))
            except ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    # -- reads (from the stored copy: start nothing) --------------------------------------------------
    def month(self, month: str) -> dict[str, Any]:
        """{label: {cost, seconds, bytes, currency, jobs: {job id: {cost, seconds, bytes, entries}}}}."""
        return _kv_load(self.name)["months"].get(month, {})

    def spent(self, month: str, label: str) -> float:
        return float(self.month(month).get(label, {}).get("cost", 0.0))

    def back_offs(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """{label: {until, seconds, reason}} for the labels still backing off (all recorded ones with now=0)."""
        now = time.time() if now is None else now
        return {k: v for k, v in _kv_load(self.name)["backoff"].items() if v["until"] > now}

    def last_back_off(self, label: str) -> float | None:
        """The length of the label's last back-off, expired or not (for doubling it)."""
        entry = _kv_load(self.name)["backoff"].get(label)
        return entry["seconds"] if entry else None
