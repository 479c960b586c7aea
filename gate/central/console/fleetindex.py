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


@dataclass(frozen=True)
class FleetIndex:
    """Made once per report (by the worker that reads it), so a request is a filter and a slice, never a sort:
    the gate id breaks every tie, so sorting all rows then filtering gives the order filtering then sorting did."""

    rows: list[dict[str, Any]]
    counts: dict[str, int]
    orders: dict[str, list[int]]  # sort name -> row numbers in (key, gate id) order
    places: dict[str, dict[str, int]]  # sort name -> gate id -> its place in that order
    texts: list[tuple[str, ...]]  # row number -> its searched fields, lower-cased
    flagged: dict[str, frozenset[int]]  # FLAGS key -> row numbers carrying the flag

    @classmethod
    def of(cls, report: list[dict[str, Any]]) -> FleetIndex:
        orders = {name: _ordered(report, key) for name, key in SORTS.items()}
        places = {name: {report[i]["gate_id"]: n for n, i in enumerate(order)} for name, order in orders.items()}
        texts = [tuple(str(r[k] or "").lower() for k in SEARCHED) for r in report]
        flagged = {
            name: frozenset(i for i, r in enumerate(report) if flag in r["flags"]) for name, flag in FLAGS.items()
        }
        counts = {name: len(rows) for name, rows in flagged.items()}
        return cls(report, counts, orders, places, texts, flagged)

    def page(self, show: str, search: str, sort: str, after: str) -> FleetPage:
        order, needle = self.orders[sort], search.lower()
        if not show and not needle:  # every gate: the next page is a slice of the order
            chosen_places: range | list[int] = range(len(order))
        else:
            flagged, texts = self.flagged.get(show), self.texts
            chosen_places = [
                n
                for n, i in enumerate(order)
                if (flagged is None or i in flagged) and (not needle or any(needle in t for t in texts[i]))
            ]
        start = 0
        if after and (place := self.places[sort].get(after)) is not None:
            at = bisect_left(chosen_places, place)
            start = at + 1 if at < len(chosen_places) and chosen_places[at] == place else 0
        rows = [self.rows[order[n]] for n in chosen_places[start : start + PAGE]]
        more = start + PAGE < len(chosen_places)
        return FleetPage(
            rows, dict(self.counts), len(chosen_places), len(self.rows), rows[-1]["gate_id"] if more and rows else None
        )


def _ordered(report: list[dict[str, Any]], key: Callable[[dict[str, Any]], Any]) -> list[int]:
    return sorted(range(len(report)), key=lambda i: (key(report[i]), report[i]["gate_id"]))
