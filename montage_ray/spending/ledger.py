"""The spending ledger: what each paid label cost per calendar month, per job, kept on the head node's disk.

The ledger is one SQLite file (:mod:`~montage_ray.spending.ledger_file`) on the machine that runs Ray's head:
``$MONTAGE_RAY_LEDGER`` there, else ``~/.local/state/montage-ray/ledger.sqlite``. It outlives every driver,
``ray stop``, a killed ledger actor and a restarted head pod (give the pod a volume there: deploy/k3s). Who
opens it:

- a **private** Ray (a job without ``--address``) runs on this machine, so its driver opens the file itself
  (:class:`~montage_ray.spending.ledger_file.LedgerFile`): every private job of the machine shares it;
- on a **cluster**, :class:`Ledger` sends each call to one small detached actor pinned to the head node
  (``montage-ledger-file`` in the ``montage-ray`` namespace), which opens the head's file. The actor keeps
  nothing of its own: killed and restarted, it reads the file again;
- ``montage-ray budget`` with no cluster running reads the file directly.

Both kinds have the same methods (``add``, ``back_off``, ``clear_back_off``, ``state``, ``month``,
``back_offs``, ``last_back_off``); :func:`open_ledger` picks one::

    import ray
    from montage_ray.spending.ledger import Ledger, Spend

    ray.init(address="auto")
    ledger = Ledger()                           # the head's file ($MONTAGE_RAY_LEDGER on the head)
    ledger.add(Spend(month="2026-11", label="nvenc", job_id="1a2b3c4d", seconds=95.0, nbytes=4.1e8,
                     cost=0.05, currency="USD"))
    ledger.spent("2026-11", "nvenc")            # 0.05 (+ what other jobs spent there this month)
    ledger.month("2026-11")["nvenc"]["jobs"]    # {'1a2b3c4d': {'seconds': 95.0, 'bytes': ..., ...}}

``$MONTAGE_RAY_LEDGER`` set in a driver's own environment names the file on the head for that driver's
calls (tests give each its own file this way); left unset, the head's setting holds.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from typing import Any

import ray

from montage_ray.errors import LedgerError
from montage_ray.spending.ledger_file import ENV, LedgerFile, Spend, default_path

__all__ = ["ENV", "HEAD_RESOURCE", "NAMESPACE", "ACTOR_NAME", "Ledger", "LedgerFile", "Spend", "default_path",
           "open_ledger"]

#: Where the ledger actor lives: its namespace and name.
NAMESPACE, ACTOR_NAME = "montage-ray", "montage-ledger-file"

#: A resource only Ray's head node has.
HEAD_RESOURCE = "node:__internal_head__"

#: The calls the actor serves (the methods of LedgerFile that a driver may use).
_CALLS = frozenset({"add", "back_off", "clear_back_off", "state", "month", "back_offs", "last_back_off"})


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=0)
class LedgerActor:
    """Opens the head node's ledger files and runs each call as one transaction there (one call at a time)."""

    def __init__(self) -> None:
        self._files: dict[str | None, LedgerFile] = {}

    def call(self, path: str | None, method: str, *args: Any) -> tuple[str, Any]:
        """("ok", the result) or ("error", the one line of a LedgerError)."""
        if method not in _CALLS:
            raise ValueError(f"no ledger call {method!r}")
        ledger = self._files.setdefault(path, LedgerFile(path))
        try:
            return "ok", getattr(ledger, method)(*args)
        except LedgerError as err:
            return "error", str(err)


class Ledger:
    """The cluster's ledger as seen from a driver (connect to Ray first): every call goes to the ledger actor
    on the head node. ``path``: a file on the head (default: ``$MONTAGE_RAY_LEDGER`` of this process if set,
    else the head's own setting)."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path or os.environ.get(ENV) or None
        self._handle: Any = None

    def _actor(self) -> Any:
        if self._handle is None:
            # on the head node: its disk holds the file; never a paid or remote node that may go away
            self._handle = LedgerActor.options(name=ACTOR_NAME, namespace=NAMESPACE, lifetime="detached",
                                               get_if_exists=True, resources={HEAD_RESOURCE: 0.001}).remote()
        return self._handle

    def add(self, spend: Spend, timeout: float = 60.0) -> float:
        """Record ``spend``; returns the label's total of that month."""
        return self._call("add", asdict(spend), timeout=timeout)

    def back_off(self, label: str, reason: str, seconds: float | None = None, timeout: float = 60.0,
                 provider: str | None = None) -> dict:
        """Leave ``label`` out of new jobs (see :meth:`LedgerFile.back_off`)."""
        return self._call("back_off", label, reason, seconds, provider, timeout=timeout)

    def clear_back_off(self, label: str, timeout: float = 60.0) -> bool:
        return self._call("clear_back_off", label, timeout=timeout)

    def state(self, month: str, now: float | None = None, create: bool = False, timeout: float = 60.0) -> dict:
        return self._call("state", month, now, create, timeout=timeout)

    def month(self, month: str, timeout: float = 60.0) -> dict[str, Any]:
        return self._call("month", month, timeout=timeout)

    def spent(self, month: str, label: str) -> float:
        return float(self.month(month).get(label, {}).get("cost", 0.0))

    def back_offs(self, now: float | None = None, timeout: float = 60.0) -> dict[str, dict[str, Any]]:
        return self._call("back_offs", now, timeout=timeout)

    def last_back_off(self, label: str, timeout: float = 60.0) -> float | None:
        return self._call("last_back_off", label, timeout=timeout)

    def _call(self, method: str, *args: Any, timeout: float) -> Any:
        """One call, waiting out a restart of the ledger actor (killed, or its worker died): a call made
        while it restarts fails at once and is sent again. A charge sent twice is kept once (its id)."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError

        deadline = time.monotonic() + timeout
        while True:
            try:
                status, value = ray.get(self._actor().call.remote(self.path, method, *args),
                                        timeout=max(1.0, deadline - time.monotonic()))
                break
            except (ActorUnavailableError, ActorDiedError) as err:
                if time.monotonic() > deadline:
                    raise
                if isinstance(err, ActorDiedError):
                    self._handle = None  # gone for good (killed without restart): a new one opens the file
                time.sleep(0.2)
        if status == "error":
            raise LedgerError(value)
        return value


def open_ledger(private: bool, path: str | None = None) -> Ledger | LedgerFile:
    """The ledger a job uses: this machine's file for a private Ray (the driver is on the head), else the
    cluster's, through the actor on its head."""
    return LedgerFile(path) if private else Ledger(path)
