"""Console operators and their sessions, in central's database (SQLite or PostgreSQL, the same SQL): every
console process behind one proxy sees the same sessions, and a change to an operator ends theirs at once."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import Any

from gate.central.commandlog import COMMANDS_SQL

# A name, a role, an argon2 hash and whether the account is disabled; no personal data.
USERS_SQL = (
    "CREATE TABLE IF NOT EXISTS console_users "
    "(name TEXT PRIMARY KEY, role TEXT NOT NULL, hash TEXT NOT NULL, created DOUBLE PRECISION NOT NULL, "
    "disabled INTEGER NOT NULL DEFAULT 0)"
)
# A session is found by the hash of its cookie: a copy of this table signs nobody in.
SESSIONS_SQL = (
    "CREATE TABLE IF NOT EXISTS console_sessions "
    "(id TEXT PRIMARY KEY, name TEXT NOT NULL, csrf TEXT NOT NULL, started DOUBLE PRECISION NOT NULL, "
    "touched DOUBLE PRECISION NOT NULL)"
)
SESSIONS_INDEX = "CREATE INDEX IF NOT EXISTS console_sessions_name ON console_sessions (name)"
TOUCH_EVERY = 30.0  # seconds: an active session's idle clock is written at most this often, not per request


def session_key(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


class Accounts:
    """The operators' and sessions' queries; `_run` is the store's (its driver's placeholders)."""

    def _run(self, sql: str, params: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    def console_schema(self) -> None:
        """The tables (and the `disabled` column a collection from before it lacks): needs a role that may create."""
        self._run(USERS_SQL)
        self._run(SESSIONS_SQL)
        self._run(SESSIONS_INDEX)
        self._run(COMMANDS_SQL)
        try:
            self._run("SELECT disabled FROM console_users WHERE name = ?", ("-",)).fetchall()
        except Exception:  # the driver's "no such column": a collection from before user administration
            self._run("ALTER TABLE console_users ADD COLUMN disabled INTEGER NOT NULL DEFAULT 0")

    def user(self, name: str) -> dict[str, Any] | None:
        row = self._run("SELECT name, role, hash, disabled FROM console_users WHERE name = ?", (name,)).fetchone()
        return None if row is None else {"name": row[0], "role": row[1], "hash": row[2], "disabled": bool(row[3])}

    def users(self) -> list[dict[str, Any]]:
        cur = self._run(
            "SELECT u.name, u.role, u.disabled, u.created, (SELECT count(*) FROM console_sessions s "
            "WHERE s.name = u.name) FROM console_users u ORDER BY u.name"
        )
        return [{"name": n, "role": r, "disabled": bool(d), "created": c, "sessions": s} for n, r, d, c, s in cur]

    def put_user(self, name: str, role: str, password_hash: str) -> None:
        self.console_schema()  # a collection made before the console has no such tables yet
        self._run(
            "INSERT INTO console_users (name, role, hash, created, disabled) VALUES (?, ?, ?, ?, 0) "
            "ON CONFLICT (name) DO UPDATE SET role = excluded.role, hash = excluded.hash, disabled = 0",
            (name, role, password_hash, time.time()),
        )
        self.end_sessions(name)

    def change_user(
        self,
        name: str,
        *,
        role: str | None = None,
        password_hash: str | None = None,
        disabled: bool | None = None,
        remove: bool = False,
    ) -> bool:
        """Change or remove an operator, ending every session of theirs; False if there is no such operator."""
        if remove:
            found = self._run("DELETE FROM console_users WHERE name = ?", (name,)).rowcount
        else:
            sets = {"role": role, "hash": password_hash, "disabled": None if disabled is None else int(disabled)}
            given = {k: v for k, v in sets.items() if v is not None}
            assign = ", ".join(f"{k} = ?" for k in given) or "name = name"
            found = self._run(f"UPDATE console_users SET {assign} WHERE name = ?", (*given.values(), name)).rowcount
        self.end_sessions(name)
        return bool(found)

    def start_session(self, sid: str, name: str, csrf: str) -> None:
        now = time.time()
        self._run(
            "INSERT INTO console_sessions (id, name, csrf, started, touched) VALUES (?, ?, ?, ?, ?)",
            (session_key(sid), name, csrf, now, now),
        )

    def session(self, sid: str, idle: float, longest: float) -> dict[str, Any] | None:
        """The live session with this cookie (name, role, csrf) of an enabled operator; expired ones end here."""
        key, now = session_key(sid), time.time()
        row = self._run(
            "SELECT s.name, u.role, s.csrf, s.started, s.touched, u.disabled FROM console_sessions s "
            "JOIN console_users u ON u.name = s.name WHERE s.id = ?",
            (key,),
        ).fetchone()
        if row is None:
            return None
        name, role, csrf, started, touched, disabled = row
        if disabled or now - touched > idle or now - started > longest:
            self._run("DELETE FROM console_sessions WHERE id = ?", (key,))
            return None
        if now - touched > TOUCH_EVERY:
            self._run("UPDATE console_sessions SET touched = ? WHERE id = ?", (now, key))
        return {"name": name, "role": role, "csrf": csrf}

    def end_session(self, sid: str) -> None:
        self._run("DELETE FROM console_sessions WHERE id = ?", (session_key(sid),))

    def end_sessions(self, name: str) -> None:
        self._run("DELETE FROM console_sessions WHERE name = ?", (name,))
