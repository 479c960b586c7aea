"""The durable check-in outbox: SQLite (WAL, synchronous=FULL); a row goes only after its PUBACK."""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from gate.config import OutboxSection
from gate.errors import OutboxFull
from gate.sqlite import Owned

log = logging.getLogger(__name__)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL,
    topic TEXT NOT NULL, qos INTEGER NOT NULL DEFAULT 1, payload BLOB NOT NULL
);
"""


def _setup(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # each commit is on disk before we open the relay
    db.executescript(_SCHEMA)


class Outbox:
    """Two connections, each owned by one thread: the lane appends, the drainer fetches and deletes.
    The depth is derived from counters that each side alone increments, so no lock is shared."""

    def __init__(self, path: Path, cfg: OutboxSection | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.cfg = path, cfg or OutboxSection()
        self._writer = Owned(path, _setup, name=f"{path.name} (writer)")
        self._reader = Owned(path, _setup, name=f"{path.name} (reader)")
        probe = sqlite3.connect(path, timeout=10)
        try:
            _setup(probe)
            self._initial = int(probe.execute("SELECT count(*) FROM outbox").fetchone()[0])
        finally:
            probe.close()
        self.appended = self.dropped = 0  # the writer's counters
        self.acked = 0  # the reader's counter
        self._appends = 0
        self._disk_low = False

    @property
    def depth(self) -> int:
        return self._initial + self.appended - self.dropped - self.acked

    def free_mb(self) -> float:
        st = os.statvfs(self.path.parent)
        return st.f_bavail * st.f_frsize / 1e6

    @property
    def full(self) -> bool:
        return self.depth >= self.cfg.max_events or self._disk_low

    def append(self, event_id: str, topic: str, payload: bytes, qos: int = 1) -> int:
        """The lane thread: commit one event durably; raise OutboxFull only if SQLite itself cannot write."""
        try:
            cur = self._writer.db.execute(
                "INSERT INTO outbox (event_id, topic, qos, payload) VALUES (?, ?, ?, ?)",
                (event_id, topic, qos, payload),
            )
        except sqlite3.OperationalError as exc:
            raise OutboxFull(f"outbox {self.path}: cannot write ({exc})") from exc
        self.appended += 1
        self._appends += 1
        if self._appends % 256 == 1:
            self._disk_low = self.free_mb() < self.cfg.min_free_mb
        if self.full and self.cfg.on_full == "drop_oldest":
            self._drop_oldest()
        return int(cur.lastrowid or 0)

    def _drop_oldest(self) -> None:
        excess = max(1, self.depth - self.cfg.max_events + 1)
        with self._writer.transaction() as db:
            before = db.total_changes
            db.execute("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)", (excess,))
            gone = db.total_changes - before
        self.dropped += gone
        log.critical("outbox full: dropped the %d oldest undelivered events (%d in all)", gone, self.dropped)

    def fetch(self, after: int, limit: int) -> list[tuple[int, str, str, int, bytes]]:
        """The drainer: up to `limit` rows with seq > after, oldest first: (seq, event_id, topic, qos, payload)."""
        return self._reader.db.execute(
            "SELECT seq, event_id, topic, qos, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()

    def ack(self, seqs: Iterable[int]) -> int:
        """The drainer: delete acknowledged rows in one transaction; returns how many went."""
        batch = [(s,) for s in seqs]
        if not batch:
            return 0
        with self._reader.transaction() as db:
            before = db.total_changes
            db.executemany("DELETE FROM outbox WHERE seq = ?", batch)
            gone = db.total_changes - before
        self.acked += gone
        return gone

    def close(self) -> None:
        self._writer.close()
        self._reader.close()
