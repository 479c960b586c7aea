"""A second broker: RabbitMQ's MQTT plugin (MQTT 3.1.1 only, no shared subscriptions, retained messages only
for exact-topic subscriptions). The gate delivers with protocol = "auto", fetches snapshots, and collect works."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from gpiozero.pins.mock import MockFactory

from conftest import make_config, wait_until
from gate.decide.codes import Kind, Status, issue
from gate.decide.keys import generate_keypair
from gate.lane.wiring import build
from gate.scan.decoders import make_decoder
from gate.scanner import DecodingSource
from gate.testing import ScriptedFrames

pytestmark = pytest.mark.slow  # starts a broker, a daemon, a database or a browser


def gate_on(rabbitmq, tmp_path: Path, keys, prefix: str, **sections):
    cfg = make_config(
        tmp_path / "state",
        keys,
        mqtt={"host": rabbitmq.host, "port": rabbitmq.port, "topic_prefix": prefix, "protocol": "auto"},
        policy={"passback_seconds": 0},
        **sections,
    )
    return build(
        cfg, source=DecodingSource(ScriptedFrames([]), make_decoder("zxing")), pin_factory=MockFactory()
    ).start()


def central(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gate", "central", *args], capture_output=True, text=True, timeout=120)


def test_the_gate_delivers_through_rabbitmq_with_protocol_auto(rabbitmq, tmp_path, keys, subscriber_factory, caplog):
    sub = subscriber_factory(rabbitmq, "rmq1/+/checkin", protocol=mqtt.MQTTv311)
    g = gate_on(rabbitmq, tmp_path, keys, "rmq1")
    try:
        sent = {
            g.handle(issue(keys.private, f"tok-r{i:05d}", Status.RED, int(time.time()), 600).encode())[1].event_id
            for i in range(30)
        }
        assert sent <= sub.wait_for_ids("/checkin", sent, timeout=60)
        assert g.drainer.wait_empty(20)
        assert g.link.protocol == mqtt.MQTTv311 and g.state()["refusals_visible"] is False
        assert "closed the connection on an MQTT 5 CONNECT" in caplog.text
    finally:
        g.close()


def test_a_snapshot_retained_before_the_gate_started_is_fetched_by_exact_topics(rabbitmq, tmp_path, keys) -> None:
    _, ckey, cpub = generate_keypair(tmp_path / "central")
    f = tmp_path / "passes.csv"
    f.write_text("token,status\n" + "".join(f"tok-s{i:06d},red\n" for i in range(25)))
    b = f"{rabbitmq.host}:{rabbitmq.port}"
    r = central(
        "publish-snapshot",
        str(f),
        "--version",
        "4",
        "--chunk-size",
        "10",
        "--prefix",
        "rmq2",
        "--broker",
        b,
        "--key",
        str(ckey),
    )
    assert r.returncode == 0, r.stderr
    g = gate_on(rabbitmq, tmp_path, keys, "rmq2", central={"keys": [str(cpub)]})
    try:
        assert wait_until(lambda: (g.pump(), g.cache.info().version == 4)[1], 60)
        assert g.cache.info().count == 25
        card = issue(keys.private, "tok-s000007", Status.GREEN, int(time.time()) - 5, 3600, Kind.CARD).encode()
        assert g.handle(card)[0].reason.value == "status_red"  # central's status decides
    finally:
        g.close()


def test_the_default_collect_stores_every_check_in_through_rabbitmq(rabbitmq, tmp_path, keys) -> None:
    """RabbitMQ 3 would bind `$share/…` as a literal topic and deliver nothing: the default collect sees MQTT
    3.1.1 (which cannot say the broker has shared subscriptions) and subscribes plainly."""
    bdir = tmp_path / "broker"
    assert central("provision", "lane-t", "--broker-dir", str(bdir)).returncode == 0
    db = tmp_path / "c.db"
    collector = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gate",
            "central",
            "collect",
            "--broker",
            f"{rabbitmq.host}:{rabbitmq.port}",
            "--prefix",
            "rmq3",
            "--db",
            str(db),
            "--devices",
            str(bdir / "devices"),
            "--count",
            "40",
            "--idle-timeout",
            "60",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    g = gate_on(rabbitmq, tmp_path, keys, "rmq3", gate={"device_key": str(bdir / "credentials/lane-t/device.key")})
    try:
        line = collector.stderr.readline()
        assert "collect: subscribed to rmq3/+/checkin" in line and "a plain subscription" in line, line
        sent = {
            g.handle(issue(keys.private, f"tok-c{i:05d}", Status.RED, int(time.time()), 600).encode())[1].event_id
            for i in range(40)
        }
        assert collector.wait(60) == 0
        assert "stored 40 new" in collector.stderr.read()
        with sqlite3.connect(db) as con:
            assert {r[0] for r in con.execute("SELECT event_id FROM checkins")} == sent
        r = central("trace", "tok-c00003", "--db", str(db), "--json", "--operator", "t")
        assert json.loads(r.stdout.splitlines()[0])["gate_id"] == "lane-t"
    finally:
        collector.kill()
        g.close()
