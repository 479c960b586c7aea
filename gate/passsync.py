"""Pass status from central: chunked, resumable snapshots and sequenced deltas, on the sync worker's thread."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from gate.codes import check_token
from gate.control import ControlMessage, Verifier
from gate.errors import CodeError
from gate.passcache import PassCache, Row
from gate.passimport import check_row

log = logging.getLogger(__name__)
PAUSE_EVERY = 1000  # rows applied between the lane's turns


def rows_digest(chunks: list[list[Any]] | Any) -> str:
    """How central and gate agree on a snapshot: SHA-256 over each chunk's compact JSON, in order."""
    h = hashlib.sha256()
    for rows in chunks:
        h.update(json.dumps(rows, separators=(",", ":")).encode())
    return h.hexdigest()


def parse_row(r: Any) -> Row:
    """[token, status 0..2, valid_until|null, revoked 0|1, companions|null], validated."""
    if not isinstance(r, list) or len(r) != 5:
        raise ValueError("a row is [token, status, valid_until, revoked, companions]")
    return check_row(*r)


class PassSync:
    """Owns the pass cache's writer connection. A snapshot is staged chunk by chunk (on disk, so a restart
    resumes it) and swapped in whole once its manifest's count and hash match; a delta applies only in
    sequence, and a gap asks for a resync while decisions go on from the data the gate has."""

    def __init__(
        self,
        cache: PassCache,
        verifier: Verifier,
        resync: Callable[[str], None],
        changed: Callable[[], None],
        fetch: Callable[[int, list[int]], None] = lambda version, missing: None,
        pause: Callable[[], None] = lambda: None,
    ) -> None:
        self.cache, self.verifier, self._resync, self._changed = cache, verifier, resync, changed
        # Called with (version, chunk indexes still missing) for each new manifest, and (version, []) once
        # applied: the owner subscribes each chunk's exact topic, where every broker delivers retained ones.
        self._fetch = fetch
        self._pause = pause  # between batches of a snapshot apply: the lane's decisions come first
        self.pending: dict[str, Any] | None = None  # the manifest of the snapshot being gathered
        self.awaiting_resync = False

    def progress(self) -> str | None:
        m = self.pending
        return (
            None
            if m is None
            else f"version {m['version']}: {len(self.cache.staged(m['version']))}/{m['chunks']} chunks"
        )

    def manifest(self, msg: ControlMessage) -> None:
        b = msg.body
        try:
            m: dict[str, Any] = {
                "version": int(b["version"]),
                "count": int(b["count"]),
                "chunks": int(b["chunks"]),
                "sha256": str(b["sha256"]),
                "ts": msg.ts,  # central vouches for the data as of its signature time
            }
        except (KeyError, TypeError, ValueError):
            raise self.verifier.invalid("manifest needs version, count, chunks, sha256") from None
        current = self.cache.info().version
        if m["version"] < current:
            raise self.verifier.old(f"snapshot version {m['version']} is older than {current}")
        if m["version"] == current and not self.awaiting_resync:
            return  # the retained manifest of what we already have
        self.pending = m
        self.cache.drop_staging(below=m["version"])
        staged = self.cache.staged(m["version"])
        self._fetch(m["version"], [i for i in range(m["chunks"]) if i not in staged])
        self._maybe_apply()

    def chunk(self, msg: ControlMessage) -> None:
        try:
            version, idx, rows = int(msg.body["version"]), int(msg.body["index"]), msg.body["rows"]
            if not isinstance(rows, list):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise self.verifier.invalid("chunk needs version, index, rows") from None
        if version <= self.cache.info().version and not self.awaiting_resync:
            return
        self.cache.stage(version, idx, json.dumps(rows, separators=(",", ":")))
        m = self.pending
        if m is not None and m["version"] == version:  # the next chunks in the fetch window
            staged = self.cache.staged(version)
            self._fetch(version, [i for i in range(m["chunks"]) if i not in staged])
        self._maybe_apply()

    def _maybe_apply(self) -> None:
        m = self.pending
        if m is None or not set(range(m["chunks"])) <= self.cache.staged(m["version"]):
            return
        version, chunks = m["version"], m["chunks"]
        # Two streaming passes over the staged chunks (one chunk in memory at a time, at any snapshot size):
        # the hash over their stored text (the same compact JSON central hashed), then the rows themselves.
        h = hashlib.sha256()
        for text in self.cache.staged_chunks(version, chunks):
            h.update(text.encode())
        if h.hexdigest() != m["sha256"]:
            self.cache.drop_staging(below=version + 1)
            raise self.verifier.invalid(f"snapshot {version} does not match its manifest hash; re-fetching")
        start = time.perf_counter()
        try:
            n = self.cache.replace_all(self._rows(version, chunks, m["count"]), version, synced_at=m["ts"])
        except (ValueError, CodeError) as exc:  # the swap rolled back: the cache is as it was
            self.cache.drop_staging(below=version + 1)
            raise self.verifier.invalid(f"snapshot {version}: {exc}") from None
        self._fetch(version, [])
        self.cache.drop_staging()
        self.pending, self.awaiting_resync = None, False
        log.info("central: snapshot %d applied: %d passes in %.2fs", version, n, time.perf_counter() - start)
        self._changed()

    def _rows(self, version: int, chunks: int, count: int) -> Iterator[Row]:
        seen = 0
        for text in self.cache.staged_chunks(version, chunks):
            rows = json.loads(text)
            for i in range(0, len(rows), PAUSE_EVERY):
                self._pause()
                self.cache.flush_wal()
                for r in rows[i : i + PAUSE_EVERY]:
                    yield parse_row(r)
            seen += len(rows)
        if seen != count:
            raise ValueError(f"it has {seen} rows, its manifest says {count}")

    def delta(self, msg: ControlMessage) -> None:
        b = msg.body
        try:
            seq, base = int(b["seq"]), int(b["base_version"])
            upserts = [parse_row(r) for r in b.get("upserts", [])]
            deletes = [check_token(t) for t in b.get("deletes", [])]
        except (KeyError, TypeError, ValueError, CodeError) as exc:
            raise self.verifier.invalid(f"delta: {exc}") from None
        info = self.cache.info()
        if base < info.version or (base == info.version and seq <= info.seq):
            raise self.verifier.old(f"delta {base}.{seq} is not newer than {info.version}.{info.seq}")
        if base > info.version or seq > info.seq + 1:
            self._resync(f"sequence gap: have {info.version}.{info.seq}, got {base}.{seq}")
            return
        self.cache.apply_delta(upserts, deletes, seq, synced_at=msg.ts)
        log.info("central: delta %d.%d applied (%d upserts, %d deletes)", base, seq, len(upserts), len(deletes))
