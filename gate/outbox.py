"""The durable check-in outbox: SQLite (WAL, synchronous=FULL); a row goes only after its PUBACK."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from gate.config import OutboxSection
from gate.errors import OutboxFull

log = logging.getLogger(__name__)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL,
    topic TEXT NOT NULL, qos INTEGER NOT NULL DEFAULT 1, payload BLOB NOT NULL
);
"""


class Outbox:
    """Thread-safe: one connection behind a lock (appends from the scan loop, acks from the drainer)."""

    def __init__(self, path: Path, cfg: OutboxSection | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.cfg = path, cfg or OutboxSection()
        self._db = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # each commit is on disk before we open the relay
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._depth = self._db.execute("SELECT count(*) FROM outbox").fetchone()[0]
        self.dropped = 0
        self._appends = 0
        self._disk_low = False

    @property
    def depth(self) -> int:
        return int(self._depth)

    def free_mb(self) -> float:
        st = os.statvfs(self.path.parent)
        return st.f_bavail * st.f_frsize / 1e6

    @property
    def full(self) -> bool:
        return self._depth >= self.cfg.max_events or self._disk_low

    def append(self, event_id: str, topic: str, payload: bytes, qos: int = 1) -> int:
        """Commit one event durably; raise OutboxFull only if SQLite itself cannot write."""
        with self._lock:
            try:
                cur = self._db.execute(
                    "INSERT INTO outbox (event_id, topic, qos, payload) VALUES (?, ?, ?, ?)",
                    (event_id, topic, qos, payload),
                )
            except sqlite3.OperationalError as exc:
                raise OutboxFull(f"outbox {self.path}: cannot write ({exc})") from exc
            self._depth += 1
            self._appends += 1
            if self._appends % 256 == 1:
                self._disk_low = self.free_mb() < self.cfg.min_free_mb
            if self.full and self.cfg.on_full == "drop_oldest":
                self._drop_oldest()
            return int(cur.lastrowid or 0)

    def _drop_oldest(self) -> None:
        excess = max(1, self._depth - self.cfg.max_events + 1)
        self._db.execute("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)",
                         (excess,))  # fmt: skip
        self._depth -= excess
        self.dropped += excess
        log.critical("outbox full: dropped the %d oldest undelivered events (%d in all)", excess, self.dropped)

    def fetch(self, after: int, limit: int) -> list[tuple[int, str, str, int, bytes]]:
        """Up to `limit` rows with seq > after, oldest first: (seq, event_id, topic, qos, payload)."""
        with self._lock:
            return self._db.execute(
                "SELECT seq, event_id, topic, qos, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            ).fetchall()

    def ack(self, seqs: Iterable[int]) -> int:
        """Delete acknowledged rows in one transaction; returns how many went."""
        batch = [(s,) for s in seqs]
        if not batch:
            return 0
        with self._lock:
            self._db.execute("BEGIN")
            before = self._db.total_changes
            self._db.executemany("DELETE FROM outbox WHERE seq = ?", batch)
            gone = self._db.total_changes - before
            self._db.execute("COMMIT")
            self._depth -= gone
        return gone

    def close(self) -> None:
        with self._lock:
            self._db.close()
