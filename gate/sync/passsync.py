"""Pass status from central: chunked, resumable snapshots and sequenced deltas, on the sync worker's thread."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from gate.core import reserve
from gate.core.errors import CodeError
from gate.decide.codes import check_token
from gate.decide.passcache import PassCache
from gate.sync.envelope import ControlMessage, Verifier
from gate.sync.snapapply import SnapshotRefused, apply_in_child, parse_row

log = logging.getLogger(__name__)


def rows_digest(chunks: list[list[Any]] | Any) -> str:
    """How central and gate agree on a snapshot: SHA-256 over each chunk's compact JSON, in order."""
    h = hashlib.sha256()
    for rows in chunks:
        h.update(json.dumps(rows, separators=(",", ":")).encode())
    return h.hexdigest()


def rows_text(msg: ControlMessage) -> str:
    """A chunk's rows as central hashed them (compact JSON). `sign` writes them last, so they are the tail of
    the signed text: slicing it saves writing 10k rows again while holding the interpreter lock. Any other
    layout is written again; a wrong slice would fail the manifest's hash and be fetched again, never applied."""
    text, body = msg.text, msg.body
    at = text.rfind('"rows":')
    if at >= 0 and list(body)[-1:] == ["rows"] and text.endswith("]}") and text[at + 7] == "[":
        return text[at + 7 : -1]
    return json.dumps(body["rows"], separators=(",", ":"))


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
        self.cache = cache
        self.verifier = verifier
        self._resync = resync
        self._changed = changed
        # Called with (version, chunk indexes still missing) for each new manifest, and (version, []) once
        # applied: the owner subscribes each chunk's exact topic, where every broker delivers retained ones.
        self._fetch = fetch
        self._pause = pause  # before staging each chunk: the lane's decisions come first
        self.pending: dict[str, Any] | None = None  # the manifest of the snapshot being gathered
        self.awaiting_resync = False

    def progress(self) -> str | None:
        m = self.pending
        return (
            None
            if m is None
            else f"version {m['version']}: {len(self.cache.staging.staged(m['version']))}/{m['chunks']} chunks"
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
        self.cache.staging.drop(below=m["version"])
        staged = self.cache.staging.staged(m["version"])
        self._fetch(m["version"], [i for i in range(m["chunks"]) if i not in staged])
        self._maybe_apply()

    def chunk(self, msg: ControlMessage) -> None:
        try:
            version = int(msg.body["version"])
            idx = int(msg.body["index"])
            rows = msg.body["rows"]
            if not isinstance(rows, list):
                raise TypeError
        except (KeyError, TypeError, ValueError):
            raise self.verifier.invalid("chunk needs version, index, rows") from None
        if version <= self.cache.info().version and not self.awaiting_resync:
            return
        self._pause()
        self.cache.staging.stage(version, idx, rows_text(msg))
        m = self.pending
        if m is not None and m["version"] == version:  # the next chunks in the fetch window
            staged = self.cache.staging.staged(version)
            self._fetch(version, [i for i in range(m["chunks"]) if i not in staged])
        self._maybe_apply()

    def _maybe_apply(self) -> None:
        m = self.pending
        if m is None or not set(range(m["chunks"])) <= self.cache.staging.staged(m["version"]):
            return
        version, chunks = m["version"], m["chunks"]
        # Two streaming passes over the staged chunks (one chunk in memory at a time, at any snapshot size):
        # the hash over their stored text (the same compact JSON central hashed), then the rows themselves.
        h = hashlib.sha256()
        for text in self.cache.staging.staged_chunks(version, chunks):
            h.update(text.encode())
        if h.hexdigest() != m["sha256"]:
            self.cache.staging.drop(below=version + 1)
            raise self.verifier.invalid(f"snapshot {version} does not match its manifest hash; re-fetching")
        start = time.perf_counter()
        try:  # in a child process at low priority: the lane keeps the interpreter and the CPU meanwhile
            n = apply_in_child(self.cache.path, version, chunks, m["count"], m["ts"])
        except SnapshotRefused as exc:  # the swap rolled back: the cache is as it was
            self.cache.staging.drop(below=version + 1)
            raise self.verifier.invalid(f"snapshot {version}: {exc}") from None
        self._fetch(version, [])
        self.cache.staging.drop()
        self.pending, self.awaiting_resync = None, False
        log.info("central: snapshot %d applied: %d passes in %.2fs", version, n, time.perf_counter() - start)
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
        # A revocation is safety: on a full disk it is written on the state directory's reserve.
        reserve.write(self.cache.path, lambda: self.cache.apply_delta(upserts, deletes, seq, synced_at=msg.ts))
        log.info("central: delta %d.%d applied (%d upserts, %d deletes)", base, seq, len(upserts), len(deletes))
