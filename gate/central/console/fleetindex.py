"""The fleet report made ready for pages once per report: every sort's order and each row's searched text."""

from __future__ import annotations

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
    """One per report: each sort's order of every gate and each row's lower-cased searched fields are made once,
    by the first request that needs them, and kept with the report, so the next page of a sort is a slice and a
    search lower-cases nothing; a filtered or searched page sorts its matches only, by (key, gate id) as before."""

    def __init__(self, report: list[dict[str, Any]]) -> None:
        self.rows = report
        self.counts = {name: sum(flag in r["flags"] for r in report) for name, flag in FLAGS.items()}
        # Made on first use; two requests racing make the same value, so no lock (the GIL keeps the dict whole).
        self._orders: dict[str, tuple[list[int], dict[str, int]]] = {}  # sort -> (row numbers, gate id -> place)
        self._texts: list[tuple[str, str, str, str]] | None = None

    @classmethod
    def of(cls, report: list[dict[str, Any]]) -> FleetIndex:
        return cls(report)

    def _order(self, sort: str) -> tuple[list[int], dict[str, int]]:
        kept = self._orders.get(sort)
        if kept is None:
            key, rows = SORTS[sort], self.rows
            # "gate" orders by the gate id alone (its key is constant): the report comes in that order, sorted in O(n)
            keys = [r["gate_id"] for r in rows] if sort == "gate" else [(key(r), r["gate_id"]) for r in rows]
            order = sorted(range(len(rows)), key=keys.__getitem__)
            kept = self._orders[sort] = (order, {rows[i]["gate_id"]: n for n, i in enumerate(order)})
        return kept

    def _found(self, needle: str) -> list[int]:
        if self._texts is None:
            self._texts = [_text(r) for r in self.rows]
        return [
            i for i, (a, b, c, d) in enumerate(self._texts) if needle in a or needle in b or needle in c or needle in d
        ]

    def page(self, show: str, search: str, sort: str, after: str) -> FleetPage:
        needle = search.lower()
        if not show and not needle:  # every gate: a slice of the order kept for this sort
            order, place = self._order(sort)
            start = place[after] + 1 if after and after in place else 0
            chosen = [self.rows[i] for i in order[start : start + PAGE]]
            matching, more = len(order), start + PAGE < len(order)
        else:  # a filter or search: only its matches are sorted (a few out of thousands, as a rule)
            flag = FLAGS.get(show)
            rows = self.rows if not needle else [self.rows[i] for i in self._found(needle)]
            chosen = sorted((r for r in rows if flag is None or flag in r["flags"]), key=_by(SORTS[sort]))
            start = next((i + 1 for i, r in enumerate(chosen) if r["gate_id"] == after), 0) if after else 0
            matching, more = len(chosen), start + PAGE < len(chosen)
            chosen = chosen[start:]
        shown = chosen[:PAGE]
        last = shown[-1]["gate_id"] if more and shown else None
        return FleetPage(shown, dict(self.counts), matching, len(self.rows), last)


def _text(r: dict[str, Any]) -> tuple[str, str, str, str]:
    """A row's SEARCHED fields, lower-cased, as four (not any() over a generator: a search scans 5,000 rows)."""
    a, b, c, d = (str(r[k] or "").lower() for k in SEARCHED)
    return a, b, c, d


def _by(key: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], tuple[Any, str]]:
    return lambda r: (key(r), r["gate_id"])
