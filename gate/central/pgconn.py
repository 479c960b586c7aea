"""Central's PostgreSQL connection across a failover: libpq multi-host URLs find the primary, connects and dead
peers are bounded in time, and a broken connection is replaced by a fresh one on the next use."""

from __future__ import annotations

import logging
import time

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

log = logging.getLogger(__name__)

# Added to a URL that does not set them: a connect attempt to a machine that is gone gives up after seconds (libpq
# tries each host of a multi-host URL in turn), and a connection whose peer vanished without a word (power cut,
# not a closed socket) is found broken in ~15 s rather than the kernel's two hours.
DEFAULTS = {
    "connect_timeout": "5",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "15000",
}


def hosts(url: str) -> list[str]:
    """The `host:port` list of a libpq URL (several for `postgresql://h1:p1,h2:p2/db`), for messages."""
    params = conninfo_to_dict(url)
    names = str(params.get("host") or "localhost").split(",")
    ports = str(params.get("port") or "5432").split(",")
    ports = ports * len(names) if len(ports) == 1 else ports
    return [f"{h}:{p}" for h, p in zip(names, ports, strict=False)]


def connect(url: str) -> psycopg.Connection[tuple[object, ...]]:
    """An autocommit connection (transactions are explicit), with DEFAULTS where the URL is silent. With several
    hosts, `target_session_attrs=read-write` in the URL makes libpq skip standbys and land on the primary."""
    params = conninfo_to_dict(url)
    db = psycopg.connect(make_conninfo(url, **{k: v for k, v in DEFAULTS.items() if k not in params}), autocommit=True)
    # The contact query's plan is a few index probes, but its row estimate passes jit_above_cost: compiling
    # it took ~0.5 s of a 0.5 s query at 10M rows. Nothing central runs is long enough to repay JIT.
    db.execute("SET jit = off")
    return db


def where(db: psycopg.Connection[tuple[object, ...]]) -> str:
    return f"{db.info.host}:{db.info.port}"


class Link:
    """One connection that outlives its server: `get()` returns it while it works and a new one (to whichever
    host is primary now) after it broke. A failure is raised to the caller, who decides when to try again (a
    collector keeps its batch un-acknowledged and backs off); nothing is retried here behind its back."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.multi = len(hosts(url)) > 1
        self.db = connect(url)
        self.lost_at: float | None = None
        self._check_sync()

    def get(self) -> psycopg.Connection[tuple[object, ...]]:
        if not (self.db.closed or self.db.broken):
            return self.db
        if self.lost_at is None:
            self.lost_at = time.monotonic()
            log.error(
                "postgresql: the connection to %s broke; looking for the primary in %s",
                where(self.db),
                ", ".join(hosts(self.url)),
            )
        self.db = connect(self.url)  # raises while no host is a usable primary; the caller backs off
        log.warning("postgresql: connected to %s after %.1f s", where(self.db), time.monotonic() - self.lost_at)
        self.lost_at = None
        self._check_sync()
        return self.db

    def drop(self) -> None:
        """Close a connection that answered wrongly (a standby that refused a write): the next `get()` finds
        the primary again."""
        self.db.close()

    def _check_sync(self) -> None:
        """Several hosts but no synchronous standby: a commit acknowledged here may be lost when this primary dies
        (Patroni's `synchronous_mode: true` prevents that); say so once per connection."""
        if not self.multi:
            return
        row = self.db.execute("SHOW synchronous_standby_names").fetchone()
        if row is None or not str(row[0]).strip():
            log.warning(
                "postgresql: %s has no synchronous standby: a failover may lose commits it acknowledged",
                where(self.db),
            )

    def close(self) -> None:
        self.db.close()
