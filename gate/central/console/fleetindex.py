"""The fleet report made ready for pages once per report: every sort's order and each row's searched text."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FLAGS = {"offline": "offline", "stale": "stale_cache", "backing-up": "outbox_growing"}
# .get: every order is made with each report, also of a test's short rows that only one sort reads
SORTS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "gate": lambda r: "",
    "venue": lambda r: str(r.get("venue_id") or ""),
    "seen": lambda r: -(r.get("last_seen") or 0),  # the most recently seen first
    "outbox": lambda r: -(r.get("outbox_depth") or 0),  # the deepest first
    "cache-age": lambda r: -(r["cache_age_s"] if r.get("cache_age_s") is not None else float("inf")),
}
PAGE = 100
SEARCHED = ("gate_id", "venue_id", "vehicle_id", "route")


@dataclass(frozen=True)
class FleetPage:
    rows: list[dict[str, Any]]
    counts: dict[str, int]
    matching: int  # rows that pass the filter and search, on every page
    total: int  # gates known
    next_after: str | None


class FleetIndex:
    """One per report, so a request is a filter and a slice, never a sort: each sort's order (and each row's
    lower-cased searched fields) is made once, by the first request that needs it, and kept with the report. The
    gate id breaks every tie, so sorting all rows then filtering gives the order that filtering then sorting did."""

    def __init__(self, report: list[dict[str, Any]]) -> None:
        self.rows = report
        self.row_of = {r["gate_id"]: i for i, r in enumerate(report)}
        flagged = {name: [i for i, r in enumerate(report) if flag in r["flags"]] for name, flag in FLAGS.items()}
        self.counts = {name: len(rows) for name, rows in flagged.items()}
        self._flagged = {name: frozenset(rows) for name, rows in flagged.items()}
        # Made on first use; two requests racing make the same value, so no lock (the GIL keeps the dict whole).
        self._orders: dict[str, tuple[list[int], list[int]]] = {}  # sort -> (row numbers in order, each row's place)
        self._texts: list[tuple[str, str, str, str]] | None = None

    @classmethod
    def of(cls, report: list[dict[str, Any]]) -> FleetIndex:
        return cls(report)

    def _order(self, sort: str) -> tuple[list[int], list[int]]:
        kept = self._orders.get(sort)
        if kept is None:
            key, rows = SORTS[sort], self.rows
            keys = [(key(r), r["gate_id"]) for r in rows]
            order = sorted(range(len(rows)), key=keys.__getitem__)
            place = [0] * len(rows)
            for n, i in enumerate(order):
                place[i] = n
            kept = self._orders[sort] = (order, place)
        return kept

    def _found(self, needle: str) -> list[int]:
        if self._texts is None:
            self._texts = [_text(r) for r in self.rows]
        return [
            i for i, (a, b, c, d) in enumerate(self._texts) if needle in a or needle in b or needle in c or needle in d
        ]

    def page(self, show: str, search: str, sort: str, after: str) -> FleetPage:
        (order, place), needle = self._order(sort), search.lower()
        if not show and not needle:  # every gate: the next page is a slice of the order
            chosen: range | list[int] = range(len(order))  # places in the order
        else:
            rows = self._found(needle) if needle else range(len(self.rows))
            flagged = self._flagged.get(show)
            chosen = sorted(place[i] for i in rows if flagged is None or i in flagged)
        start = 0
        if after and (row := self.row_of.get(after)) is not None:
            at = bisect_left(chosen, place[row])
            start = at + 1 if at < len(chosen) and chosen[at] == place[row] else 0
        shown = [self.rows[order[n]] for n in chosen[start : start + PAGE]]
        more = start + PAGE < len(chosen)
        last = shown[-1]["gate_id"] if more and shown else None
        return FleetPage(shown, dict(self.counts), len(chosen), len(self.rows), last)


def _text(r: dict[str, Any]) -> tuple[str, str, str, str]:
    """A row's SEARCHED fields, lower-cased, as four (not any() over a generator: a search scans 5,000 rows)."""
    a, b, c, d = (str(r[k] or "").lower() for k in SEARCHED)
    return a, b, c, d
