"""The lane's safety state on disk (lane.db): the remote mode, anti-passback memory and lasting counters.
Written by the lane thread before it acts, read back before the first scan after any restart.

Every change to safety state (the mode, a passage) bumps a sequence number in the same transaction and then
seals it (`lane.db.seal`, gate.core.seal): at start, a lane.db that holds less than its seal (a torn
write-ahead log, a rolled-back or replaced file) cannot prove its mode or its passages (`unproven`)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from gate.contracts import Requested
from gate.core import reserve
from gate.core.faults import Faults
from gate.core.seal import SealDamaged, read_seal, write_seal
from gate.core.sqlite import Owned

SEQ = "safety_seq"  # the counter every safety change bumps

_SCHEMA = """
CREATE TABLE IF NOT EXISTS mode (id INTEGER PRIMARY KEY CHECK (id = 1), mode TEXT NOT NULL, set_by TEXT NOT NULL,
                                 set_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS passback (token TEXT PRIMARY KEY, passed_at REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS trip (id INTEGER PRIMARY KEY CHECK (id = 1), route TEXT, run TEXT, set_at REAL NOT NULL);
"""


def setup(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # who may pass is on disk before it is acted on
    db.executescript(_SCHEMA)


@dataclass(frozen=True)
class ModeRecord:
    mode: Requested
    set_by: str
    set_at: float  # wall time


class LaneState:
    """Owned by the lane thread."""

    def __init__(self, path: Path, faults: Faults | None = None) -> None:
        """A seal that cannot be written (a full disk) is a fault episode of `faults` (logged once, alarmed,
        retried with the next change): the change itself is stored, and a lane.db ahead of its seal still
        proves itself. Without `faults` it raises."""
        self.path = path
        self._conn = Owned(path, setup, "lane", name=path.name)
        self._faults = faults

    def unproven(self) -> str | None:
        """None if lane.db holds at least what its seal says; else what is wrong (then neither the mode nor the
        passages can be trusted)."""
        try:
            facts = read_seal(self.path)
        except SealDamaged as exc:
            return str(exc)
        seq = self.counter(SEQ)
        if facts is None:
            return None if seq == 0 else f"{self.path.name} has {seq} safety changes but no seal"
        sealed = int(facts.get("seq", 0))
        if seq < sealed:
            return f"{self.path.name} holds safety change {seq} of {sealed} sealed: changes were lost"
        if seq == sealed and facts.get("mode") != self._mode_value():
            return f"{self.path.name}'s mode {self._mode_value()} is not the sealed {facts.get('mode')}"
        return None

    def _mode_value(self) -> str | None:
        row = self._conn.db.execute("SELECT mode FROM mode WHERE id = 1").fetchone()
        return None if row is None else str(row[0])

    def _bump(self, db: sqlite3.Connection) -> None:
        db.execute("INSERT INTO counters VALUES (?, 1) ON CONFLICT(name) DO UPDATE SET value = value + 1", (SEQ,))

    def _seal(self) -> None:
        seal = partial(write_seal, self.path, {"seq": self.counter(SEQ), "mode": self._mode_value()})
        write = partial(reserve.write, self.path, seal)
        if self._faults is None:
            write()
        else:
            self._faults.run(f"sealing {self.path.name}", write)

    def mode(self) -> ModeRecord | None:
        """The requested mode on disk; ValueError if what is stored is no mode at all."""
        row = self._conn.db.execute("SELECT mode, set_by, set_at FROM mode WHERE id = 1").fetchone()
        return None if row is None else ModeRecord(Requested(row[0]), row[1], row[2])

    def _write(self, fn: Callable[[sqlite3.Connection], object]) -> None:
        """One transaction, under the state directory's reserve: safety writes succeed on a full disk."""

        def once() -> None:
            with self._conn.transaction() as db:
                fn(db)

        reserve.write(self.path, once)

    def set_mode(self, record: ModeRecord) -> None:
        def store(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT OR REPLACE INTO mode VALUES (1, ?, ?, ?)", (record.mode.value, record.set_by, record.set_at)
            )
            self._bump(db)

        self._write(store)
        self._seal()

    def trip(self) -> tuple[str | None, str | None] | None:
        """A bus's route and run as central last set them (they outlive a restart), or None."""
        row = self._conn.db.execute("SELECT route, run FROM trip WHERE id = 1").fetchone()
        return None if row is None else (row[0], row[1])

    def set_trip(self, route: str | None, run: str | None, at: float) -> None:
        self._write(lambda db: db.execute("INSERT OR REPLACE INTO trip VALUES (1, ?, ?, ?)", (route, run, at)))

    def passed(self, token: str, at: float, window: float) -> None:
        """Remember a confirmed passage; entries older than `window` go at the same time."""

        def store(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO passback VALUES (?, ?)", (token, at))
            db.execute("DELETE FROM passback WHERE passed_at < ?", (at - window,))
            self._bump(db)

        self._write(store)
        self._seal()

    def recent_passages(self, now: float, window: float) -> dict[str, float]:
        """token -> wall time of its last confirmed passage within `window` of `now`."""
        rows = self._conn.db.execute("SELECT token, passed_at FROM passback WHERE passed_at >= ?", (now - window,))
        return dict(rows.fetchall())

    def counter(self, name: str) -> int:
        row = self._conn.db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return 0 if row is None else int(row[0])

    def add(self, name: str, n: int = 1) -> int:
        self._write(
            lambda db: db.execute(
                "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
                (name, n),
            )
        )
        return self.counter(name)

    def hand_over(self) -> None:
        """The explicit hand-over (its owner has ended): the next thread to use lane.db owns it."""
        self._conn.release()

    def close(self) -> None:
        self._conn.close()
