"""Opening central's store by URL: a SQLite path, or postgresql://… (psycopg 3, loaded only then)."""

from __future__ import annotations

from pathlib import Path

from gate.central.store import SqliteStore, Store


def open_store(url: str | Path) -> Store:
    """`postgresql://…` (or `postgres://…`): PostgreSQL via psycopg 3; anything else: a SQLite file path."""
    text = str(url)
    if text.startswith(("postgresql://", "postgres://")):
        from gate.central.pgstore import PgStore

        return PgStore(text)
    return SqliteStore(Path(text.removeprefix("sqlite:///").removeprefix("sqlite://")))
