"""The fleet table as pages: one report of every gate shared by all viewers for a moment (so a thousand open
fleet pages cost one query per interval), sorted once per report, then filtered and cut into keyset pages."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from gate.central.store import Store
from gate.central.tracing import aged, fleet_line

from .fleetindex import FLAGS, SORTS, FleetIndex, FleetPage

__all__ = ["FLAGS", "SORTS", "FleetIndex", "FleetLines", "FleetPage", "FleetQuery", "FleetView"]


class FleetLines:
    """The fleet report kept between reads: each gate's line is made again only when its document changed
    (known by its digest), so a read costs one digest per gate and the changed documents, not 5,000 decodes."""

    def __init__(self, offline_min: float, stale_hours: float) -> None:
        self.offline_min, self.stale_hours = offline_min, stale_hours
        self._lines: dict[str, tuple[str, dict[str, Any]]] = {}  # gate id -> (digest, line)

    def report(self, store: Store, now: float | None = None) -> list[dict[str, Any]]:
        now = time.time() if now is None else now
        digests = store.fleet_digests()
        changed = [g for g, h in digests.items() if self._lines.get(g, ("",))[0] != h]
        fresh = store.fleet_docs(changed) if changed else {}
        lines = {g: kept for g, kept in self._lines.items() if g in digests}
        for g, (h, doc) in fresh.items():
            lines[g] = (h, fleet_line(doc, self.offline_min, self.stale_hours, now))
        self._lines = lines
        return [aged(lines[g][1], self.offline_min, now) for g in sorted(lines)]


@dataclass(frozen=True)
class FleetQuery:
    show: str = ""  # a FLAGS key, or every gate
    search: str = ""  # a part of the gate, venue, vehicle or route id
    sort: str = "gate"
    after: str = ""  # the gate id of the last row of the previous page

    @classmethod
    def of(cls, params: dict[str, str]) -> FleetQuery:
        show = params.get("show", "")
        sort = params.get("sort", "gate")
        return cls(
            show if show in FLAGS else "",
            params.get("q", "").strip()[:64],
            sort if sort in SORTS else "gate",
            params.get("after", "")[:200],
        )


class FleetView:
    """`report()` runs at most once per `ttl` seconds, whoever asks; everyone in between gets its copy. Once
    expired, the copy is still served while one worker makes the next (no poller waits for the query), unless
    it is older than STALE_TTLS intervals (a database that stopped answering is an error, not an old table)."""

    STALE_TTLS = 10

    def __init__(self, report: Callable[[], list[dict[str, Any]]], ttl: float) -> None:
        self._report, self.ttl = report, ttl
        self._cached: tuple[float, list[dict[str, Any]], FleetIndex] | None = None
        self._pages: dict[tuple[float, FleetQuery], FleetPage] = {}  # of the cached report: every poller's view
        self._lock = threading.Lock()
        self._making = threading.Lock()  # one report query at a time, in the background or not
        self._refreshing = False
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleet-report")

    def rows(self) -> list[dict[str, Any]]:
        return self._stamped()[1]

    def _stamped(self) -> tuple[float, list[dict[str, Any]], FleetIndex]:
        with self._lock:
            cached = self._cached
            age = None if cached is None else time.monotonic() - cached[0]
            if cached is not None and age is not None and age <= self.ttl * self.STALE_TTLS:
                if age > self.ttl and not self._refreshing:
                    self._refreshing = True
                    self._worker.submit(self._refresh)
                return cached
        with self._making:  # none, or too old: made now; the callers in between wait for it, not run it again
            with self._lock:
                if self._cached is not None and time.monotonic() - self._cached[0] <= self.ttl:
                    return self._cached
            return self._make()

    def _make(self) -> tuple[float, list[dict[str, Any]], FleetIndex]:
        report = self._report()
        fresh = (time.monotonic(), report, FleetIndex.of(report))  # sorted here, by whoever makes the report
        with self._lock:
            self._cached, self._pages = fresh, {}
        return fresh

    def _refresh(self) -> None:
        try:
            with self._making:
                self._make()
        finally:
            with self._lock:
                self._refreshing = False

    def forget(self) -> None:
        with self._lock:
            self._cached = None

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)

    def page(self, q: FleetQuery) -> FleetPage:
        stamp, _, index = self._stamped()
        with self._lock:
            kept = self._pages.get((stamp, q))
        if kept is None:
            kept = index.page(q.show, q.search, q.sort, q.after)
            with self._lock:
                if len(self._pages) < 256:  # a bound: searches are many, the polled views few
                    self._pages[(stamp, q)] = kept
        return kept
