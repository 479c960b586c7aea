"""A collector cannot silently take a share: collect refuses an identity that is not a collector (from the broker
folder, or by the broker's answer to its probe) and says who joined which group; `gate central sessions` names a
stray session kept in the group and clears it after storing what it held: nothing lost."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from conftest import ProvisionedBroker, free_port, make_config, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.mosquitto_only("mosquitto's ACL and sessions")]


def central(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gate", "central", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def folder(broker_home):
    d = broker_home / "broker"
    ports = ("--port", str(free_port()), "--tls-port", str(free_port()))
    for name, role in (("lane-01", "gate"), ("collector-1", "collector"), ("collector-2", "collector")):
        r = central("provision", name, "--role", role, "--broker-dir", str(d), *(ports if name == "lane-01" else ()))
        assert r.returncode == 0, r.stderr
    b = ProvisionedBroker(d, int(ports[1]), int(ports[3]))
    b.start()
    yield d, b
    b.stop()


def toml(d: Path, b: ProvisionedBroker, tmp_path: Path, user: str) -> Path:
    f = tmp_path / f"{user}.toml"
    f.write_text(
        f'[mqtt]\nhost = "{b.host}"\nport = {b.port}\nusername = "{user}"\n'
        f'password_file = "{d / "credentials" / user / "mqtt-password"}"\n'
    )
    return f


def collect_args(d: Path, b: ProvisionedBroker, tmp_path: Path, user: str, db: Path) -> list[str]:
    config = toml(d, b, tmp_path, user)
    identity = ["--group", "city", "--client-id", user, "--devices", str(d / "devices")]
    return ["collect", "--config", str(config), "--db", str(db), *identity]


def test_a_gate_identity_is_refused_as_a_collector(folder, tmp_path) -> None:
    d, b = folder
    args = collect_args(d, b, tmp_path, "lane-01", tmp_path / "c.db")
    r = central(*args, "--idle-timeout", "1")
    assert r.returncode == 1 and "identity 'lane-01' is not a collector" in r.stderr, r.stderr  # the probe
    r = central(*args, "--idle-timeout", "1", "--broker-dir", str(d))
    assert r.returncode == 1 and "'lane-01' is a gate in" in r.stderr, r.stderr  # the folder
    r = central(*collect_args(d, b, tmp_path, "collector-1", tmp_path / "c.db"), "--idle-timeout", "1")
    assert r.returncode == 0, r.stderr
    assert "as identity collector-1 (a collector (the broker accepted its probe)) in group 'city'" in r.stderr


def leave_a_stray_session(b: ProvisionedBroker, d: Path) -> None:
    """collector-2 joined the group once and went away: its session (7 days) keeps its share."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="collector-2", protocol=mqtt.MQTTv5)
    c.username_pw_set("collector-2", (d / "credentials" / "collector-2" / "mqtt-password").read_text().strip())
    done = []
    c.on_subscribe = lambda *a: done.append(1)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 7 * 86400
    c.connect(b.host, b.port, clean_start=False, properties=props)
    c.loop_start()
    c.subscribe("$share/city/gate/+/checkin", qos=1)
    assert wait_until(lambda: done, 10)
    c.disconnect()
    c.loop_stop()


def stored(db: Path) -> set[str]:
    with sqlite3.connect(db) as con:
        return {r[0] for r in con.execute("SELECT event_id FROM checkins")}


def test_a_stray_session_is_named_and_cleared_and_nothing_is_lost(folder, tmp_path, keys) -> None:
    from gpiozero.pins.mock import MockFactory

    from gate.decide.codes import Status, issue
    from gate.lane.wiring import build
    from gate.scan.decoders import make_decoder
    from gate.scanner import DecodingSource
    from gate.testing import ScriptedFrames

    d, b = folder
    leave_a_stray_session(b, d)
    listed = central("sessions", "--broker-dir", str(d), "--broker", f"{b.host}:{b.port}")
    assert listed.returncode == 0, listed.stderr
    lines = {x.split()[0]: x for x in listed.stdout.splitlines()}
    assert "SESSION KEPT" in lines["collector-2"] and "no session" in lines["collector-1"], listed.stdout
    db = tmp_path / "main.db"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gate", "central", *collect_args(d, b, tmp_path, "collector-1", db)],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None and "collect: subscribed" in proc.stderr.readline()
    creds = d / "credentials" / "lane-01"
    cfg = make_config(
        tmp_path / "state",
        keys,
        gate={"id": "lane-01", "device_key": str(creds / "device.key")},
        mqtt={
            "host": b.host,
            "port": b.port,
            "username": "lane-01",
            "protocol": "5",
            "password_file": str(creds / "mqtt-password"),
        },
    )
    g = build(cfg, source=DecodingSource(ScriptedFrames([]), make_decoder("zxing")), pin_factory=MockFactory()).start()
    sent: set[str] = set()

    def check_ins(n: int, tag: str) -> None:
        for i in range(n):
            code = issue(keys.private, f"tok-{tag}{i:05d}", Status.RED, int(time.time()), 600).encode()
            sent.add(g.handle(code)[1].event_id)
        assert g.drainer.wait_empty(30)

    try:
        check_ins(20, "a")
        assert wait_until(lambda: len(stored(db)) >= 5, 30)
        assert stored(db) < sent  # the stray session took its share: collector-1 alone has not got them all
        address = f"{b.host}:{b.port}"
        cleared = central(
            "sessions", "--broker-dir", str(d), "--broker", address, "--clear", "collector-2", "--db", str(db)
        )
        assert cleared.returncode == 0 and "collector-2: session cleared" in cleared.stdout, cleared.stderr
        assert wait_until(lambda: stored(db) == sent, 30), len(sent - stored(db))
        check_ins(10, "b")  # from now on collector-1 receives every check-in
        assert wait_until(lambda: stored(db) == sent, 30), len(sent - stored(db))
        listed = central("sessions", "--broker-dir", str(d), "--broker", f"{b.host}:{b.port}")
        assert "no session" in {x.split()[0]: x for x in listed.stdout.splitlines()}["collector-2"]
    finally:
        g.close()
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
