"""Two collectors in one shared-subscription group write a real PostgreSQL: no duplicates, and no loss across
a collector killed with SIGKILL mid-stream (acks only after the commit; the broker keeps the rest)."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import Broker, wait_until

pytestmark = pytest.mark.slow  # starts a broker, a daemon, a database or a browser

N = 3000
NOW = time.time()
GATES = ("lane-a", "lane-b", "lane-c")
# Collectors hold a batch's worth of un-acked messages, and a dead collector's share waits in its session.
COLLECTOR_BROKER = "max_inflight_messages 0\nmax_queued_messages 0\npersistence false\n"


def event(i: int) -> tuple[str, bytes]:
    gate = GATES[i % len(GATES)]
    body = {
        "schema": "gate.checkin/1",
        "event_id": str(uuid.UUID(int=i + 1)),
        "type": "decision",
        "gate_id": gate,
        "venue": {"id": "rail-central", "name": "Central"},
        "token": f"tok-{i:06d}",
        "kind": "phone",
        "decision": "admit",
        "reason": "admitted",
        "companions": 0,
        "time": NOW - 3600 + i,  # recent: collectors purge what is past retention (28 days) as they start
        "clock_synced": True,
    }
    return f"gate/{gate}/checkin", json.dumps(body).encode()


def collector(broker: Broker, url: str, name: str) -> subprocess.Popen[str]:
    cmd = [
        *(sys.executable, "-m", "gate", "central", "collect", "--broker", f"{broker.host}:{broker.port}"),
        *("--db", url, "--accept-unsigned", "--group", "city", "--client-id", name),
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "collect: subscribed" in line, line
    return proc


def stored(url: str) -> tuple[int, int]:
    with psycopg.connect(url) as db:
        row = db.execute("SELECT count(*), count(DISTINCT event_id) FROM checkins").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


@pytest.mark.mosquitto_only("the collector's broker settings are mosquitto's")
def test_two_collectors_lose_and_duplicate_nothing_across_a_sigkill(tmp_path: Path, pg_url: str) -> None:
    broker = Broker(tmp_path, extra=COLLECTOR_BROKER)
    broker.start()
    procs: list[subprocess.Popen[str]] = []
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    try:
        first, second = collector(broker, pg_url, "col-1"), collector(broker, pg_url, "col-2")
        procs += [first, second]
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        infos: list[Any] = []
        for i in range(N):
            infos.append(pub.publish(*event(i), qos=1))
            if i == N // 3:  # a third in: the first collector dies without a word
                assert wait_until(lambda: stored(pg_url)[0] > 0, 30)
                first.send_signal(signal.SIGKILL)
                first.wait(10)
        for info in infos:
            info.wait_for_publish(30)
        procs.append(collector(broker, pg_url, "col-1"))  # back with the same client id: its session resumes
        assert wait_until(lambda: stored(pg_url)[0] >= N, 60), stored(pg_url)
        assert stored(pg_url) == (N, N)
    finally:
        pub.loop_stop()
        pub.disconnect()
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        broker.stop()


@pytest.mark.mosquitto_only("the collector's broker settings are mosquitto's")
def test_a_demos_check_ins_land_in_postgresql_through_two_collectors_across_a_sigkill(
    tmp_path: Path, pg_url: str
) -> None:
    """`gate demo` publishes to the broker; the first collector is killed once the first check-in is stored,
    and started again with the same id; every one of the demo's check-ins is stored once; the fleet has it."""
    broker = Broker(tmp_path, extra=COLLECTOR_BROKER)
    broker.start()
    procs: list[subprocess.Popen[str]] = []
    try:
        first, second = collector(broker, pg_url, "col-1"), collector(broker, pg_url, "col-2")
        procs += [first, second]
        demo_proc = subprocess.Popen(
            [sys.executable, "-m", "gate", "demo", "--once", "--json", "--broker", f"{broker.host}:{broker.port}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert wait_until(lambda: stored(pg_url)[0] > 0, 60)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        out, err = demo_proc.communicate(timeout=120)
        procs.append(collector(broker, pg_url, "col-1"))
        assert demo_proc.returncode == 0, err[-800:]
        demo = subprocess.CompletedProcess(demo_proc.args, 0, out, err)
        lines = [json.loads(line) for line in demo.stdout.splitlines() if line.startswith("{")]
        decisions = {e["event_id"] for e in lines if e.get("event") == "decision"}
        passages = [e for e in lines if e.get("event") == "passage"]
        expected = len(decisions) + len(passages)
        assert decisions and wait_until(lambda: stored(pg_url)[0] >= expected, 30), (stored(pg_url), expected)
        assert stored(pg_url) == (expected, expected)
        with psycopg.connect(pg_url) as db:
            kept = {r[0] for r in db.execute("SELECT event_id FROM checkins WHERE type = 'decision'")}
        assert kept == decisions
        fleet = subprocess.run(
            [sys.executable, "-m", "gate", "central", "fleet", "--db", pg_url, "--json"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        gates = [json.loads(line) for line in fleet.stdout.splitlines()]
        assert fleet.returncode == 0 and len(gates) == 1, fleet.stdout + fleet.stderr
        assert gates[0]["mode"] is not None and gates[0]["cache_version"] is not None
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        broker.stop()


def test_qos0_telemetry_and_retained_state_make_the_fleet_view_and_check_ins_keep_flowing(tmp_path: Path) -> None:
    """Telemetry arrives at QoS 0 (nothing to acknowledge: acking it would be a protocol error), state and
    availability retained at QoS 1; check-ins sent after them must still all be stored."""
    broker = Broker(tmp_path, extra=COLLECTOR_BROKER)
    broker.start()
    db = tmp_path / "central.db"
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    proc = None
    try:
        pub.connect(broker.host, broker.port)
        pub.loop_start()
        state = {"mode": "normal", "cache_version": 4, "cache_age_s": 60, "policy_version": 2, "clock_synced": True}
        pub.publish(
            "gate/lane-a/state", json.dumps({**state, "outbox_depth": 0}), qos=1, retain=True
        ).wait_for_publish()
        pub.publish("gate/lane-a/availability", b"online", qos=1, retain=True).wait_for_publish()
        proc = collector(broker, str(db), "col-1")
        for depth in (5, 50, 500):
            pub.publish("gate/lane-a/telemetry", json.dumps({"outbox_depth": depth, "uptime_s": 9}), qos=0)
        for i in range(30):
            pub.publish(*event(i), qos=1).wait_for_publish()

        def count() -> int:
            with sqlite3.connect(db) as q:
                return int(q.execute("SELECT count(*) FROM checkins").fetchone()[0])

        assert wait_until(lambda: db.exists() and count() == 30, 30)

        def fleet() -> list[dict[str, Any]]:
            r = subprocess.run(
                [sys.executable, "-m", "gate", "central", "fleet", "--db", str(db), "--json"],
                capture_output=True,
                text=True,
                timeout=60,
            )
            return [json.loads(line) for line in r.stdout.splitlines()]

        assert wait_until(lambda: [g["outbox_depth"] for g in fleet()] == [500], 30)
        lane = fleet()[0]
        assert lane["gate_id"] == "lane-a" and lane["availability"] == "online" and lane["mode"] == "normal"
        assert lane["flags"] == ["outbox_growing"] and lane["outbox_trend_per_min"] > 0
    finally:
        pub.loop_stop()
        pub.disconnect()
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        broker.stop()
