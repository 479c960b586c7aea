"""A throwaway PostgreSQL HA cluster for the tests and bench/fleet.py: etcd and 2-3 Patroni-managed
PostgreSQL nodes on loopback, synchronous replication, with switchover and kill-the-primary helpers."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgcluster import pg_bin

# A leader that stops renewing its lock is replaced after TTL seconds; loop_wait + 2 * retry_timeout <= TTL.
TTL = 10
LOOP_WAIT = 2
RETRY_TIMEOUT = 3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"patroni cluster: {what} within {timeout:.0f} s")


@dataclass
class Node:
    """One Patroni-managed PostgreSQL: its name, ports, directory and Patroni process."""

    name: str
    workdir: Path
    pg_port: int = field(default_factory=free_port)
    rest_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"


class PatroniCluster:
    """etcd on free loopback ports with its own data dir, and `nodes` Patroni nodes in `synchronous_mode` (a
    commit is acknowledged only once a standby has it, so a killed primary loses no acknowledged commit).
    As root, Patroni and PostgreSQL run as the `postgres` user (PostgreSQL refuses to run as root)."""

    def __init__(self, workdir: Path, nodes: int = 3) -> None:
        self.workdir = workdir
        self.user = "postgres" if os.geteuid() == 0 else None
        self.nodes = [Node(f"pg{i}", workdir / f"pg{i}") for i in range(nodes)]
        self.etcd_port, self.etcd_peer = free_port(), free_port()
        self.scope = f"gate-{self.etcd_port}"
        self.etcd: subprocess.Popen[bytes] | None = None

    # --- life cycle -------------------------------------------------------------------------------------------
    def start(self, timeout: float = 180) -> PatroniCluster:
        if shutil.which("patroni") is None or shutil.which("etcd") is None or pg_bin("initdb") is None:
            raise FileNotFoundError("patroni, etcd and PostgreSQL are needed (./install.sh --dev installs them)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._own(self.workdir)
        self._start_etcd()
        for node in self.nodes:
            self.start_node(node.name, wait=False)
        wait_for(self.leader, timeout, "no leader elected")
        with self.connect("postgres") as db:
            if not db.execute("SELECT 1 FROM pg_database WHERE datname = 'gate'").fetchone():
                db.execute("CREATE DATABASE gate")
        wait_for(self.ready, timeout, "no synchronous standby")
        return self

    def stop(self) -> None:
        for node in self.nodes:
            self.kill(node.name)
        if self.etcd is not None and self.etcd.poll() is None:
            os.killpg(self.etcd.pid, signal.SIGKILL)
            self.etcd.wait(10)
        self.etcd = None

    def _own(self, path: Path) -> None:
        if self.user is not None:
            shutil.chown(path, self.user)

    def _start_etcd(self) -> None:
        d = self.workdir / "etcd"
        d.mkdir(exist_ok=True)
        client, peer = f"http://127.0.0.1:{self.etcd_port}", f"http://127.0.0.1:{self.etcd_peer}"
        cmd = [
            *("etcd", "--name", "etcd0", "--data-dir", str(d / "data")),
            *("--listen-client-urls", client, "--advertise-client-urls", client),
            *("--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer),
            *("--initial-cluster", f"etcd0={peer}", "--initial-cluster-state", "new"),
            *("--initial-cluster-token", self.scope),
        ]
        log = (d / "log").open("wb")
        self.etcd = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(lambda: self._http(f"{client}/health"), 60, "etcd did not answer")

    def _config(self, node: Node) -> Path:
        pg = f"127.0.0.1:{node.pg_port}"
        conf = {
            "scope": self.scope,
            "name": node.name,
            "log": {"level": "INFO"},
            "restapi": {"listen": f"127.0.0.1:{node.rest_port}", "connect_address": f"127.0.0.1:{node.rest_port}"},
            "etcd3": {"hosts": [f"127.0.0.1:{self.etcd_port}"]},
            "bootstrap": {
                "dcs": {
                    "ttl": TTL,
                    "loop_wait": LOOP_WAIT,
                    "retry_timeout": RETRY_TIMEOUT,
                    "synchronous_mode": True,
                    "postgresql": {
                        "use_pg_rewind": True,
                        "parameters": {"wal_log_hints": "on", "max_connections": 60, "max_wal_senders": 10},
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"auth": "trust"}],
            },
            "postgresql": {
                "listen": pg,
                "connect_address": pg,
                "data_dir": str(node.data),
                "bin_dir": str(Path(pg_bin("initdb") or "initdb").resolve().parent),
                "pgpass": str(node.workdir / "pgpass"),
                "authentication": {
                    "superuser": {"username": "gate", "password": "gate"},
                    "replication": {"username": "replicator", "password": "replicator"},
                    "rewind": {"username": "gate", "password": "gate"},
                },
                "parameters": {"unix_socket_directories": str(node.workdir)},
                "pg_hba": [
                    "local all all trust",
                    "host all all 127.0.0.1/32 trust",
                    "host replication replicator 127.0.0.1/32 trust",
                ],
            },
            "tags": {"nofailover": False, "noloadbalance": False},
        }
        path = node.workdir / "patroni.yml"
        path.write_text(json.dumps(conf, indent=1))  # JSON is YAML
        return path

    def start_node(self, name: str, wait: bool = True, timeout: float = 120) -> None:
        """Start (or restart, after `kill`) one node's Patroni; with `wait`, until it streams from the leader."""
        node = self.node(name)
        node.workdir.mkdir(parents=True, exist_ok=True)
        self._own(node.workdir)
        conf = self._config(node)
        log = (node.workdir / "patroni.log").open("ab")
        node.proc = subprocess.Popen(
            ["patroni", str(conf)], stdout=log, stderr=subprocess.STDOUT, user=self.user, start_new_session=True
        )
        if wait:
            wait_for(lambda: self.state(name) in ("running", "streaming"), timeout, f"{name} did not rejoin")

    def kill(self, name: str) -> None:
        """The machine dies: SIGKILL its Patroni, its postmaster and every backend (no shutdown, no goodbye)."""
        node = self.node(name)
        if node.proc is not None and node.proc.poll() is None:
            os.killpg(node.proc.pid, signal.SIGKILL)
            node.proc.wait(10)
        node.proc = None
        pidfile = node.data / "postmaster.pid"
        try:
            postmaster = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        for pid in [postmaster, *_children(postmaster)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not _alive(postmaster), 20, f"{name}'s postmaster did not die")

    # --- what the cluster says --------------------------------------------------------------------------------
    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def members(self) -> list[dict[str, Any]]:
        """Patroni's view of the members (name, role, state, lag), from any node that answers."""
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                body = self._http(f"{node.rest}/cluster")
                if body:
                    members: list[dict[str, Any]] = json.loads(body).get("members", [])
                    return members
        return []

    def role(self, name: str) -> str | None:
        return next((m.get("role") for m in self.members() if m.get("name") == name), None)

    def state(self, name: str) -> str | None:
        return next((m.get("state") for m in self.members() if m.get("name") == name), None)

    def leader(self) -> str | None:
        """The running leader, once it accepts writes."""
        for m in self.members():
            if m.get("role") == "leader" and m.get("state") == "running" and self._writable(self.node(m["name"])):
                return str(m["name"])
        return None

    def ready(self) -> tuple[str, str] | None:
        """(leader, synchronous standby) when both are there: only then can a primary be lost without a commit."""
        lead, sync = self.leader(), self.sync_standby()
        return (lead, sync) if lead and sync else None

    def sync_standby(self) -> str | None:
        return next((str(m["name"]) for m in self.members() if m.get("role") == "sync_standby"), None)

    def url(self, db: str = "gate", target: str = "read-write") -> str:
        """libpq's multi-host URL over every node: `read-write` finds the primary; `any`/`prefer-standby` for reads."""
        hosts = ",".join(f"127.0.0.1:{n.pg_port}" for n in self.nodes)
        return f"postgresql://gate@{hosts}/{db}?target_session_attrs={target}&connect_timeout=3"

    def connect(self, db: str = "gate") -> Any:
        import psycopg

        return psycopg.connect(self.url(db), autocommit=True)

    def _writable(self, node: Node) -> bool:
        import psycopg

        try:
            with psycopg.connect(f"postgresql://gate@127.0.0.1:{node.pg_port}/postgres", connect_timeout=2) as db:
                row = db.execute("SELECT pg_is_in_recovery()").fetchone()
                return row is not None and not row[0]
        except psycopg.Error:
            return False

    # --- failures on purpose ----------------------------------------------------------------------------------
    def switchover(self, timeout: float = 120) -> str:
        """A planned switchover to the synchronous standby; returns the new leader once it accepts writes."""
        old, candidate = wait_for(self.ready, timeout, "no leader with a synchronous standby to switch over")
        body = json.dumps({"leader": old, "candidate": candidate}).encode()
        req = urllib.request.Request(f"{self.node(old).rest}/switchover", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=60) as resp:
            resp.read()
        return str(wait_for(lambda: (lead := self.leader()) not in (None, old) and lead, timeout, "no switchover"))

    def kill_primary(self, timeout: float = 120) -> tuple[str, str]:
        """SIGKILL the primary's machine; returns (old, new) once a new primary accepts writes. The old node
        stays down: `start_node(old)` brings it back as a replica."""
        old, _ = wait_for(self.ready, timeout, "no leader with a synchronous standby")
        self.kill(old)
        new = wait_for(lambda: (lead := self.leader()) not in (None, old) and lead, timeout, "no new leader")
        return old, str(new)

    def heal(self, timeout: float = 180) -> None:
        """Every node running again, and a synchronous standby in place."""
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                self.start_node(node.name, wait=False)
        wait_for(
            lambda: len([m for m in self.members() if m.get("state") in ("running", "streaming")]) == len(self.nodes),
            timeout,
            "nodes did not rejoin",
        )
        wait_for(self.ready, timeout, "no leader with a synchronous standby")

    @staticmethod
    def _http(url: str) -> bytes | None:
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                return bytes(resp.read())
        except (urllib.error.URLError, OSError, ValueError):
            return None


def _children(parent: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
