"""The lane's safety state on disk (lane.db): the remote mode, anti-passback memory and lasting counters.
Written by the lane thread before it acts, read back before the first scan after any restart."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from gate.contracts import Requested
from gate.core.sqlite import Owned

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

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn = Owned(path, setup, name=path.name)

    def mode(self) -> ModeRecord | None:
        """The requested mode on disk; ValueError if what is stored is no mode at all."""
        row = self._conn.db.execute("SELECT mode, set_by, set_at FROM mode WHERE id = 1").fetchone()
        return None if row is None else ModeRecord(Requested(row[0]), row[1], row[2])

    def set_mode(self, record: ModeRecord) -> None:
        self._conn.db.execute(
            "INSERT OR REPLACE INTO mode VALUES (1, ?, ?, ?)", (record.mode.value, record.set_by, record.set_at)
        )

    def trip(self) -> tuple[str | None, str | None] | None:
        """A bus's route and run as central last set them (they outlive a restart), or None."""
        row = self._conn.db.execute("SELECT route, run FROM trip WHERE id = 1").fetchone()
        return None if row is None else (row[0], row[1])

    def set_trip(self, route: str | None, run: str | None, at: float) -> None:
        self._conn.db.execute("INSERT OR REPLACE INTO trip VALUES (1, ?, ?, ?)", (route, run, at))

    def passed(self, token: str, at: float, window: float) -> None:
        """Remember a confirmed passage; entries older than `window` go at the same time."""
        with self._conn.transaction() as db:
            db.execute("INSERT OR REPLACE INTO passback VALUES (?, ?)", (token, at))
            db.execute("DELETE FROM passback WHERE passed_at < ?", (at - window,))

    def recent_passages(self, now: float, window: float) -> dict[str, float]:
        """token -> wall time of its last confirmed passage within `window` of `now`."""
        rows = self._conn.db.execute("SELECT token, passed_at FROM passback WHERE passed_at >= ?", (now - window,))
        return dict(rows.fetchall())

    def counter(self, name: str) -> int:
        row = self._conn.db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return 0 if row is None else int(row[0])

    def add(self, name: str, n: int = 1) -> int:
        db = self._conn.db
        db.execute(
            "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            (name, n),
        )
        return self.counter(name)

    def reset(self, name: str) -> None:
        self._conn.db.execute("DELETE FROM counters WHERE name = ?", (name,))

    def close(self) -> None:
        self._conn.close()
