"""The PostgreSQL roles in docs/operations.md work as written: each documented statement run as the doc says,
then each central command as the role it is documented for (a real throwaway PostgreSQL)."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from test_central_db import checkin

ROOT = Path(__file__).resolve().parent.parent
ROLES = ("collector", "epi", "ops")


def documented_sql() -> list[str]:
    """The two ```sql blocks under "PostgreSQL layout": the roles (as a superuser), then the grants (as the
    tables' owner, once the first collector has created them)."""
    text = (ROOT / "docs/operations.md").read_text()
    section = text[text.index("**PostgreSQL layout.**") : text.index("**Retention.**")]
    return re.findall(r"```sql\n(.*?)```", section, re.S)


def statements(block: str) -> list[str]:
    code = "\n".join(line.split("--", 1)[0] for line in block.splitlines())
    return [s.strip() for s in code.split(";") if s.strip()]


def as_role(url: str, role: str) -> str:
    return re.sub(r"//[^@/]+@", f"//{role}@", url)


def central(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gate", "central", *args], capture_output=True, text=True, timeout=60)


def test_each_documented_role_runs_its_documented_commands(pg_url: str) -> None:
    roles_sql, grants_sql = documented_sql()
    with psycopg.connect(pg_url, autocommit=True) as db:
        for sql in statements(roles_sql):
            db.execute(sql)
    collector, epi, ops = (as_role(pg_url, r) for r in ROLES)
    try:
        from gate.central.db import open_store

        now = time.time()
        s = open_store(collector)  # what `gate central collect --db postgresql://collector@…` does
        s.write([checkin("tok-case", "rail-central", now - 60), checkin("tok-near", "rail-central", now)], [])
        s.seen("lane-1", "state", {"mode": "normal"}, now)
        s.close()
        with psycopg.connect(collector, autocommit=True) as db:
            for sql in statements(grants_sql):
                db.execute(sql)
        assert central("purge", "--db", collector).returncode == 0
        for cmd in (
            ("trace", "tok-near", "--db", epi, "--operator", "epi-07", "--json"),
            ("contacts", "tok-case", "--db", epi, "--operator", "epi-07"),
            ("fleet", "--db", ops),
        ):
            r = central(*cmd)
            assert r.returncode == 0, (cmd, r.stderr)
        assert "lane-1" in central("fleet", "--db", ops).stdout
        # and nothing more: tracing staff cannot read the fleet or the quarantine, ops no check-in
        r = central("fleet", "--db", epi)
        assert r.returncode == 1 and "PostgreSQL refused: permission denied for table fleet" in r.stderr
        r = central("trace", "tok-near", "--db", ops, "--operator", "ops-1")
        assert r.returncode == 1 and "permission denied for table checkins" in r.stderr, r.stderr
        with psycopg.connect(epi) as db:
            try:
                db.execute("SELECT count(*) FROM quarantine")
                raise AssertionError("epi read the quarantine")
            except psycopg.errors.InsufficientPrivilege:
                pass
    finally:
        with psycopg.connect(pg_url, autocommit=True) as db:
            for role in ROLES:
                db.execute(f"DROP OWNED BY {role} CASCADE")
                db.execute(f"DROP ROLE {role}")
