"""A throwaway PostgreSQL cluster for the tests and the central benchmark (not shipped with gate)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


def pg_bin(tool: str) -> str | None:
    """A PostgreSQL server program: on PATH, or in Debian's /usr/lib/postgresql/<version>/bin (newest)."""
    found = shutil.which(tool)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"), key=lambda p: int(p.parts[-3]))
    return str(versions[-1]) if versions else None


class PgCluster:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl) in `workdir` on `port`: for the tests and the central
    benchmark. As root, the server runs as the `postgres` user (PostgreSQL refuses to run as root)."""

    def __init__(self, workdir: Path, port: int) -> None:
        self.workdir, self.port = workdir, port
        self.data = workdir / "pgdata"
        self.user = "postgres" if os.geteuid() == 0 else None
        self.url = f"postgresql://gate@127.0.0.1:{port}/gate"

    def _run(self, *cmd: str) -> None:
        subprocess.run(cmd, check=True, capture_output=True, timeout=120, user=self.user, cwd=self.workdir)

    def start(self) -> PgCluster:
        initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise FileNotFoundError("PostgreSQL server programs (initdb, pg_ctl) are not installed")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            shutil.chown(self.workdir, self.user)
        self._run(initdb, "-D", str(self.data), "-A", "trust", "-U", "gate", "-E", "UTF8", "--no-sync")
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.workdir} -c max_connections=50"
        self._run(pg_ctl, "-D", str(self.data), "-o", opts, "-l", str(self.workdir / "log"), "-w", "start")
        import psycopg

        with psycopg.connect(self.url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as db:
            db.execute("CREATE DATABASE gate")
        return self

    def stop(self) -> None:
        pg_ctl = pg_bin("pg_ctl")
        if pg_ctl is not None and self.data.exists():
            subprocess.run(
                [pg_ctl, "-D", str(self.data), "-m", "immediate", "stop"],
                capture_output=True,
                timeout=60,
                user=self.user,
            )
