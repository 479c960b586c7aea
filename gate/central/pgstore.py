"""Central's check-ins in PostgreSQL (psycopg 3): partitioned by UTC day, batches by COPY, idempotent on
event_id, so that several collectors write one database and a day past retention is dropped whole."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg

from gate.central.accounts import SESSIONS_INDEX, SESSIONS_SQL, USERS_SQL
from gate.central.commandlog import COMMANDS_SQL
from gate.central.pgconn import Link
from gate.central.store import ALL_COLS, DAY, INDEXES, Quarantined, Queries, Row, days, merge_seen

SCHEMA = """
CREATE TABLE IF NOT EXISTS checkins (
    event_id text NOT NULL, type text, gate_id text, venue_id text, venue_name text, token text, kind text,
    decision text, reason text, companions integer, companion_index integer, outcome text, decision_id text,
    operator text, time double precision NOT NULL, clock_synced integer, payload text NOT NULL,
    PRIMARY KEY (event_id, time)
) PARTITION BY RANGE (time);
CREATE INDEX IF NOT EXISTS checkins_token ON checkins (token, time);
CREATE INDEX IF NOT EXISTS checkins_venue ON checkins (venue_id, time);
CREATE TABLE IF NOT EXISTS quarantine (
    id bigserial PRIMARY KEY, topic text NOT NULL, reason text NOT NULL, detail text NOT NULL,
    received_at double precision NOT NULL, payload bytea NOT NULL
);
CREATE TABLE IF NOT EXISTS audit (
    id bigserial PRIMARY KEY, at double precision NOT NULL, operator text NOT NULL, action text NOT NULL,
    params text NOT NULL, rows integer NOT NULL
);
CREATE TABLE IF NOT EXISTS fleet (gate_id text PRIMARY KEY, doc text NOT NULL);
"""
SCHEMA += ";\n".join((USERS_SQL, SESSIONS_SQL, SESSIONS_INDEX, COMMANDS_SQL)) + ";\n"
LOCK = 7_242_817  # advisory lock id: schema and partition changes, one collector at a time


def partition(day: int) -> str:
    return "checkins_" + datetime.fromtimestamp(day * DAY, UTC).strftime("%Y%m%d")


class PgStore(Queries):
    """Idempotent on (event_id, time): a check-in's time never changes, so a redelivered one lands in the
    same day's partition and is skipped there (a partitioned table's unique key must hold the partition key)."""

    PARAM = "%s"
    DIGEST = "md5(doc)"

    def __init__(self, url: str) -> None:
        self.url = url
        self.link = Link(url)  # a multi-host URL: after a failover, the next call reconnects to the new primary
        self.db = self.link.db
        self._days: set[int] = set()
        present = self.db.execute("SELECT to_regclass('fleet') IS NOT NULL").fetchone()
        if not (present and present[0]):  # a reader's role (tracing staff) need not be able to create tables
            with self.db.transaction():
                self.db.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK,))
                self.db.execute(SCHEMA)
        self._days = set(self._partitions().values())
        self._indexes()

    def _indexes(self) -> None:
        """The console's indexes, on a collection from before them; skipped for a role that may not create."""
        have = {r[0] for r in self.db.execute("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")}
        missing = [sql for sql in INDEXES if sql.split()[5] not in have]
        if not missing:
            return
        try:
            with self.db.transaction():
                self.db.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK,))
                for sql in missing:
                    self.db.execute(sql)
        except psycopg.errors.InsufficientPrivilege:
            pass  # a reader's role (tracing staff): the owner's next start makes them

    def _use(self) -> psycopg.Connection[tuple[Any, ...]]:
        """The connection, a new one if the old broke; on a new one (maybe a new primary) the partitions it has
        are read again rather than trusted from the old."""
        db = self.link.get()
        if db is not self.db:
            self.db = db
            self._days = set(self._partitions().values())
        return db

    def _run(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """A query from the console or a CLI; a read that finds its connection broken (the primary changed since
        the last call) is asked once more of the new primary rather than failing the page."""
        self._use()
        try:
            return super()._run(sql, params)
        except psycopg.OperationalError:
            if not (self.db.broken and sql.lstrip().upper().startswith("SELECT")):
                raise
            self._use()
            return super()._run(sql, params)

    def _partitions(self) -> dict[str, int]:
        """Each day partition of checkins, by name, with its UTC day number."""
        rows = self.db.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'checkins'"
        )
        out = {}
        for (name,) in rows:
            when = datetime.strptime(name.removeprefix("checkins_"), "%Y%m%d").replace(tzinfo=UTC)
            out[name] = int(when.timestamp()) // DAY
        return out

    def _ensure_days(self, wanted: set[int]) -> None:
        missing = wanted - self._days
        if not missing:
            return
        with self.db.transaction():
            self.db.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK,))
            for day in sorted(missing):
                self.db.execute(
                    f"CREATE TABLE IF NOT EXISTS {partition(day)} PARTITION OF checkins "
                    f"FOR VALUES FROM ({day * DAY}) TO ({(day + 1) * DAY})"
                )
        self._days |= missing

    def write(self, rows: Sequence[Row], quarantined: Sequence[Quarantined]) -> int:
        self._use()
        try:
            return self._write(rows, quarantined)
        except psycopg.errors.ReadOnlySqlTransaction:
            self.link.drop()  # a primary demoted under us: find the new one next time
            raise

    def _write(self, rows: Sequence[Row], quarantined: Sequence[Quarantined]) -> int:
        self._ensure_days(days(rows))
        new = 0
        with self.db.transaction(), self.db.cursor() as cur:
            if rows:
                cur.execute("CREATE TEMP TABLE IF NOT EXISTS incoming (LIKE checkins) ON COMMIT DELETE ROWS")
                with cur.copy(f"COPY incoming ({', '.join(ALL_COLS)}) FROM STDIN") as copy:
                    for r in rows:
                        copy.write_row(r)
                cur.execute(
                    f"INSERT INTO checkins ({', '.join(ALL_COLS)}) SELECT DISTINCT ON (event_id, time) "
                    f"{', '.join(ALL_COLS)} FROM incoming ON CONFLICT DO NOTHING"
                )
                new = cur.rowcount
            if quarantined:
                cur.executemany(
                    "INSERT INTO quarantine (topic, reason, detail, received_at, payload) VALUES (%s, %s, %s, %s, %s)",
                    quarantined,
                )
        return new

    def purge(self, before: float) -> int:
        """Whole days before `before`'s day are dropped as partitions (no row-by-row delete, no bloat)."""
        cutoff = int(before // DAY)
        self._use()
        gone = 0
        with self.db.transaction():
            self.db.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK,))
            for name, day in sorted(self._partitions().items()):
                if day < cutoff:
                    row = self.db.execute(f"SELECT count(*) FROM {name}").fetchone()
                    gone += int(row[0]) if row else 0
                    self.db.execute(f"DROP TABLE {name}")
                    self._days.discard(day)
        return gone

    def seen(self, gate_id: str, kind: str, body: dict[str, Any], at: float) -> None:
        self._use()
        with self.db.transaction():
            old = self.db.execute("SELECT doc FROM fleet WHERE gate_id = %s FOR UPDATE", (gate_id,)).fetchone()
            doc = merge_seen(json.loads(old[0]) if old else {}, kind, body, at)
            self.db.execute(
                "INSERT INTO fleet VALUES (%s, %s) ON CONFLICT (gate_id) DO UPDATE SET doc = excluded.doc",
                (gate_id, json.dumps(doc)),
            )

    def close(self) -> None:
        self.link.close()
