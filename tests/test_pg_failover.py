"""PostgreSQL under Patroni: collectors on a libpq multi-host URL keep every signed check-in, exactly once, across
a planned switchover and a primary killed with SIGKILL; nothing they acknowledged is missing on the new primary."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from patroni import PatroniCluster

from conftest import Broker, require, wait_until
from gate.central.collect import Checks, Collector
from gate.central.pgconn import hosts
from gate.central.pgstore import PgStore
from gate.decide.keys import generate_keypair, load_private_key
from gate.deliver.sealing import Sealer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # a cluster to start, a failover to wait for
GATES = ("lane-a", "lane-b")
COLLECTOR_BROKER = "max_inflight_messages 0\nmax_queued_messages 0\npersistence false\n"


@pytest.fixture(scope="module")
def patroni() -> Iterator[PatroniCluster]:
    """etcd and three Patroni nodes for the module (starting them is the slow part); tests heal it first."""
    for tool in ("patroni", "etcd", "initdb"):
        require(tool)
    base = Path(tempfile.mkdtemp(prefix="gate-patroni-"))  # not under tmp_path: the postgres user must reach it
    base.chmod(0o755)
    cluster = PatroniCluster(base / "cluster")
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def ha_url(patroni: PatroniCluster) -> str:
    """A fresh database on a healthy cluster (every node up, a synchronous standby), as a multi-host URL."""
    patroni.heal()
    name = f"t_{uuid.uuid4().hex[:12]}"
    with patroni.connect("postgres") as db:
        db.execute(f"CREATE DATABASE {name}")
    return patroni.url(name)


@pytest.fixture(scope="module")
def devices(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Sealer]]:
    """Each gate's device key: the private half signs its check-ins, `<gate>.pub` is what collectors check."""
    d = tmp_path_factory.mktemp("devices")
    sealers = {}
    for gate in GATES:
        _, priv, pub = generate_keypair(d / "keys" / gate)
        shutil.copy(pub, d / f"{gate}.pub")
        sealers[gate] = Sealer(load_private_key(priv))
    return d, sealers


def checkin(sealers: dict[str, Sealer], i: int) -> tuple[str, str, bytes]:
    gate = GATES[i % len(GATES)]
    body = {
        "schema": "gate.checkin/1",
        "event_id": str(uuid.uuid4()),
        "type": "decision",
        "gate_id": gate,
        "venue": {"id": "rail-central", "name": "Central"},
        "token": f"tok-{i:06d}",
        "kind": "phone",
        "decision": "admit",
        "reason": "admitted",
        "time": time.time(),
        "clock_synced": True,
    }
    raw = json.dumps(body, separators=(",", ":")).encode()
    return body["event_id"], f"gate/{gate}/checkin", sealers[gate].seal(raw)


def stored(url: str) -> tuple[int, set[str]]:
    with psycopg.connect(url, connect_timeout=5) as db:
        ids = [r[0] for r in db.execute("SELECT event_id FROM checkins")]
    return len(ids), set(ids)


def safe_stored(url: str) -> tuple[int, set[str]]:
    try:
        return stored(url)
    except psycopg.Error:  # between primaries
        return 0, set()


class Publisher:
    """A fleet's check-ins at a steady pace (QoS 1) until stopped; every one published is known by event id."""

    def __init__(self, broker: Broker, sealers: dict[str, Sealer], rate: float = 150.0) -> None:
        self.sealers, self.rate = sealers, rate
        self.ids: list[str] = []
        self.infos: list[Any] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        i = 0
        while not self._stop.wait(1 / self.rate):
            event_id, topic, payload = checkin(self.sealers, i)
            self.infos.append(self.client.publish(topic, payload, qos=1))
            self.ids.append(event_id)
            i += 1

    def stop(self) -> set[str]:
        self._stop.set()
        self._thread.join(10)
        for info in self.infos:
            info.wait_for_publish(30)
        self.client.loop_stop()
        self.client.disconnect()
        return set(self.ids)


def collector(broker: Broker, url: str, devices: Path, name: str) -> subprocess.Popen[str]:
    cmd = [
        *(sys.executable, "-m", "gate", "central", "collect", "--broker", f"{broker.host}:{broker.port}"),
        *("--db", url, "--devices", str(devices), "--group", "city", "--client-id", name),
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "collect: subscribed" in line, line
    return proc


def run_fleet_through(
    failure: str, patroni: PatroniCluster, url: str, devices: tuple[Path, dict[str, Sealer]], tmp_path: Path
) -> list[str]:
    """Two collectors and a publisher; `failure` happens once check-ins are being stored; publishing goes on
    until check-ins are stored on the new primary. Every check-in published is stored exactly once."""
    broker = Broker(tmp_path, extra=COLLECTOR_BROKER)
    broker.start()
    procs: list[subprocess.Popen[str]] = []
    pub = None
    try:
        procs = [collector(broker, url, devices[0], f"col-{i}") for i in (1, 2)]
        pub = Publisher(broker, devices[1])
        assert wait_until(lambda: safe_stored(url)[0] > 50, 60, 0.5)
        patroni.switchover() if failure == "switchover" else patroni.kill_primary()
        after = len(pub.ids)
        assert wait_until(lambda: safe_stored(url)[0] > after + 50, 90, 0.5), "ingest did not resume on the new primary"
        published = pub.stop()
        pub = None
        assert wait_until(lambda: safe_stored(url)[0] >= len(published), 90, 0.5), (len(published), safe_stored(url)[0])
        count, ids = stored(url)
        assert (count, ids) == (len(published), published)
    finally:
        if pub is not None:
            pub.stop()
        for p in procs:
            p.terminate()
        errs = [p.communicate(timeout=30)[1] for p in procs]
        broker.stop()
    return errs


@pytest.mark.mosquitto_only("the collector's broker settings are mosquitto's")
def test_collectors_store_every_signed_check_in_once_across_a_patroni_switchover(
    patroni: PatroniCluster, ha_url: str, devices: tuple[Path, dict[str, Sealer]], tmp_path: Path
) -> None:
    errs = run_fleet_through("switchover", patroni, ha_url, devices, tmp_path)
    assert any("postgresql: connected to" in e for e in errs), errs  # at least one collector moved primaries


@pytest.mark.mosquitto_only("the collector's broker settings are mosquitto's")
def test_collectors_store_every_signed_check_in_once_when_the_primary_is_killed(
    patroni: PatroniCluster, ha_url: str, devices: tuple[Path, dict[str, Sealer]], tmp_path: Path
) -> None:
    errs = run_fleet_through("kill", patroni, ha_url, devices, tmp_path)
    assert any("postgresql: connected to" in e for e in errs), errs


class AckRecorder:
    """Stands in for paho's client: records what the collector acknowledged, and when."""

    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acked.append(mid)


def test_nothing_a_collector_acknowledged_is_missing_after_the_primary_is_killed(
    patroni: PatroniCluster, ha_url: str
) -> None:
    """Messages arrive while the primary dies: the collector acknowledges nothing it could not commit, backs
    off, and resumes on the new primary; every acknowledged message is there, and in the end all of them."""
    store = PgStore(ha_url)
    col = Collector(store, Checks({}, accept_unsigned=True), retention_days=None)
    col.client = recorder = AckRecorder()
    ids: dict[int, str] = {}
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set() or col._inbox:
            col.step()

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    try:
        for mid in range(1, 1201):
            event_id = str(uuid.uuid4())
            msg = mqtt.MQTTMessage(mid, b"gate/lane-a/checkin")
            body = {"event_id": event_id, "gate_id": "lane-a", "type": "decision", "time": time.time()}
            msg.payload, msg.qos = json.dumps(body).encode(), 1
            col.on_message(None, None, msg)
            ids[mid] = event_id
            if mid == 300:
                acked_before = len(recorder.acked)
                patroni.kill_primary()
                assert len(recorder.acked) >= acked_before
            time.sleep(0.005)
        stop.set()
        thread.join(120)
        assert not thread.is_alive()
    finally:
        stop.set()
        store.close()
    count, kept = stored(ha_url)
    assert {ids[m] for m in recorder.acked} <= kept  # acknowledged means committed on the primary that survived
    assert (count, kept) == (len(ids), set(ids.values()))


def test_the_multi_host_url_reaches_the_primary_for_writes_and_any_node_for_reads(
    patroni: PatroniCluster, ha_url: str
) -> None:
    assert len(hosts(ha_url)) == 3
    with psycopg.connect(ha_url) as db:
        row = db.execute("SELECT pg_is_in_recovery()").fetchone()
        assert row is not None and row[0] is False
    standby = ha_url.replace("target_session_attrs=read-write", "target_session_attrs=standby")

    def reads_from_a_standby() -> bool:
        try:  # a node rejoining after the previous test may still be starting up
            with psycopg.connect(standby) as db:
                row = db.execute("SELECT pg_is_in_recovery()").fetchone()
                return row is not None and row[0] is True
        except psycopg.OperationalError:
            return False

    assert wait_until(reads_from_a_standby, 60, 1.0)


def test_the_console_store_answers_its_next_read_from_the_new_primary_after_a_switchover(
    patroni: PatroniCluster, ha_url: str
) -> None:
    store = PgStore(ha_url)
    try:
        store.put_user("ops", "operations", "hash")
        before = store.db.info.port
        patroni.switchover()
        assert store.user("ops") == {
            "name": "ops",
            "role": "operations",
            "hash": "hash",
            "disabled": False,
        }  # no error page
        assert store.db.info.port != before
    finally:
        store.close()
