"""The spending ledger's file: one SQLite database (WAL mode, standard library only) on the head node's disk.

Every charge is a row that is only ever added (``charges``; triggers refuse an UPDATE or DELETE), and so is
every provider back-off and its clearing (``back_offs``): a month's spending and a label's back-off are
queries over those rows. Each change is one ``BEGIN IMMEDIATE`` transaction, so any number of processes of
this machine may write at once and lose nothing (SQLite's lock serialises them; WAL lets readers go on
meanwhile); each charge carries an id, so a charge sent twice (a reply lost, the call retried) is kept once.

Where the file is: ``$MONTAGE_RAY_LEDGER``, else ``$XDG_STATE_HOME/montage-ray/ledger.sqlite``, else
``~/.local/state/montage-ray/ledger.sqlite`` (:func:`default_path`). It must be on a local disk (SQLite's
WAL does not work over NFS/SMB). A file that is there but is not a readable montage-ray ledger is a
:class:`~montage_ray.errors.LedgerError`, never replaced: nothing here starts a ledger over from zero
where one was::

    from montage_ray.spending.ledger_file import LedgerFile, Spend

    ledger = LedgerFile("/var/lib/montage-ray/ledger.sqlite")
    ledger.add(Spend("2026-11", "nvenc", "1a2b3c4d", seconds=95.0, nbytes=4.1e8, cost=0.05))   # month total
    ledger.month("2026-11")["nvenc"]["jobs"]["1a2b3c4d"]   # {'cost': 0.05, 'seconds': 95.0, ..., 'entries': 1}
    ledger.back_off("nvenc", "session-limit")              # {'until': ..., 'seconds': 60.0, 'reason': ...}
    ledger.state("2026-11")                                # {'month': {...}, 'back_offs': {...}}: one read
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator

from montage_ray.errors import LedgerError, first_line
from montage_ray.spending.quota import next_backoff

#: The setting that moves the ledger (read where the ledger is written: the head node, or this machine).
ENV = "MONTAGE_RAY_LEDGER"

#: ``PRAGMA application_id`` of a montage-ray ledger ("MRLG"), and the version of its tables.
APPLICATION_ID, SCHEMA_VERSION = 0x4D524C47, 1

#: Costs are kept as whole millionths of their currency, so that a month's total is exact.
MICROS = 1_000_000

#: Seconds a write waits for another process's transaction before it gives up.
BUSY_SECONDS = 30.0

SCHEMA = f"""
CREATE TABLE charges (
    id INTEGER PRIMARY KEY,            -- order of arrival
    charge_id TEXT NOT NULL UNIQUE,    -- the sender's id: a charge sent twice is kept once
    at REAL NOT NULL,                  -- when it was recorded (epoch seconds)
    month TEXT NOT NULL,               -- YYYY-MM (UTC) of the job's start
    label TEXT NOT NULL,
    job_id TEXT NOT NULL,
    seconds REAL NOT NULL,
    bytes REAL NOT NULL,
    cost_micros INTEGER NOT NULL,      -- the cost in millionths of the currency: sums are exact
    currency TEXT NOT NULL
);
CREATE INDEX charges_by_month ON charges (month, label);
CREATE TABLE back_offs (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    label TEXT NOT NULL,
    seconds REAL NOT NULL,             -- 0: cleared (the label worked again)
    until REAL NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX back_offs_by_label ON back_offs (label, id);
CREATE TRIGGER charges_kept_1 BEFORE UPDATE ON charges BEGIN SELECT RAISE(ABORT, 'charges are never changed'); END;
CREATE TRIGGER charges_kept_2 BEFORE DELETE ON charges BEGIN SELECT RAISE(ABORT, 'charges are never removed'); END;
CREATE TRIGGER back_offs_kept_1 BEFORE UPDATE ON back_offs
    BEGIN SELECT RAISE(ABORT, 'back-offs are never changed'); END;
CREATE TRIGGER back_offs_kept_2 BEFORE DELETE ON back_offs
    BEGIN SELECT RAISE(ABORT, 'back-offs are never removed'); END;
PRAGMA application_id = {APPLICATION_ID};
PRAGMA user_version = {SCHEMA_VERSION};
"""


def default_path() -> str:
    """This machine's ledger file: ``$MONTAGE_RAY_LEDGER``, else the user's state folder."""
    if os.environ.get(ENV):
        return os.path.abspath(os.path.expanduser(os.environ[ENV]))
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "montage-ray", "ledger.sqlite")


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
    charge_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # the same charge sent again adds nothing


class LedgerFile:
    """The ledger in one SQLite file; every method is one transaction, safe beside other processes."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = os.path.abspath(os.path.expanduser(os.fspath(path))) if path else default_path()
        self._conn: sqlite3.Connection | None = None
        self._inode: tuple[int, int] | None = None

    # -- writes -----------------------------------------------------------------------------------------
    def add(self, spend: Spend | dict[str, Any]) -> float:
        """Record ``spend`` (once, however often it is sent); returns its label's total for that month."""
        s = spend if isinstance(spend, dict) else spend.__dict__
        with self._transaction(write=True) as db:
            db.execute("INSERT OR IGNORE INTO charges (charge_id, at, month, label, job_id, seconds, bytes, "
                       "cost_micros, currency) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       (s["charge_id"], time.time(), s["month"], s["label"], s["job_id"], float(s["seconds"]),
                        float(s["nbytes"]), round(float(s["cost"]) * MICROS), s["currency"]))
            return db.execute("SELECT COALESCE(SUM(cost_micros), 0) FROM charges WHERE month = ? AND label = ?",
                              (s["month"], s["label"])).fetchone()[0] / MICROS

    def back_off(self, label: str, reason: str, seconds: float | None = None,
                 provider: str | None = None) -> dict[str, Any]:
        """Leave ``label`` out of new jobs for ``seconds`` (default: the last back-off doubled by the rule of
        its ``provider``, see :func:`~montage_ray.spending.quota.next_backoff`): a provider refused it for
        ``reason``."""
        with self._transaction(write=True) as db:
            if seconds is None:
                seconds = next_backoff(_last_back_off(db, label), provider)
            now = time.time()
            db.execute("INSERT INTO back_offs (at, label, seconds, until, reason) VALUES (?, ?, ?, ?, ?)",
                       (now, label, float(seconds), now + seconds, reason))
        return {"until": now + seconds, "seconds": float(seconds), "reason": reason}

    def clear_back_off(self, label: str) -> bool:
        """The label worked again: its next refusal starts from the first back-off. False if it had none."""
        with self._transaction(write=True) as db:
            if _last_back_off(db, label) is None:
                return False
            now = time.time()
            db.execute("INSERT INTO back_offs (at, label, seconds, until, reason) VALUES (?, ?, 0, ?, ?)",
                       (now, label, now, "worked again"))
        return True

    # -- reads ------------------------------------------------------------------------------------------
    def state(self, month: str, now: float | None = None, create: bool = False) -> dict[str, Any]:
        """``{"month": month(month), "back_offs": back_offs(now), "path": the file}``, read at one instant.
        ``create``: make the file if there is none yet (a job with paid labels: a ledger that cannot be made is
        an error)."""
        with self._transaction(create=create) as db:
            return {"month": _month(db, month) if db else {}, "back_offs": _back_offs(db, now) if db else {},
                    "path": self.path}

    def month(self, month: str) -> dict[str, Any]:
        """{label: {cost, seconds, bytes, currency, jobs: {job id: {cost, seconds, bytes, entries, last}}}}."""
        return self.state(month)["month"]

    def spent(self, month: str, label: str) -> float:
        return float(self.month(month).get(label, {}).get("cost", 0.0))

    def back_offs(self, now: float | None = None) -> dict[str, dict[str, Any]]:
        """{label: {until, seconds, reason}} of the labels still backing off (now=0: every one not cleared)."""
        with self._transaction() as db:
            return _back_offs(db, now) if db else {}

    def last_back_off(self, label: str) -> float | None:
        """The length of the label's last back-off, expired or not (None once cleared)."""
        with self._transaction() as db:
            return _last_back_off(db, label) if db else None

    def exists(self) -> bool:
        return os.path.lexists(self.path)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # -- the file ---------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _transaction(self, write: bool = False, create: bool = False) -> Iterator[sqlite3.Connection | None]:
        """One transaction on the open file (None for a read of a ledger not made yet); every SQLite
        failure becomes one LedgerError line."""
        try:
            db = self._open(create=write or create)
            if db is None:
                yield None
                return
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield db
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except (sqlite3.Error, OSError) as err:
            self.close()
            raise LedgerError(f"the spending ledger {self.path} cannot be {'written' if write else 'read'}: "
                              f"{_why(err)}") from None

    def _open(self, create: bool) -> sqlite3.Connection | None:
        try:
            st = os.stat(self.path)
        except (FileNotFoundError, NotADirectoryError):
            if os.path.lexists(self.path):
                raise LedgerError(f"the spending ledger {self.path} is a broken link") from None
            self.close()  # a ledger open here was removed: never write on into the removed file
            if not create:
                return None
            try:
                self._create()
            except (sqlite3.Error, OSError) as err:
                raise LedgerError(f"the spending ledger {self.path} cannot be made: {_why(err)}") from None
            st = os.stat(self.path)
        if self._conn is not None and self._inode == (st.st_dev, st.st_ino):
            return self._conn
        self.close()
        conn = sqlite3.connect(self.path, timeout=BUSY_SECONDS, isolation_level=None, check_same_thread=False)
        try:
            self._check(conn, st.st_size)
        except BaseException:
            conn.close()
            raise
        self._conn, self._inode = conn, (st.st_dev, st.st_ino)
        return conn

    def _check(self, conn: sqlite3.Connection, size: int) -> None:
        """The file is a montage-ray ledger of a version this code reads, whole, in WAL mode."""
        app = conn.execute("PRAGMA application_id").fetchone()[0]
        if app != APPLICATION_ID:
            what = "an empty file" if size == 0 else "another program's database"
            raise LedgerError(f"the spending ledger {self.path} is not a montage-ray ledger ({what}); "
                              "move it away only if no spending was recorded in it")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise LedgerError(f"the spending ledger {self.path} was written by a newer montage-ray "
                              f"(version {version}); upgrade montage-ray here")
        check = conn.execute("PRAGMA quick_check").fetchone()[0]
        if check != "ok":
            raise LedgerError(f"the spending ledger {self.path} is damaged ({check})")
        conn.execute("PRAGMA synchronous = FULL")  # a charge reported as recorded survives a power cut

    def _create(self) -> None:
        """A new, empty ledger at ``path``: made whole under a temporary name, then linked into place, so a
        file at ``path`` is always a complete ledger (a crash leaves none, never an empty one)."""
        folder = os.path.dirname(self.path)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".ledger-", suffix=".new", dir=folder)  # mode 0600
        os.close(fd)
        try:
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode = WAL")  # kept in the file: every later opener uses WAL
                conn.executescript(f"BEGIN; {SCHEMA} COMMIT;")
            finally:
                conn.close()
            with contextlib.suppress(FileExistsError):  # another process made it first: theirs stands
                os.link(tmp, self.path)
            dir_fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        finally:
            for name in (tmp, tmp + "-wal", tmp + "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)


def _why(err: BaseException) -> str:
    """What went wrong, without the path again (an OSError's own text repeats it)."""
    return err.strerror if isinstance(err, OSError) and err.strerror else first_line(err)


def _month(db: sqlite3.Connection, month: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rows = db.execute("SELECT label, job_id, SUM(cost_micros), TOTAL(seconds), TOTAL(bytes), COUNT(*), MAX(at) "
                      "FROM charges WHERE month = ? GROUP BY label, job_id ORDER BY label, MIN(id)", (month,))
    micros: dict[str, int] = {}
    for label, job_id, cost, seconds, nbytes, entries, last in rows:
        entry = out.setdefault(label, {"cost": 0.0, "seconds": 0.0, "bytes": 0.0, "jobs": {}})
        entry["jobs"][job_id] = {"cost": cost / MICROS, "seconds": seconds, "bytes": nbytes, "entries": entries,
                                 "last": last}
        micros[label] = micros.get(label, 0) + cost
        entry["cost"] = micros[label] / MICROS
        entry["seconds"] += seconds
        entry["bytes"] += nbytes
    for label, currency in db.execute(  # the currency of each label's latest charge
            "SELECT label, currency FROM charges WHERE id IN (SELECT MAX(id) FROM charges WHERE month = ? "
            "GROUP BY label)", (month,)):
        out[label]["currency"] = currency
    return out


def _back_offs(db: sqlite3.Connection, now: float | None) -> dict[str, dict[str, Any]]:
    now = time.time() if now is None else now
    rows = db.execute("SELECT label, until, seconds, reason FROM back_offs WHERE id IN "
                      "(SELECT MAX(id) FROM back_offs GROUP BY label)")
    return {label: {"until": until, "seconds": seconds, "reason": reason}
            for label, until, seconds, reason in rows if seconds > 0 and until > now}


def _last_back_off(db: sqlite3.Connection, label: str) -> float | None:
    row = db.execute("SELECT seconds FROM back_offs WHERE label = ? ORDER BY id DESC LIMIT 1", (label,)).fetchone()
    return row[0] if row and row[0] > 0 else None
