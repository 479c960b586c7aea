"""The contact query in pages: deduplicated, ordered and counted by the database, so a page costs 200 rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ALL = 2**62  # "no limit" both databases take (SQLite's -1 and PostgreSQL's NULL are not shared)
START = (-1.0, "")  # before every (time, event_id): check-in times are never negative

# Each other token's decision at one of the token's venues within +/- the window of one of the token's
# decisions in the period, once: paired with the nearest of the token's (`nth` = 1). `?` placeholders.
PAIRS = """
SELECT o.token, o.venue_id, o.venue_name, o.gate_id, o.time, o.decision, o.reason, o.companions, o.kind,
       o.event_id, m.time AS my_time, m.gate_id AS my_gate,
       row_number() OVER (PARTITION BY o.event_id ORDER BY abs(o.time - m.time), m.time, m.event_id) AS nth
FROM checkins m
JOIN checkins o ON o.venue_id = m.venue_id AND o.time >= m.time - ? AND o.time <= m.time + ?
WHERE m.token = ? AND m.type = 'decision' AND m.time >= ? AND m.time <= ?
  AND o.type = 'decision' AND o.token IS NOT NULL AND o.token <> ?
"""
PAGE_COLS = (
    "token",
    "venue_id",
    "venue_name",
    "gate_id",
    "time",
    "decision",
    "reason",
    "companions",
    "kind",
    "event_id",
    "my_time",
    "my_gate",
)
# One statement: the totals over every contact (codes, people counting companions, check-ins) and one page
# in (time, event_id) order after a keyset; the totals come on every row, and alone on an empty page.
PAGE_SQL = f"""
WITH pairs AS ({PAIRS}),
firsts AS (SELECT * FROM pairs WHERE nth = 1),
page AS (SELECT * FROM firsts WHERE (time, event_id) > (?, ?) ORDER BY time, event_id LIMIT ?),
per_code AS (SELECT token, max(1 + coalesce(companions, 0)) AS grp, count(*) AS n FROM firsts GROUP BY token),
totals AS (SELECT count(*) AS codes, coalesce(sum(grp), 0) AS people, coalesce(sum(n), 0) AS found
           FROM per_code)
SELECT totals.codes, totals.people, totals.found, {", ".join("page." + c for c in PAGE_COLS)}
FROM totals LEFT JOIN page ON 1 = 1
ORDER BY page.time, page.event_id
"""


@dataclass(frozen=True)
class ContactPage:
    """Up to `limit` contact check-ins after a keyset, and the totals over all of them."""

    rows: list[dict[str, Any]]
    codes: int  # contact codes (tokens)
    people: int  # with companions: a code's largest group, once
    found: int  # contact check-ins in all pages


class ContactQueries:
    """The paged contact query; `_run` is the store's (its driver's placeholders)."""

    def _run(self, sql: str, params: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    def contacts_page(
        self, token: str, t_from: float, t_to: float, window: float, after: tuple[float, str] | None, limit: int
    ) -> ContactPage:
        start = after or START
        params = (window, window, token, t_from, t_to, token, start[0], start[1], limit)
        rows = self._run(PAGE_SQL, params).fetchall()
        codes, people, found = (int(v) for v in rows[0][:3])
        page = [dict(zip(PAGE_COLS, r[3:], strict=True)) for r in rows if r[3] is not None]
        return ContactPage(page, codes, people, found)
