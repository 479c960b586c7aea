"""Snapshot chunks staged until the whole snapshot is here (resumable across restarts), in a file of their own."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from gate.core.sqlite import Owned

log = logging.getLogger(__name__)
_STAGING = (
    "CREATE TABLE IF NOT EXISTS staging (version INTEGER, idx INTEGER, rows TEXT NOT NULL, PRIMARY KEY (version, idx))"
)


def setup_staging(db: sqlite3.Connection) -> None:
    """Snapshot chunks on their way in. A file of their own, with no journal and no fsync: it is deleted once
    the snapshot is applied, usually before the kernel has written it back, so staging tens of megabytes costs
    the disk (and the lane's outbox fsyncs beside it) little. A power cut can tear it; that is caught by the
    manifest's hash over every chunk, and the snapshot is fetched again."""
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    db.execute(_STAGING)


class Staging:
    """`passes.db.staging`, owned by the thread that first uses it (the sync worker, or the snapshot child)."""

    def __init__(self, path: Path, timeout: float = 5.0, owner: str = "central-sync") -> None:
        self.path = path
        self._conn = Owned(path, setup_staging, owner, timeout)

    def close(self) -> None:
        self._conn.close()

    def stage(self, version: int, idx: int, rows_json: str) -> None:
        """Keep one chunk. A damaged staging file is deleted and started again: chunks can be fetched again."""
        try:
            self._conn.db.execute("INSERT OR REPLACE INTO staging VALUES (?, ?, ?)", (version, idx, rows_json))
        except sqlite3.DatabaseError as exc:
            log.error("%s: %s; starting the staged snapshot again", self.path, exc)
            self.drop()
            self._conn.db.execute("INSERT OR REPLACE INTO staging VALUES (?, ?, ?)", (version, idx, rows_json))

    def staged(self, version: int) -> set[int]:
        if not self._conn.is_open and not self.path.exists():
            return set()
        return {r[0] for r in self._conn.db.execute("SELECT idx FROM staging WHERE version = ?", (version,))}

    def staged_chunks(self, version: int, below: int) -> Iterator[str]:
        """The staged chunks 0 .. below-1 of `version`, in order, one at a time."""
        for (rows,) in self._conn.db.execute(
            "SELECT rows FROM staging WHERE version = ? AND idx < ? ORDER BY idx", (version, below)
        ):
            yield rows

    def drop(self, below: int | None = None) -> None:
        """Older versions' chunks (`below`), or all of them: then the file itself goes."""
        if below is not None:
            if self._conn.is_open or self.path.exists():
                self._conn.db.execute("DELETE FROM staging WHERE version < ?", (below,))
            return
        self._conn.close()
        for side in ("", "-wal", "-shm"):
            Path(f"{self.path}{side}").unlink(missing_ok=True)
