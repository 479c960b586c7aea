"""Applying a staged snapshot in a child process: the rows' parsing, validation and the swap's writes run at
low CPU priority outside the daemon, so the lane thread never waits for the interpreter lock meanwhile.

`python -m gate.sync.snapapply CACHE VERSION CHUNKS COUNT SYNCED_AT` exits 0 and prints the rows applied, 3 with
one line naming what is wrong (the swap rolled back: the cache is as it was), or 1 on any other failure."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gate.core.errors import CodeError
from gate.decide.passcache import PassCache, Row
from gate.decide.passimport import check_row

PARENT_ENV = "GATE_SNAPSHOT_PARENT"  # the daemon's pid, for the child to check it still has it
PR_SET_PDEATHSIG = 1
FLUSH_EVERY = 1000  # rows written between fdatasyncs of the WAL (no burst of dirty pages at the end)
BAD_SNAPSHOT = 3


class SnapshotRefused(ValueError):
    """The snapshot's rows are wrong; nothing was changed."""


def parse_row(r: Any) -> Row:
    """[token, status 0..2, valid_until|null, revoked 0|1, companions|null], validated."""
    if not isinstance(r, list) or len(r) != 5:
        raise ValueError("a row is [token, status, valid_until, revoked, companions]")
    return check_row(*r)


def rows(cache: PassCache, version: int, chunks: int, count: int) -> Iterator[Row]:
    seen = 0
    for text in cache.staging.staged_chunks(version, chunks):
        batch = json.loads(text)
        for i in range(0, len(batch), FLUSH_EVERY):
            cache.flush_wal()
            for r in batch[i : i + FLUSH_EVERY]:
                yield parse_row(r)
        seen += len(batch)
    if seen != count:
        raise ValueError(f"it has {seen} rows, its manifest says {count}")


class _NotADiff(Exception):
    """The snapshot cannot be applied as a difference (unsorted, or the cache holds passes it drops)."""


def merge(cache: PassCache, version: int, chunks: int, count: int, synced_at: float) -> int | None:
    """A snapshot sorted by token (as central publishes it) is applied as the difference from the cache, in one
    transaction: only changed and new passes are written, so a resync that mostly repeats the cache costs the
    disk (and the lane's fsyncs beside it) almost nothing. None, with nothing changed, when it does not apply."""
    try:
        with cache.transaction() as db:
            total = cache.info().count
            last = ""
            batch = []
            for row in rows(cache, version, chunks, count):
                if row[0] <= last:
                    raise _NotADiff  # unsorted, or a token twice: the union count below would not prove anything
                last = row[0]
                batch.append(row)
                if len(batch) == FLUSH_EVERY:
                    total += _upsert_changed(db, batch)
                    batch = []
            total += _upsert_changed(db, batch)
            if total != count:  # old ∪ new has more tokens than the snapshot: some passes must go; rebuild
                raise _NotADiff
            cache.set_meta(version=version, seq=0, count=count, synced_at=synced_at)
    except _NotADiff:
        return None
    return count


def _upsert_changed(db: sqlite3.Connection, batch: list[Row]) -> int:
    """Write the rows that differ from the cache; how many of them are new tokens."""
    if not batch:
        return 0
    have = {
        r[0]: r
        for r in db.execute(
            f"SELECT token, status, valid_until, revoked, companions FROM passes WHERE token IN "
            f"({','.join('?' * len(batch))})",
            [r[0] for r in batch],
        )
    }
    changed = [r for r in batch if have.get(r[0]) != r]
    db.executemany("INSERT OR REPLACE INTO passes VALUES (?, ?, ?, ?, ?)", changed)
    return sum(1 for r in changed if r[0] not in have)


def apply(path: Path, version: int, chunks: int, count: int, synced_at: float) -> int:
    """In this process (the child's work, or tests'): apply the staged snapshot as a difference when it is
    one, else swap it in whole. Either way readers see the old cache or the new one."""
    with PassCache(path) as cache:
        n = merge(cache, version, chunks, count, synced_at)
        if n is not None:
            return n
        return cache.replace_all(rows(cache, version, chunks, count), version, synced_at=synced_at)


def apply_in_child(path: Path, version: int, chunks: int, count: int, synced_at: float) -> int:
    """Run `apply` in a child process and wait for it (the waiting thread holds no interpreter lock)."""
    argv = [
        sys.executable,
        "-m",
        "gate.sync.snapapply",
        str(path),
        str(version),
        str(chunks),
        str(count),
        repr(synced_at),
    ]
    env = {**os.environ, PARENT_ENV: str(os.getpid())}
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    said = (proc.stderr.strip().splitlines() or [""])[-1]
    if proc.returncode == BAD_SNAPSHOT:
        raise SnapshotRefused(said)
    if proc.returncode != 0:
        raise RuntimeError(f"applying snapshot {version} in a child process failed ({proc.returncode}): {said}")
    return int(proc.stdout.strip())


def die_with_parent() -> bool:
    """Linux: the kernel kills this process the moment its parent (the daemon) dies, however it dies, so a
    killed daemon's child never writes on beside the next one. False if the parent is already gone."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    expected = os.environ.get(PARENT_ENV)
    return expected is None or os.getppid() == int(expected)


def main(argv: list[str]) -> int:
    if not die_with_parent():
        print("the daemon that started this is gone: nothing applied", file=sys.stderr)
        return 1
    os.nice(19)  # the lane and delivery come first on a busy CPU
    path = Path(argv[0])
    version = int(argv[1])
    chunks = int(argv[2])
    count = int(argv[3])
    synced_at = float(argv[4])
    try:
        n = apply(path, version, chunks, count, synced_at)
    except (ValueError, CodeError) as exc:
        print(exc, file=sys.stderr)
        return BAD_SNAPSHOT
    print(n)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
