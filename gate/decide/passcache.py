"""The cached pass status: SQLite (WAL) keyed by token id, swapped whole by snapshots."""

from __future__ import annotations

import itertools
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

from gate.core.errors import GateError, ImportRowError
from gate.core.seal import SealDamaged, read_seal, write_seal
from gate.core.sqlite import Owned
from gate.decide.codes import Status
from gate.decide.staging import Staging

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS passes (
    token TEXT PRIMARY KEY, status INTEGER NOT NULL, valid_until INTEGER,
    revoked INTEGER NOT NULL DEFAULT 0, companions INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
"""
_STATUSES = list(Status)
Row = tuple[str, int, int | None, int, int | None]  # as stored: token, status index, until, revoked, comp.
_LOOKUP = "SELECT status, valid_until, revoked, companions FROM passes WHERE token = ?"


class CacheEntry(NamedTuple):
    """One pass as the lane sees it: a tuple, which costs a third of a frozen dataclass on every lookup."""

    token: str
    status: Status
    valid_until: int | None
    revoked: bool
    companions: int | None

    def as_row(self) -> Row:
        return (self.token, _STATUSES.index(self.status), self.valid_until, int(self.revoked), self.companions)


@dataclass(frozen=True)
class ImportReport:
    lines: int  # good rows read
    passes: int  # distinct tokens among them
    identical: int  # rows repeating a token with the same values (merged)
    resolved: int  # rows repeating a token with other values (resolved by on_duplicate)
    entries: int  # cache entries after the import


@dataclass(frozen=True)
class CacheInfo:
    version: int
    synced_at: float | None  # wall time central last vouched for this data
    seq: int  # last delta sequence applied on top of `version`
    count: int
    proven: bool = True  # False: the file holds less than its seal says, until central's next snapshot


def setup(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # a revocation is on disk before the broker's copy is acked
    db.executescript(_SCHEMA)
    db.execute("DROP TABLE IF EXISTS staging")  # staged chunks lived here before they got their own file


class PassCache:
    """One connection, owned by the thread that first uses it (the lane reads, the sync worker writes):
    each thread that needs the cache opens its own PassCache on the same file."""

    def __init__(self, path: Path, timeout: float = 5.0, owner: str = "lane") -> None:
        """`owner`: the thread that uses this connection, "lane" (reads) or "central-sync" (writes)."""
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = Owned(path, setup, owner, timeout)
        self._reader: tuple[sqlite3.Connection, sqlite3.Cursor] | None = None  # lookup's cursor, kept
        self._flushed_at = 0  # the connection's total_changes at the last flush_wal
        self.staging = Staging(path.with_name(path.name + ".staging"), timeout, owner)
        self._distrusted: int | None = None  # the version found unproven at start, until another replaces it
        self._seal_failing = False

    # -- the seal: what this file must hold at least (gate.core.seal) ------------------------------------
    def unproven(self) -> str | None:
        """None if passes.db holds at least what its seal says; else what is wrong."""
        try:
            facts = read_seal(self.path)
        except SealDamaged as exc:
            return str(exc)
        info = self.info()
        if facts is None:
            fresh = info.version == 0 and info.seq == 0
            return None if fresh else f"{self.path.name} holds version {info.version} but has no seal"
        sealed = (int(facts.get("version", 0)), int(facts.get("seq", 0)))
        if (info.version, info.seq) < sealed:
            return f"{self.path.name} holds {info.version}/{info.seq} but {sealed[0]}/{sealed[1]} was sealed"
        if (info.version, info.seq) == sealed and info.count != facts.get("count"):
            return f"{self.path.name} holds {info.count} passes but {facts.get('count')} were sealed"
        return None

    def distrust(self) -> None:
        """Treat what is in the file now as unproven (`info().proven` False) until a new version replaces it."""
        self._distrusted = self.info().version

    def _seal(self) -> None:
        """After each write: a full disk is logged once (the data is committed; a file ahead of its seal still
        proves itself)."""
        info = self.info()
        try:
            write_seal(self.path, {"version": info.version, "seq": info.seq, "count": info.count})
        except OSError as exc:
            if not self._seal_failing:
                log.error("%s: cannot write its seal (%s); retrying with the next change", self.path.name, exc)
            self._seal_failing = True
            return
        if self._seal_failing:
            log.warning("%s: sealed again", self.path.name)
        self._seal_failing = False

    @property
    def _db(self) -> sqlite3.Connection:
        return self._conn.db

    def hand_over(self) -> None:
        """The explicit hand-over (its owner has ended): the next thread to use this cache owns it."""
        self._reader = None
        self._conn.release()

    def close(self) -> None:
        self._reader = None
        self._conn.close()
        self.staging.close()

    def flush_wal(self) -> None:
        """During a long write: put what SQLite has written so far on disk now, so that the final commit
        (and any other file's fsync on the same disk meanwhile, like the outbox's) never waits for a whole
        snapshot's worth of dirty pages at once. Nothing to do when no row changed since the last flush (a
        resync applied as a difference mostly writes nothing)."""
        changes = self._db.total_changes
        if changes == self._flushed_at:
            return
        self._flushed_at = changes
        try:
            fd = os.open(f"{self.path}-wal", os.O_RDONLY)
        except OSError:
            return
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def __enter__(self) -> PassCache:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def lookup(self, token: str) -> CacheEntry | None:
        # One cursor for every lookup (not a new one per call, as db.execute makes). A primary-key SELECT is
        # stepped to its end by fetchone, which resets the statement: no read snapshot is held between lookups.
        db, reader = self._db, self._reader
        if reader is None or reader[0] is not db:
            reader = self._reader = (db, db.cursor())
        row = reader[1].execute(_LOOKUP, (token,)).fetchone()
        if row is None:
            return None
        return CacheEntry(token, _STATUSES[row[0]], row[1], bool(row[2]), row[3])

    def info(self) -> CacheInfo:
        meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        count = meta.get("count")
        if count is None:
            count = self._db.execute("SELECT count(*) FROM passes").fetchone()[0]
        version = int(meta.get("version", 0))
        if self._distrusted is not None and version != self._distrusted:
            self._distrusted = None  # central's snapshot replaced what could not be proven
        proven = self._distrusted is None
        return CacheInfo(version, meta.get("synced_at"), int(meta.get("seq", 0)), count, proven)

    def replace_all(self, rows: Iterable[Row], version: int, synced_at: float | None = None) -> int:
        """Atomically swap in a whole snapshot; readers see the old data until the final commit."""

        def fill(db: sqlite3.Connection) -> None:
            db.executemany("INSERT OR REPLACE INTO passes_next VALUES (?, ?, ?, ?, ?)", rows)

        return self._swap(fill, version, synced_at)

    def apply_delta(
        self, upserts: Iterable[Row], deletes: Iterable[str], seq: int, synced_at: float | None = None
    ) -> None:
        """Apply one incremental change set in a single transaction."""
        upserts, deletes = list(upserts), list(deletes)
        with self.transaction() as db:
            count = self.info().count  # kept up to date here: count(*) over 1M rows would cost milliseconds
            count += sum(1 for r in upserts if not db.execute("SELECT 1 FROM passes WHERE token = ?", r[:1]).fetchone())
            db.executemany("INSERT OR REPLACE INTO passes VALUES (?, ?, ?, ?, ?)", upserts)
            before = db.total_changes
            db.executemany("DELETE FROM passes WHERE token = ?", ((t,) for t in deletes))
            count -= db.total_changes - before
            self.set_meta(seq=seq, count=count, synced_at=synced_at or time.time())

    def import_rows(
        self,
        rows: Iterable[tuple[int, Row]],
        *,
        merge: bool = False,
        on_duplicate: str | None = None,
        allow_empty: bool = False,
        version: int | None = None,
    ) -> ImportReport:
        """Stream (line, row) pairs into a temporary table in batches (memory stays flat at any size), check
        duplicates there, then replace the cache (or merge into it) in one transaction. Nothing changes if the
        rows end in ImportRowError, if duplicates disagree without `on_duplicate`, or if a replacement would
        empty the cache without `allow_empty`."""
        db = self._db
        db.execute("DROP TABLE IF EXISTS temp.import_rows")
        db.execute(
            "CREATE TEMP TABLE import_rows (line INTEGER NOT NULL, token TEXT NOT NULL, status INTEGER NOT NULL,"
            " valid_until INTEGER, revoked INTEGER NOT NULL, companions INTEGER, PRIMARY KEY (token, line))"
            " WITHOUT ROWID"  # kept in token order: the duplicate check and the copy below need no sort
        )
        try:
            it = iter(rows)
            while batch := [(n, *r) for n, r in itertools.islice(it, 10_000)]:
                db.executemany("INSERT INTO temp.import_rows VALUES (?, ?, ?, ?, ?, ?)", batch)
            report = self._duplicates(on_duplicate)
            if report.passes == 0 and not merge and not allow_empty:
                raise GateError("the file holds no pass rows: importing it would empty the cache (--allow-empty)")
            order = "line DESC" if on_duplicate in (None, "last") else "revoked DESC, status DESC, line DESC"
            pick = (
                "SELECT token, status, valid_until, revoked, companions FROM (SELECT *, row_number() OVER "
                f"(PARTITION BY token ORDER BY {order}) AS rn FROM temp.import_rows) WHERE rn = 1"
                if report.lines != report.passes
                else "SELECT token, status, valid_until, revoked, companions FROM temp.import_rows"
            )
            if merge:
                with self.transaction() as tx:
                    tx.execute(f"INSERT OR REPLACE INTO passes {pick}")
                    count = tx.execute("SELECT count(*) FROM passes").fetchone()[0]
                    self.set_meta(count=count, synced_at=time.time())
            else:
                count = self._swap(
                    lambda db: db.execute(f"INSERT INTO passes_next {pick}"),
                    self.info().version + 1 if version is None else version,
                    None,
                )
        finally:
            db.execute("DROP TABLE IF EXISTS temp.import_rows")
        return replace(report, entries=int(count))

    def _duplicates(self, on_duplicate: str | None) -> ImportReport:
        db = self._db
        lines, passes = db.execute("SELECT count(*), count(DISTINCT token) FROM temp.import_rows").fetchone()
        identical = resolved = 0
        conflicts: list[tuple[int, str]] = []
        for token, n, variants, first, last in db.execute(
            "SELECT token, count(*), count(DISTINCT status || '/' || ifnull(valid_until, '') || '/' || revoked"
            " || '/' || ifnull(companions, '')), min(line), max(line) FROM temp.import_rows WHERE token IN"
            " (SELECT token FROM temp.import_rows GROUP BY token HAVING count(*) > 1) GROUP BY token ORDER BY min(line)"
        ):
            if variants == 1:
                identical += n - 1
                continue
            resolved += n - 1
            conflicts.append((last, f"token {token} appears {n} times with different values (first on line {first})"))
        if conflicts and on_duplicate is None:
            raise ImportRowError(
                conflicts, hint="choose --on-duplicate last or strictest (strictest keeps a revocation)"
            )
        return ImportReport(lines, passes, identical, resolved, 0)

    def _swap(self, fill: Callable[[sqlite3.Connection], object], version: int, synced_at: float | None) -> int:
        """Build `passes_next` with `fill`, then swap it in: one transaction, so readers see old or new."""
        self._db.execute("DROP TABLE IF EXISTS passes_next")
        with self.transaction() as db:
            db.execute(_SCHEMA.split(";")[0].replace("passes (", "passes_next (", 1))
            fill(db)
            count = db.execute("SELECT count(*) FROM passes_next").fetchone()[0]
            db.execute("DROP TABLE passes")
            db.execute("ALTER TABLE passes_next RENAME TO passes")
            self.set_meta(version=version, seq=0, count=count, synced_at=synced_at or time.time())
        self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(count)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (a snapshot swapped, or applied as a difference: gate.sync.snapapply)."""
        with self._conn.transaction() as db:
            self._flushed_at = db.total_changes  # what was committed before is on disk (synchronous=FULL)
            yield db
        self._seal()

    def set_meta(self, **values: float | int) -> None:
        self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", values.items())
