"""Where central keeps check-ins: SQLite (one machine, the default) or PostgreSQL (a city), same behaviour.

Both stores take rows in batches, idempotent on `event_id`; keep a quarantine of what was not genuine, an
audit of every query, and the last state of every gate; and delete check-ins past their retention."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gate.central.accounts import Accounts
from gate.central.commandlog import CommandLog, Sent
from gate.central.contacts import ContactPage, ContactQueries
from gate.core.sqlite import private

COLS = (
    "event_id",
    "type",
    "gate_id",
    "venue_id",
    "venue_name",
    "token",
    "kind",
    "decision",
    "reason",
    "companions",
    "companion_index",
    "outcome",
    "decision_id",
    "operator",
    "time",
    "clock_synced",
)
ALL_COLS = (*COLS, "payload")
Row = tuple[Any, ...]  # ALL_COLS, in order
Quarantined = tuple[str, str, str, float, bytes]  # topic, reason, detail, received_at, payload
DAY = 86400
FLEET_HISTORY = 30  # outbox depths kept per gate, for the trend


def venue_key(venue: dict[str, Any]) -> Any:
    """The venue contact tracing meets people in: a station's id; a vehicle's `venue/vehicle/run` (a taxi's
    `venue/vehicle`), so that riders of one bus trip are contacts wherever each boarded, and riders of the same
    bus on another trip, or of another bus on the route, are not."""
    if not venue.get("vehicle_id"):
        return venue.get("id")
    return "/".join(str(p) for p in (venue.get("id"), venue["vehicle_id"], venue.get("run")) if p)


def row_of(ev: dict[str, Any], raw: bytes) -> Row:
    venue = ev.get("venue") or {}
    vals = {**ev, "venue_id": venue_key(venue), "venue_name": venue.get("name")}
    vals["clock_synced"] = None if vals.get("clock_synced") is None else int(bool(vals["clock_synced"]))
    return (*(vals.get(c) for c in COLS), raw.decode())


@dataclass(frozen=True)
class AuditQuery:
    """One page of the audit log: rows with id below `before`, newest first."""

    before: int = 2**62
    limit: int = 100
    operator: str | None = None
    action: str | None = None
    t_from: float = 0.0
    t_to: float = float("inf")


# Indexes the console's bounded pages use; made with the schema and on opening a collection from before them.
INDEXES = (
    "CREATE INDEX IF NOT EXISTS checkins_gate ON checkins (gate_id, time)",
    "CREATE INDEX IF NOT EXISTS audit_operator ON audit (operator, id)",
    "CREATE INDEX IF NOT EXISTS audit_action ON audit (action, id)",
    "CREATE INDEX IF NOT EXISTS audit_at ON audit (at)",
    # a venue's trace page in (time, event_id) order: a top-N index scan, not a sort of the venue's 28 days
    "CREATE INDEX IF NOT EXISTS checkins_venue_order ON checkins (venue_id, time, event_id)",
    # the audit page filtered by both: the same plan whatever the values (psycopg prepares it after 5 runs)
    "CREATE INDEX IF NOT EXISTS audit_who_what ON audit (operator, action, id)",
)


class Store(Protocol):
    url: str

    def write(self, rows: Sequence[Row], quarantined: Sequence[Quarantined]) -> int:
        """One transaction: new check-ins (duplicates of stored event ids are skipped) and quarantined
        messages. Returns how many check-ins were new."""
        ...

    def select(self, where: str, params: Sequence[Any], order: str = "time") -> list[dict[str, Any]]: ...

    def contacts_page(
        self, token: str, t_from: float, t_to: float, window: float, after: tuple[float, str] | None, limit: int
    ) -> ContactPage:
        """A token's contacts (gate.central.contacts): up to `limit` after `after`, and the totals."""
        ...

    def purge(self, before: float) -> int:
        """Delete check-ins older than `before`; returns rows deleted (or partitions dropped x their rows)."""
        ...

    def audit(self, operator: str, action: str, params: dict[str, Any], rows: int) -> None: ...

    def audits(self) -> list[dict[str, Any]]: ...

    def audit_page(self, q: AuditQuery) -> list[dict[str, Any]]:
        """Newest first, at most q.limit rows with id below q.before, filtered by operator, action and period."""
        ...

    def seen(self, gate_id: str, kind: str, body: dict[str, Any], at: float) -> None:
        """A gate's retained state or telemetry, for `gate central fleet`."""
        ...

    def fleet(self) -> list[dict[str, Any]]: ...

    def fleet_digests(self) -> dict[str, str]: ...

    def fleet_docs(self, gate_ids: Sequence[str]) -> dict[str, tuple[str, dict[str, Any]]]: ...

    def has_gate(self, gate_id: str) -> bool: ...

    def user(self, name: str) -> dict[str, Any] | None:
        """A console operator: name, role, password hash (never a password) and disabled."""
        ...

    def users(self) -> list[dict[str, Any]]: ...

    def put_user(self, name: str, role: str, password_hash: str) -> None: ...

    def change_user(
        self,
        name: str,
        *,
        role: str | None = None,
        password_hash: str | None = None,
        disabled: bool | None = None,
        remove: bool = False,
    ) -> bool: ...

    def console_schema(self) -> None: ...

    def start_session(self, sid: str, name: str, csrf: str) -> None: ...

    def session(self, sid: str, idle: float, longest: float) -> dict[str, Any] | None: ...

    def end_session(self, sid: str) -> None: ...

    def end_sessions(self, name: str) -> None: ...

    def command_sent(self, sent: Sent) -> None: ...

    def command_done(self, sent: Sent) -> None: ...

    def command_status(self, cid: str) -> Sent | None: ...

    def close(self) -> None: ...


# The contact query's join alone (each pairing, not deduplicated): the raw SQL the benches compare with;
# gate.central.contacts runs it deduplicated and paged. `?` placeholders (PgStore rewrites them).
CONTACTS_SQL = """
SELECT o.token, o.venue_id, o.venue_name, o.gate_id, o.time, o.decision, o.reason, o.companions, o.kind,
       o.event_id, m.time AS my_time, m.gate_id AS my_gate
FROM checkins m
JOIN checkins o ON o.venue_id = m.venue_id AND o.time >= m.time - ? AND o.time <= m.time + ?
WHERE m.token = ? AND m.type = 'decision' AND m.time >= ? AND m.time <= ?
  AND o.type = 'decision' AND o.token IS NOT NULL AND o.token <> ?
ORDER BY o.time
"""


def merge_seen(doc: dict[str, Any], kind: str, body: dict[str, Any], at: float) -> dict[str, Any]:
    """The fleet document of one gate after a state or telemetry message."""
    doc = dict(doc)
    doc["last_seen"] = at
    doc[kind] = body
    depth = body.get("outbox_depth")
    if kind == "telemetry" and isinstance(depth, int):  # periodic: a trend over time, not over changes
        history = [*doc.get("depth_history", []), [at, depth]][-FLEET_HISTORY:]
        doc["depth_history"] = history
    return doc


class Queries(Accounts, ContactQueries, CommandLog):
    """What both stores ask in the same SQL: written with `?` placeholders, `PARAM` is the driver's own."""

    db: Any
    PARAM = "?"

    def _run(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.db.execute(sql.replace("?", self.PARAM) if self.PARAM != "?" else sql, params)

    def select(self, where: str, params: Sequence[Any], order: str = "time") -> list[dict[str, Any]]:
        cur = self._run(f"SELECT {', '.join(COLS)} FROM checkins WHERE {where} ORDER BY {order}", params)
        return [dict(zip(COLS, r, strict=True)) for r in cur]

    def audit(self, operator: str, action: str, params: dict[str, Any], rows: int) -> None:
        self._run(
            "INSERT INTO audit (at, operator, action, params, rows) VALUES (?, ?, ?, ?, ?)",
            (time.time(), operator, action, json.dumps(params, sort_keys=True), rows),
        )

    def audit_page(self, q: AuditQuery) -> list[dict[str, Any]]:
        where: list[str] = ["id < ?"]
        params: list[Any] = [q.before]
        # only the conditions asked for: a prepared (generic) plan cannot tell an open bound from a narrow one
        for cond, value, used in (
            ("at >= ?", q.t_from, q.t_from > 0),
            ("at <= ?", min(q.t_to, 1e18), q.t_to < 1e18),
            ("operator = ?", q.operator, bool(q.operator)),
            ("action = ?", q.action, bool(q.action)),
        ):
            if used:
                where.append(cond)
                params.append(value)
        cur = self._run(
            f"SELECT id, at, operator, action, params, rows FROM audit WHERE {' AND '.join(where)} "
            f"ORDER BY id DESC LIMIT {int(q.limit)}",
            params,
        )
        keys = ("id", "at", "operator", "action", "params", "rows")
        return [{**dict(zip(keys, r, strict=True)), "params": json.loads(r[4])} for r in cur]

    def audits(self) -> list[dict[str, Any]]:
        cur = self._run("SELECT at, operator, action, params, rows FROM audit ORDER BY id")
        return [{"at": a, "operator": o, "action": c, "params": json.loads(p), "rows": n} for a, o, c, p, n in cur]

    def has_gate(self, gate_id: str) -> bool:
        return self._run("SELECT 1 FROM fleet WHERE gate_id = ?", (gate_id,)).fetchone() is not None

    def fleet(self) -> list[dict[str, Any]]:
        return [{"gate_id": g, **json.loads(d)} for g, d in self._run("SELECT gate_id, doc FROM fleet ORDER BY 1")]

    DIGEST = "doc"  # SQLite: the document is its own digest (a file-sized fleet); PostgreSQL: md5(doc)

    def fleet_digests(self) -> dict[str, str]:
        """Each gate's document digest: what changed since the console last read the fleet."""
        return dict(self._run(f"SELECT gate_id, {self.DIGEST} FROM fleet"))

    def fleet_docs(self, gate_ids: Sequence[str]) -> dict[str, tuple[str, dict[str, Any]]]:
        """The digest and document of the gates asked for, in chunks (a bounded statement each)."""
        out = {}
        for i in range(0, len(gate_ids), 500):
            chunk = gate_ids[i : i + 500]
            sql = f"SELECT gate_id, {self.DIGEST}, doc FROM fleet WHERE gate_id IN ({', '.join('?' * len(chunk))})"
            out.update({g: (h, {"gate_id": g, **json.loads(d)}) for g, h, d in self._run(sql, chunk)})
        return out


class SqliteStore(Queries):
    """One file, WAL, mode 0600 (it holds token ids). A batch is one transaction."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS checkins (
        event_id TEXT PRIMARY KEY, type TEXT, gate_id TEXT, venue_id TEXT, venue_name TEXT, token TEXT, kind TEXT,
        decision TEXT, reason TEXT, companions INTEGER, companion_index INTEGER, outcome TEXT, decision_id TEXT,
        operator TEXT, time REAL, clock_synced INTEGER, payload TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS checkins_token ON checkins (token, time);
    CREATE INDEX IF NOT EXISTS checkins_venue ON checkins (venue_id, time);
    CREATE TABLE IF NOT EXISTS quarantine (
        id INTEGER PRIMARY KEY, topic TEXT NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL,
        received_at REAL NOT NULL, payload BLOB NOT NULL
    );
    CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY, at REAL NOT NULL, operator TEXT NOT NULL, action TEXT NOT NULL,
        params TEXT NOT NULL, rows INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS fleet (gate_id TEXT PRIMARY KEY, doc TEXT NOT NULL);
    """

    def __init__(self, path: Path) -> None:
        self.url = str(path)
        private(path)  # the collection holds token ids: owner-only, whatever the umask
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA busy_timeout=10000")  # several collectors on one file take turns
        self.db.executescript(self.SCHEMA)
        for sql in INDEXES:
            self.db.execute(sql)
        self.console_schema()

    def write(self, rows: Sequence[Row], quarantined: Sequence[Quarantined]) -> int:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            before = db.total_changes
            db.executemany(f"INSERT OR IGNORE INTO checkins VALUES ({','.join('?' * len(ALL_COLS))})", rows)
            new = db.total_changes - before
            db.executemany(
                "INSERT INTO quarantine (topic, reason, detail, received_at, payload) VALUES (?, ?, ?, ?, ?)",
                quarantined,
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return int(new)

    def purge(self, before: float) -> int:
        return int(self.db.execute("DELETE FROM checkins WHERE time < ?", (before,)).rowcount)

    def seen(self, gate_id: str, kind: str, body: dict[str, Any], at: float) -> None:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            old = db.execute("SELECT doc FROM fleet WHERE gate_id = ?", (gate_id,)).fetchone()
            doc = merge_seen(json.loads(old[0]) if old else {}, kind, body, at)
            db.execute("INSERT OR REPLACE INTO fleet VALUES (?, ?)", (gate_id, json.dumps(doc)))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()


def day_of(t: float) -> int:
    """The UTC day number a check-in time falls in (its PostgreSQL partition)."""
    return int(t // DAY)


def days(rows: Iterable[Row]) -> set[int]:
    i = ALL_COLS.index("time")
    return {day_of(float(r[i])) for r in rows if isinstance(r[i], int | float)}
