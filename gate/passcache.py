"""The cached pass status: SQLite (WAL) keyed by token id, swapped whole by snapshots."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from gate.codes import Status
from gate.sqlite import Owned

_SCHEMA = """
CREATE TABLE IF NOT EXISTS passes (
    token TEXT PRIMARY KEY, status INTEGER NOT NULL, valid_until INTEGER,
    revoked INTEGER NOT NULL DEFAULT 0, companions INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS staging (version INTEGER, idx INTEGER, rows TEXT NOT NULL, PRIMARY KEY (version, idx));
"""
_STATUSES = list(Status)
Row = tuple[str, int, int | None, int, int | None]  # as stored: token, status index, until, revoked, comp.


@dataclass(frozen=True)
class CacheEntry:
    token: str
    status: Status
    valid_until: int | None
    revoked: bool
    companions: int | None

    def as_row(self) -> Row:
        return (self.token, _STATUSES.index(self.status), self.valid_until, int(self.revoked), self.companions)


@dataclass(frozen=True)
class CacheInfo:
    version: int
    synced_at: float | None  # wall time central last vouched for this data
    seq: int  # last delta sequence applied on top of `version`
    count: int


def setup(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # a revocation is on disk before the broker's copy is acked
    db.executescript(_SCHEMA)


class PassCache:
    """One connection, owned by the thread that first uses it (the lane reads, the sync worker writes):
    each thread that needs the cache opens its own PassCache on the same file."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = Owned(path, setup, timeout)

    @property
    def _db(self) -> sqlite3.Connection:
        return self._conn.db

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> PassCache:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def lookup(self, token: str) -> CacheEntry | None:
        row = self._db.execute(
            "SELECT status, valid_until, revoked, companions FROM passes WHERE token = ?", (token,)
        ).fetchone()
        if row is None:
            return None
        return CacheEntry(token, _STATUSES[row[0]], row[1], bool(row[2]), row[3])

    def info(self) -> CacheInfo:
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        count = meta.get("count")
        if count is None:
            count = self._db.execute("SELECT count(*) FROM passes").fetchone()[0]
        return CacheInfo(int(meta.get("version", 0)), meta.get("synced_at"), int(meta.get("seq", 0)), count)

    def replace_all(self, rows: Iterable[Row], version: int, synced_at: float | None = None) -> int:
        """Atomically swap in a whole snapshot; readers see the old data until the final commit."""
        self._db.execute("DROP TABLE IF EXISTS passes_next")
        with self._conn.transaction() as db:
            db.execute(_SCHEMA.split(";")[0].replace("passes (", "passes_next (", 1))
            db.executemany("INSERT OR REPLACE INTO passes_next VALUES (?, ?, ?, ?, ?)", rows)
            count = db.execute("SELECT count(*) FROM passes_next").fetchone()[0]
            db.execute("DROP TABLE passes")
            db.execute("ALTER TABLE passes_next RENAME TO passes")
            self._set_meta(version=version, seq=0, count=count, synced_at=synced_at or time.time())
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(count)

    def apply_delta(
        self, upserts: Iterable[Row], deletes: Iterable[str], seq: int, synced_at: float | None = None
    ) -> None:
        """Apply one incremental change set in a single transaction."""
        upserts, deletes = list(upserts), list(deletes)
        with self._conn.transaction() as db:
            count = self.info().count  # kept up to date here: count(*) over 1M rows would cost milliseconds
            count += sum(1 for r in upserts if not db.execute("SELECT 1 FROM passes WHERE token = ?", r[:1]).fetchone())
            db.executemany("INSERT OR REPLACE INTO passes VALUES (?, ?, ?, ?, ?)", upserts)
            before = db.total_changes
            db.executemany("DELETE FROM passes WHERE token = ?", ((t,) for t in deletes))
            count -= db.total_changes - before
            self._set_meta(seq=seq, count=count, synced_at=synced_at or time.time())

    # -- snapshot chunks staged until the whole snapshot is here (resumable across restarts) ----------
    def stage(self, version: int, idx: int, rows_json: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO staging VALUES (?, ?, ?)", (version, idx, rows_json))

    def staged(self, version: int) -> set[int]:
        return {r[0] for r in self._db.execute("SELECT idx FROM staging WHERE version = ?", (version,))}

    def staged_chunks(self, version: int) -> Iterator[str]:
        for (rows,) in self._db.execute("SELECT rows FROM staging WHERE version = ? ORDER BY idx", (version,)):
            yield rows

    def drop_staging(self, below: int | None = None) -> None:
        if below is None:
            self._db.execute("DELETE FROM staging")
        else:
            self._db.execute("DELETE FROM staging WHERE version < ?", (below,))

    def _set_meta(self, **values: float | int) -> None:
        self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", values.items())
