"""Shared fixtures: a real mosquitto on a free port, signing keys, configs in temp dirs."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from pgcluster import PgCluster, pg_bin
from rabbitcluster import RabbitCluster
from rabbitcluster import installed as rabbit_installed

from gate.config.model import Config, parse_config
from gate.decide.keys import TrustStore, generate_keypair, load_private_key

os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")


def require(tool: str) -> str:
    """A missing real component fails under CI and skips elsewhere; it is never faked."""
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if Path(f"/usr/sbin/{tool}").exists() else None)
    if path is None:
        msg = f"{tool} is not installed (./install.sh --dev installs it)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def wait_until(condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.02) -> Any:
    """Poll `condition` until it is truthy or `timeout` passes; returns its last value. Tests wait for the
    condition they assert, never for a fixed time or a first message."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    workdir: Path
    port: int = field(default_factory=free_port)
    extra: str = ""
    proc: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"
    anonymous: bool = True

    def start(self) -> None:
        conf = self.workdir / f"mosquitto-{self.port}.conf"
        # As root, mosquitto would switch to its own user and lose access to the test's private files.
        user = "user root\n" if os.geteuid() == 0 else ""
        anon = "true" if self.anonymous else "false"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous {anon}\n{user}{self.extra}")
        self.proc = subprocess.Popen(
            [require("mosquitto"), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


@dataclass
class ProvisionedBroker:
    """mosquitto started from the folder `gate central provision` wrote, as it is: as root it drops to its
    `mosquitto` user, as Debian runs it. `port` is the plain loopback listener, `tls_port` the TLS one."""

    folder: Path
    port: int
    tls_port: int
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.folder / "mosquitto.log").open("wb")
        conf = self.folder / "mosquitto.conf"
        self.proc = subprocess.Popen([require("mosquitto"), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not start: {(self.folder / 'mosquitto.log').read_text()[-1500:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None


@pytest.fixture
def broker_home() -> Iterator[Path]:
    """A folder the broker's own user can reach (pytest's temp dirs are root's alone): Debian's mosquitto,
    started as root, reads its files as user mosquitto."""
    base = Path(tempfile.mkdtemp(prefix="gate-broker-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


# GATE_TEST_BROKER=rabbitmq runs the broker-facing tests against RabbitMQ's MQTT plugin instead of mosquitto
# (script/test does both). Tests that need what RabbitMQ lacks are marked and skipped there, with the reason.
BROKER_KIND = os.environ.get("GATE_TEST_BROKER", "mosquitto")


def new_broker(workdir: Path) -> Any:
    """A broker of the selected kind for this test, not started yet (same start/stop/host/port surface)."""
    return RabbitMQ(workdir / "rabbitmq") if BROKER_KIND == "rabbitmq" else Broker(workdir)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "mqtt5_only(reason): needs an MQTT 5 feature RabbitMQ 3 lacks")
    config.addinivalue_line("markers", "mosquitto_only(reason): needs mosquitto's own configuration")


@pytest.hookimpl(tryfirst=True)  # before `-m "not slow"` deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark_slow(items)
    if BROKER_KIND != "rabbitmq":
        return
    for item in items:
        for name in ("mqtt5_only", "mosquitto_only"):
            mark = item.get_closest_marker(name)
            if mark is not None:
                item.add_marker(pytest.mark.skip(reason=f"on RabbitMQ: {mark.args[0] if mark.args else name}"))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Any]:
    b = new_broker(tmp_path)
    b.start()
    yield b
    b.stop()


class Subscriber:
    """A real paho client that records every message it sees."""

    def __init__(self, broker: Any, topic: str = "#", client_id: str = "", **kw: Any) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.content_types: dict[str, set[str | None]] = {}  # MQTT 5 content type seen, by topic
        self._lock = threading.Lock()
        self.ready = threading.Event()
        protocol = kw.get("protocol", mqtt.MQTTv5 if getattr(broker, "mqtt5", True) else mqtt.MQTTv311)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        if "username" in kw:
            self.client.username_pw_set(kw["username"], kw["password"])
        if "tls" in kw:
            self.client.tls_set(ca_certs=kw["tls"])
        self.client.on_connect = lambda c, u, f, rc, p: (c.subscribe(topic, qos=1), None)[1]
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.ready.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self.ready.wait(10), "subscriber did not subscribe"

    def _on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))
            ct = getattr(msg.properties, "ContentType", None) if msg.properties is not None else None
            self.content_types.setdefault(msg.topic, set()).add(ct)

    def on(self, suffix: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.messages if t.endswith(suffix)]

    def wait_for(self, suffix: str, count: int, timeout: float = 20.0) -> list[bytes]:
        """At least `count` messages on topics ending in `suffix` (all of them), or what came by the timeout."""
        wait_until(lambda: len(self.on(suffix)) >= count, timeout)
        return self.on(suffix)

    def event_ids(self, suffix: str, **match: Any) -> set[str]:
        """The event_ids of the JSON payloads on `suffix` whose fields equal `match`."""
        out = set()
        for p in self.on(suffix):
            body = json.loads(p)
            if all(body.get(k) == v for k, v in match.items()):
                out.add(body["event_id"])
        return out

    def wait_for_ids(self, suffix: str, expected: set[str], timeout: float = 20.0, **match: Any) -> set[str]:
        """Wait until every id in `expected` has arrived on `suffix`; returns all ids seen (a superset on success)."""
        return set(
            wait_until(lambda: (ids := self.event_ids(suffix, **match)) >= expected and ids, timeout)
            or self.event_ids(suffix, **match)
        )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def subscriber_factory() -> Iterator[Any]:
    subs: list[Subscriber] = []

    def make(broker: Broker, topic: str = "#", **kw: Any) -> Subscriber:
        s = Subscriber(broker, topic, **kw)
        subs.append(s)
        return s

    yield make
    for s in subs:
        s.close()


@dataclass
class Keys:
    private: Ed25519PrivateKey
    private_path: Path
    public_path: Path
    trust: TrustStore
    other: Ed25519PrivateKey  # a key the gate does not trust


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("keys")
    _, priv, pub = generate_keypair(d)
    _, other, _ = generate_keypair(d / "other")
    return Keys(load_private_key(priv), priv, pub, TrustStore.from_files([pub]), load_private_key(other))


def make_config(state: Path, keys: Keys | None = None, **sections: Any) -> Config:
    data: dict[str, Any] = {
        "gate": {"id": "lane-t", "state_dir": str(state)},
        "venue": {"id": "rail-test", "name": "Test Station", "category": "rail_station"},
        "clock": {"sync_source": "assume_synced"},
        "trust": {"keys": [str(keys.public_path)] if keys else []},
        "gpio": {
            "pin_factory": "mock",
            "relay": {"pin": 17, "pulse_seconds": 0.2},
            "indicator": {"green": 22, "red": 27, "amber": 23},
            "buzzer": {"pin": 24},
        },
    }
    for name, value in sections.items():
        base = data.setdefault(name, {})
        base.update(value)
    return parse_config(data, "test")


@dataclass
class RabbitMQ:
    """A throwaway RabbitMQ node with its MQTT plugin (Debian's rabbitmq-server): its own node name, ports,
    data and cookie in a temp dir, so it never meets a system broker. RabbitMQ 3.x speaks MQTT 3.1.1 only."""

    workdir: Path
    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    proc: subprocess.Popen[bytes] | None = None
    mqtt5 = False

    def start(self) -> None:
        server = "/usr/lib/rabbitmq/bin/rabbitmq-server"
        if not Path(server).exists():
            require("rabbitmq-server")  # fails under CI, skips elsewhere
        d = self.workdir
        d.mkdir(parents=True, exist_ok=True)
        (d / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        self.epmd_port = free_port()  # the node's own epmd, stopped with it
        (d / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {free_port()}\nmqtt.listeners.tcp.default = {self.port}\n"
            "mqtt.allow_anonymous = true\nloopback_users = none\n"
        )
        env = {
            **os.environ,
            "HOME": str(d),
            "RABBITMQ_NODENAME": f"gate-test-{self.port}@localhost",
            "RABBITMQ_DIST_PORT": str(free_port()),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq"),
            "RABBITMQ_PID_FILE": str(d / "pid"),
        }
        self.proc = subprocess.Popen(
            [server], env=env, stdout=(d / "out.log").open("wb"), stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"RabbitMQ did not start: {(d / 'out.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait(10)
            epmd = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
            subprocess.run([epmd, "-port", str(self.epmd_port), "-kill"], capture_output=True, check=False)
        self.proc = None


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitMQ]:
    r = RabbitMQ(tmp_path_factory.mktemp("rabbitmq"))
    r.start()
    yield r
    r.stop()


@pytest.fixture(scope="session")
def pg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    """A real, throwaway PostgreSQL cluster from Debian's `postgresql` package, for the whole session."""
    if pg_bin("initdb") is None:
        require("initdb")  # fails under CI, skips elsewhere
    base = Path(tempfile.mkdtemp(prefix="gate-pg-"))  # not under tmp_path: the postgres user must reach it
    base.chmod(0o755)
    cluster = PgCluster(base / "cluster", free_port())
    try:
        cluster.start()
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"cannot start PostgreSQL: {exc.stderr.decode(errors='replace')[-500:]}")
    yield cluster
    cluster.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_url(pg_cluster: PgCluster) -> str:
    """A fresh database in the session's cluster, for one test."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_cluster.url, autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    return pg_cluster.url.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MB tmpfs for the state directory, so the disk can really fill (root only, as in CI)."""
    if os.geteuid() != 0:
        msg = "a real full disk needs a tmpfs mount, which needs root"
        pytest.fail(msg) if os.environ.get("CI") else pytest.skip(msg)
    state = tmp_path / "state"
    state.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(state)], check=True)
    yield state
    subprocess.run(["umount", "-l", str(state)], check=False)


def fill(directory: Path) -> Path:
    """Fill the file system to the last byte."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            try:
                while True:
                    os.write(fd, bytes(size))
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


# -- the fast loop: a test that starts a service (broker, RabbitMQ, PostgreSQL, a daemon, a browser) is slow ------
SLOW_FIXTURES = frozenset(
    {
        "broker",
        "broker_home",
        "secured",
        "rabbitmq",
        "pg_cluster",
        "pg_url",
        "browser",
        "console",
        "demo_run",
        "rabbit_cluster",
    }
)


STARTS_A_PROCESS = re.compile(r"(?<![.\w])start\(|Popen\(")  # fakes.start (the daemon), or any child process


def mark_slow(items: list[pytest.Item]) -> None:
    """`script/test --fast` runs `-m "not slow"`: every test using a fixture that starts a service (or a
    PostgreSQL parameter), or whose body starts the daemon or another process, is marked here, besides the
    modules that say `pytestmark = pytest.mark.slow` themselves."""
    import inspect

    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        fn = getattr(item, "function", None)
        source = inspect.getsource(fn) if fn is not None else ""
        if (
            SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))
            or "postgresql" in map(str, params.values())
            or STARTS_A_PROCESS.search(source)
        ):
            item.add_marker(pytest.mark.slow)


# -- several workers: script/test runs `pytest -n N --dist loadfile`, so a module's tests run on one worker and its
# module-scoped services (a RabbitMQ cluster, Patroni, the demo runs, an installed service) start once; each worker
# starts its own session services on free ports, in its own temp dirs. (`--dist loadgroup` does not group under
# pytest 9: xdist 3.8 renames `item._nodeid`, which pytest 9 no longer reads.)


# -- hypothesis: the suite runs a third of a slow stateful property's examples; GATE_HYPOTHESIS=full runs them all --
FULL_HYPOTHESIS = os.environ.get("GATE_HYPOTHESIS") == "full"


def examples(full: int) -> int:
    """`full` examples under GATE_HYPOTHESIS=full (before a release, or hunting a rare failure), a third otherwise.
    Hypothesis keeps every failing example it found in .hypothesis/ and replays it first, at either size."""
    return full if FULL_HYPOTHESIS else max(10, full // 3)


# -- a connection used by a thread that does not own it is a bug: any test where it happens fails -------------
class _WrongThreadSeen(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        text = record.getMessage()
        if type(exc).__name__ == "WrongThread" or "WrongThread" in text or "this connection belongs to" in text:
            self.seen.append(f"{record.threadName}: {text} {exc or ''}".strip())


@pytest.fixture(autouse=True)
def no_wrong_thread() -> Iterator[None]:
    """Fails the test if any thread logged a WrongThread or died of one (gate.core.sqlite.Owned)."""

    seen = _WrongThreadSeen()
    root = logging.getLogger()
    root.addHandler(seen)
    before = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is not None and args.exc_type.__name__ == "WrongThread":
            name = args.thread.name if args.thread is not None else "?"
            seen.seen.append(f"{name}: died of {args.exc_value}")
        before(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = before
        root.removeHandler(seen)
    if seen.seen:
        pytest.fail("WrongThread (a connection used off its owner thread): " + "; ".join(seen.seen[:3]))


@pytest.fixture(scope="module")
def rabbit_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    """Three clustered RabbitMQ nodes with the MQTT plugin (tests/rabbitcluster.py), one per test module:
    a cluster takes ~20-60 s to form, so tests share it and use their own topic prefixes and queues."""
    if not rabbit_installed():
        require("rabbitmq-server")  # fails under CI, skips elsewhere
    cluster = RabbitCluster(tmp_path_factory.mktemp("rabbitcluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
