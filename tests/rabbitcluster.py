"""A throwaway RabbitMQ cluster on loopback (Debian's rabbitmq-server), for tests and bench/fleet.py.

Each node has a unique name from its MQTT port, its own data dir, AMQP, MQTT and distribution ports; all
share one Erlang cookie (a shared HOME) and one private epmd, so they never meet a system broker. Nodes 2..n
join node 1 with `rabbitmqctl join_cluster`. Use:

    with RabbitCluster(tmp / "rmq") as c:        # or the `rabbit_cluster` fixture (one per module)
        c.mqtt_hosts    # ["127.0.0.1:port", ...], one per node: a gate's [mqtt] hosts
        c.amqp_urls     # ["amqp://guest:guest@127.0.0.1:port/%2F", ...]
        c.kill_node(0); c.restart_node(0); c.stop_node(1); c.start_node(1)
        c.ctl(0, "list_queues")                  # rabbitmqctl against node 0 (CompletedProcess, check=False)
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

BIN = Path("/usr/lib/rabbitmq/bin")
HOST = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _listening(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=0.2).close()
        return True
    except OSError:
        return False


def installed() -> bool:
    return (BIN / "rabbitmq-server").exists()


@dataclass
class RabbitNode:
    """One node: its name, ports, data dir and (while running) its process."""

    index: int
    workdir: Path
    mqtt_port: int = field(default_factory=_free_port)
    amqp_port: int = field(default_factory=_free_port)
    dist_port: int = field(default_factory=_free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def name(self) -> str:
        return f"gate-c{self.mqtt_port}@localhost"

    @property
    def mqtt_host(self) -> str:
        return f"{HOST}:{self.mqtt_port}"

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@{HOST}:{self.amqp_port}/%2F"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class RabbitCluster:
    """`size` RabbitMQ nodes with the MQTT plugin, clustered; start() returns when every node serves MQTT."""

    def __init__(self, workdir: Path, size: int = 3, *, anonymous: bool = True, timeout: float = 180.0) -> None:
        self.workdir = workdir
        self.anonymous = anonymous
        self.timeout = timeout
        self.home = workdir / "home"  # the shared cookie lives here
        self.epmd_port = _free_port()
        self.nodes = [RabbitNode(i, workdir / f"node{i + 1}") for i in range(size)]

    # -- what clients use ---------------------------------------------------------------------------
    @property
    def mqtt_hosts(self) -> list[str]:
        return [n.mqtt_host for n in self.nodes]

    @property
    def amqp_urls(self) -> list[str]:
        return [n.amqp_url for n in self.nodes]

    def env(self, node: RabbitNode) -> dict[str, str]:
        d = node.workdir
        return {
            **os.environ,
            "HOME": str(self.home),
            "RABBITMQ_NODENAME": node.name,
            "RABBITMQ_DIST_PORT": str(node.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq"),
            "RABBITMQ_PID_FILE": str(d / "pid"),
        }

    def ctl(self, index: int, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """`rabbitmqctl -n <node> ARGS` with this cluster's cookie and epmd (never a system broker)."""
        node = self.nodes[index]
        return subprocess.run(
            [str(BIN / "rabbitmqctl"), "-n", node.name, *args],
            env=self.env(node),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def shell_env(self, index: int = 0) -> dict[str, str]:
        """Environment under which a plain `rabbitmqctl ...` (as docs write it) talks to node `index`: this
        cluster's cookie and epmd, and RabbitMQ's own scripts first on PATH (Debian's /usr/sbin wrappers would
        switch to the rabbitmq user and its cookie)."""
        env = self.env(self.nodes[index])
        env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
        return env

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> RabbitCluster:
        if not installed():
            raise FileNotFoundError("rabbitmq-server is not installed (./install.sh --dev installs it)")
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(os.urandom(16).hex().upper())
            cookie.chmod(0o400)
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        subprocess.run([epmd, "-port", str(self.epmd_port), "-daemon"], check=True, timeout=30)
        for node in self.nodes:
            self._write_config(node)
            self._spawn(node)
        for node in self.nodes:
            self._await_mqtt(node)
        for node in self.nodes[1:]:
            self._join(node)
        for node in self.nodes:
            self._await_mqtt(node)
        return self

    def stop(self) -> None:
        for node in self.nodes:
            self.kill_node(node.index)
        epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        subprocess.run([epmd, "-port", str(self.epmd_port), "-kill"], capture_output=True, check=False, timeout=30)

    def kill_node(self, index: int) -> None:
        """SIGKILL the node (a machine that dies): no goodbye to its peers or clients."""
        node = self.nodes[index]
        if node.proc is not None and node.proc.poll() is None:
            os.killpg(node.proc.pid, 9)
            node.proc.wait(30)
        node.proc = None

    def stop_node(self, index: int) -> None:
        """A clean shutdown (`rabbitmqctl stop`), as an operator takes a node down for maintenance."""
        node = self.nodes[index]
        if not node.running():
            return
        self.ctl(index, "stop")
        try:
            assert node.proc is not None
            node.proc.wait(60)
        except subprocess.TimeoutExpired:
            pass
        self.kill_node(index)

    def start_node(self, index: int) -> None:
        """Start a stopped or killed node again from its data dir; it comes back as a cluster member."""
        node = self.nodes[index]
        if node.running():
            return
        self._spawn(node)
        self._await_mqtt(node)

    def restart_node(self, index: int) -> None:
        self.kill_node(index)
        self.start_node(index)

    def __enter__(self) -> RabbitCluster:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()

    # -- inside -------------------------------------------------------------------------------------
    def _write_config(self, node: RabbitNode) -> None:
        d = node.workdir
        d.mkdir(parents=True, exist_ok=True)
        (d / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {node.amqp_port}\n"
            f"mqtt.listeners.tcp.default = {node.mqtt_port}\n"
            f"mqtt.allow_anonymous = {'true' if self.anonymous else 'false'}\n"
            "loopback_users = none\n"
            # A gate's MQTT session queue replicated, so that it resumes on another node when its own dies
            "mqtt.durable_queue_type = quorum\n"
        )

    def _spawn(self, node: RabbitNode) -> None:
        out = (node.workdir / "out.log").open("ab")
        node.proc = subprocess.Popen(
            [str(BIN / "rabbitmq-server")],
            env=self.env(node),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        out.close()

    def _await_mqtt(self, node: RabbitNode) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if node.proc is None or node.proc.poll() is not None:
                break
            if _listening(node.mqtt_port):
                return
            time.sleep(0.2)
        log = (node.workdir / "out.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"RabbitMQ node {node.name} did not start: {log}")

    def _join(self, node: RabbitNode) -> None:
        first = self.nodes[0].name
        for args in (("stop_app",), ("join_cluster", first), ("start_app",)):
            r = self.ctl(node.index, *args)
            if r.returncode != 0:
                raise RuntimeError(f"{node.name}: rabbitmqctl {' '.join(args)}: {r.stdout}{r.stderr}")

    def members(self, index: int = 0) -> list[str]:
        """The running nodes as node `index` sees them."""
        r = self.ctl(index, "eval", "rabbit_nodes:all_running().")
        return sorted(part.strip(" []'\n") for part in r.stdout.split(",") if "@" in part)
