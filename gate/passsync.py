"""Pass status from central: chunked, resumable snapshots and sequenced deltas, on the sync worker's thread."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from gate.codes import check_token
from gate.control import ControlMessage, Verifier
from gate.errors import CodeError
from gate.passcache import PassCache, Row
from gate.passimport import check_row

log = logging.getLogger(__name__)


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
    ) -> None:
        self.cache, self.verifier, self._resync, self._changed = cache, verifier, resync, changed
        # Called with (version, chunk indexes still missing) for each new manifest, and (version, []) once
        # applied: the owner subscribes each chunk's exact topic, where every broker delivers retained ones.
        self._fetch = fetch
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
        self._maybe_apply()

    def _maybe_apply(self) -> None:
        m = self.pending
        if m is None or len(self.cache.staged(m["version"])) < m["chunks"]:
            return
        chunks = [json.loads(c) for c in self.cache.staged_chunks(m["version"])][: m["chunks"]]
        if rows_digest(chunks) != m["sha256"]:
            self.cache.drop_staging(below=m["version"] + 1)
            raise self.verifier.invalid(f"snapshot {m['version']} does not match its manifest hash; re-fetching")
        try:
            rows = [parse_row(r) for chunk in chunks for r in chunk]
        except (ValueError, CodeError) as exc:
            self.cache.drop_staging(below=m["version"] + 1)
            raise self.verifier.invalid(f"snapshot {m['version']}: {exc}") from None
        if len(rows) != m["count"]:
            raise self.verifier.invalid(f"snapshot {m['version']} has {len(rows)} rows, manifest says {m['count']}")
        start = time.perf_counter()
        self.cache.replace_all(rows, m["version"], synced_at=m["ts"])
        self._fetch(m["version"], [])
        self.cache.drop_staging()
        self.pending, self.awaiting_resync = None, False
        log.info(
            "central: snapshot %d applied: %d passes in %.2fs", m["version"], len(rows), time.perf_counter() - start
        )
        self._changed()

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
