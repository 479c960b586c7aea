"""A broker configured by `gate central provision` refuses every spoofing attempt (real mosquitto)."""

from __future__ import annotations

import grp
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import Broker, ProvisionedBroker, free_port, wait_until

pytestmark = pytest.mark.slow  # starts a broker, a daemon, a database or a browser


def provision(d: Path, name: str, role: str = "gate", *extra: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "gate", "central", "provision", name, "--role", role, "--broker-dir", str(d), *extra],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return (d / "credentials" / name / "mqtt-password").read_text().strip()


class Client:
    """A real MQTT 5 client that records what happens to it."""

    def __init__(
        self,
        broker: Broker | ProvisionedBroker,
        user: str | None,
        password: str | None,
        client_id: str = "",
        tls: tuple[str, ...] = (),  # (ca file,) or (ca, client cert, client key): the broker's TLS listener
    ) -> None:
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        port = broker.port
        if tls:
            assert isinstance(broker, ProvisionedBroker)
            self.c.tls_set(
                ca_certs=tls[0], certfile=tls[1] if len(tls) > 1 else None, keyfile=tls[2] if tls[2:] else None
            )
            port = broker.tls_port
        if user is not None:
            self.c.username_pw_set(user, password)
        self.connack: list[str] = []
        self.disconnects = 0
        self.messages: list[tuple[str, bytes]] = []
        self.suback: list[list[str]] = []
        self.lock = threading.Lock()
        self.c.on_connect = lambda c, u, f, rc, p: self.connack.append(str(rc))
        self.c.on_disconnect = lambda c, u, f, rc, p: setattr(self, "disconnects", self.disconnects + 1)
        self.c.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.c.on_subscribe = lambda c, u, mid, rcs, p: self.suback.append([str(r) for r in rcs])
        self.c.connect_async("localhost" if tls else broker.host, port)
        self.c.loop_start()
        assert wait_until(lambda: self.connack, 10)

    @property
    def ok(self) -> bool:
        return self.connack[0] == "Success"

    def publish(self, topic: str, payload: bytes) -> str:
        refused: list[str] = []
        self.c.on_publish = lambda c, u, mid, rc, p: refused.append(str(rc) if rc.is_failure else "Success")
        self.c.publish(topic, payload, qos=1)
        assert wait_until(lambda: refused, 10)
        return refused[0]

    def subscribe(self, topic: str) -> list[str]:
        n = len(self.suback)
        self.c.subscribe(topic, qos=1)
        assert wait_until(lambda: len(self.suback) > n, 10)
        return self.suback[-1]

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def secured(broker_home):
    d = broker_home / "broker"
    ports = ("--port", str(free_port()), "--tls-port", str(free_port()))
    pw = {
        "lane-a": provision(d, "lane-a", "gate", *ports),
        "lane-b": provision(d, "lane-b"),
        "col-1": provision(d, "col-1", "collector"),
        "ops-1": provision(d, "ops-1", "publisher"),
        "ha": provision(d, "ha", "homeassistant"),
    }
    broker = ProvisionedBroker(d, int(ports[1]), int(ports[3]))  # the written folder alone, as Debian runs it
    broker.start()
    clients: list[Client] = []

    def connect(user: str | None, client_id: str = "", tls: tuple[str, ...] = ()) -> Client:
        c = Client(broker, user, pw.get(user or ""), client_id, tls)
        clients.append(c)
        return c

    yield connect, d, broker
    for c in clients:
        c.close()
    broker.stop()


def test_secrets_and_broker_files_are_private(secured) -> None:
    _, d, _ = secured
    for f in ("identities.json", "credentials/lane-a/mqtt-password", "credentials/lane-a/device.key", "tls/ca.key"):
        assert (d / f).stat().st_mode & 0o077 == 0, f
    mosquitto = grp.getgrnam("mosquitto").gr_gid  # install.sh's mosquitto package makes it
    for f in ("passwd", "acl", "mosquitto.conf", "tls/server.key", "."):  # the broker reads them, nobody else
        st = (d / f).stat()
        assert st.st_mode & 0o007 == 0 and st.st_gid == mosquitto and st.st_mode & 0o040, f
    secret = (d / "credentials" / "lane-a" / "mqtt-password").read_text().strip()
    passwd = (d / "passwd").read_text()
    assert secret not in passwd and "lane-a:$7$101$" in passwd  # only a PBKDF2 hash is kept


def test_anonymous_and_wrong_passwords_are_refused(secured) -> None:
    connect, _, _ = secured
    assert connect(None).connack[0] == "Not authorized"
    assert connect("nobody").connack[0] == "Not authorized"
    assert connect("lane-a").ok


def test_a_gate_cannot_speak_for_another_or_read_its_commands(secured) -> None:
    connect, _, _ = secured
    collector = connect("col-1")
    ops = connect("ops-1")
    a = connect("lane-a")
    b = connect("lane-b")
    assert collector.subscribe("gate/+/checkin") == ["Granted QoS 1"]
    assert b.publish("gate/lane-a/checkin", b'{"forged": true}') == "Not authorized"
    assert b.publish("gate/nonexistent/checkin", b'{"forged": true}') == "Not authorized"
    assert b.publish("gate/central/policy", b"garbage") == "Not authorized"
    b.subscribe("gate/lane-a/command")  # mosquitto grants it, but delivers nothing the ACL does not allow
    b.subscribe("gate/lane-a/#")
    assert a.subscribe("gate/lane-a/command") == ["Granted QoS 1"]
    assert ops.publish("gate/lane-a/command", b"signed command") == "Success"
    assert b.publish("gate/lane-b/checkin", b'{"genuine": true}') == "Success"
    assert wait_until(lambda: collector.messages, 10)
    assert [t for t, _ in collector.messages] == ["gate/lane-b/checkin"]  # only the genuine one
    assert wait_until(lambda: a.messages, 10) and a.messages == [("gate/lane-a/command", b"signed command")]
    assert not wait_until(lambda: b.messages, 1.0)  # B never sees A's command


@pytest.mark.parametrize("listener", ["plain", "tls"])
def test_one_identity_cannot_take_over_anothers_session(secured, listener) -> None:
    connect, d, _ = secured
    tls = (str(d / "tls" / "ca.crt"),) if listener == "tls" else ()
    a = connect("lane-a", client_id="gate-lane-a", tls=tls)
    intruder = connect("lane-b", client_id="gate-lane-a", tls=tls)  # the same client id, another account
    assert intruder.ok
    time.sleep(1.0)  # a takeover would disconnect `a` at once; give it the chance
    assert a.disconnects == 0


def test_home_assistant_reads_the_gates_state_and_writes_nothing_of_theirs(secured) -> None:
    connect, _, _ = secured
    ha, lane = connect("ha"), connect("lane-a")
    assert ha.subscribe("gate/+/state") == ["Granted QoS 1"]
    ha.subscribe("gate/+/checkin")
    assert ha.publish("gate/lane-a/state", b"{}") == "Not authorized"
    assert ha.publish("gate/central/policy", b"x") == "Not authorized"
    assert ha.publish("homeassistant/status", b"online") == "Success"
    assert lane.publish("gate/lane-a/checkin", b"{}") == "Success"
    assert lane.publish("gate/lane-a/state", b'{"mode": "normal"}') == "Success"
    assert wait_until(lambda: ha.messages, 10)
    assert [t for t, _ in ha.messages] == ["gate/lane-a/state"]  # never a check-in


def test_home_assistants_select_is_written_by_it_and_served_only_by_the_publisher(secured) -> None:
    """Home Assistant writes its choice, `gate central ha-bridge` (a publisher identity) reads it and writes the
    select's state; a gate can do neither (its commands come only signed, on its command topic)."""
    connect, _, _ = secured
    ha = connect("ha")
    ops = connect("ops-1")
    lane = connect("lane-a")
    collector = connect("col-1")
    choice, state = "homeassistant/gate/lane-a/requested_mode/set", "homeassistant/gate/lane-a/requested_mode/state"
    ops.subscribe("homeassistant/gate/+/requested_mode/set")
    assert ha.publish(choice, b"out_of_service") == "Success"
    assert wait_until(lambda: ops.messages, 10) and ops.messages[0][0] == choice
    assert ops.publish(state, b"out_of_service") == "Success"
    for other in (lane, collector):
        assert other.publish(choice, b"in_service") == "Not authorized"
        assert other.publish(state, b"in_service") == "Not authorized"
    assert ha.publish(state, b"in_service") == "Not authorized"


def test_collectors_only_read_and_only_the_publisher_writes_central_topics(secured) -> None:
    connect, _, _ = secured
    collector, ops = connect("col-1"), connect("ops-1")
    assert collector.publish("gate/central/policy", b"x") == "Not authorized"
    assert collector.publish("gate/lane-a/command", b"x") == "Not authorized"
    collector.subscribe("gate/lane-a/command")
    assert ops.publish("gate/lane-a/command", b"x") == "Success"
    assert ops.publish("gate/central/policy", b"x") == "Success"
    assert not wait_until(lambda: collector.messages, 1.0)  # a collector reads check-ins, not commands


def test_a_provisioned_gate_delivers_through_its_own_identity(secured, tmp_path, keys) -> None:
    from gpiozero.pins.mock import MockFactory

    from conftest import make_config
    from gate.decide.codes import Status, issue
    from gate.lane.wiring import build
    from gate.scan.decoders import make_decoder
    from gate.scanner import DecodingSource
    from gate.testing import ScriptedFrames

    connect, d, broker = secured
    collector = connect("col-1")
    collector.subscribe("gate/+/checkin")
    cfg = make_config(
        tmp_path / "state",
        keys,
        gate={"id": "lane-a"},
        mqtt={
            "host": broker.host,
            "port": broker.port,
            "username": "lane-a",
            "protocol": "5",
            "password_file": str(d / "credentials" / "lane-a" / "mqtt-password"),
        },
    )
    g = build(cfg, source=DecodingSource(ScriptedFrames([]), make_decoder("zxing")), pin_factory=MockFactory()).start()
    try:
        code = issue(keys.private, "tok-acl001", Status.RED, int(time.time()), 600).encode()
        event = g.handle(code)[1].event_id
        assert wait_until(lambda: any(event.encode() in p for _, p in collector.messages), 20)
        assert g.drainer.wait_empty(10) and g.state()["dead_letters"] == 0
    finally:
        g.close()


def test_central_tools_work_through_least_privilege_identities(secured, tmp_path, keys) -> None:
    """A provisioned gate, an ops publisher sending a signed command, a collector verifying signed check-ins."""
    from gpiozero.pins.mock import MockFactory
    from test_sync import pumping

    from conftest import make_config
    from gate.decide.codes import Status, issue
    from gate.decide.keys import generate_keypair
    from gate.lane.wiring import build
    from gate.scan.decoders import make_decoder
    from gate.scanner import DecodingSource
    from gate.testing import ScriptedFrames

    _, d, broker = secured
    _, central_key, central_pub = generate_keypair(tmp_path / "central")

    def toml(user: str) -> Path:
        f = tmp_path / f"{user}.toml"
        f.write_text(
            f'[mqtt]\nhost = "{broker.host}"\nport = {broker.port}\nusername = "{user}"\n'
            f'password_file = "{d / "credentials" / user / "mqtt-password"}"\nprotocol = "auto"\n'
        )
        return f

    creds = d / "credentials" / "lane-a"
    cfg = make_config(
        tmp_path / "state",
        keys,
        gate={"id": "lane-a", "device_key": str(creds / "device.key")},
        central={"keys": [str(central_pub)]},
        mqtt={
            "host": broker.host,
            "port": broker.port,
            "username": "lane-a",
            "protocol": "5",
            "password_file": str(creds / "mqtt-password"),
        },
    )
    g = build(cfg, source=DecodingSource(ScriptedFrames([]), make_decoder("zxing")), pin_factory=MockFactory()).start()
    db = tmp_path / "checkins.db"
    collector = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gate",
            "central",
            "collect",
            "--config",
            str(toml("col-1")),
            "--db",
            str(db),
            "--devices",
            str(d / "devices"),
            "--count",
            "1",
            "--idle-timeout",
            "60",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "collect: subscribed" in collector.stderr.readline()
        assert wait_until(lambda: g.link.subscribed.is_set(), 20)
        g.handle(issue(keys.private, "tok-acl002", Status.RED, int(time.time()), 600).encode())
        assert collector.wait(60) == 0
        assert "stored 1 new" in collector.stderr.read()

        def command() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "gate",
                    "central",
                    "command",
                    "--config",
                    str(toml("ops-1")),
                    "--key",
                    str(central_key),
                    "lane-a",
                    "status",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            )

        r = pumping(g, command)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["result"]["gate_id"] == "lane-a"
    finally:
        collector.kill()
        g.close()
