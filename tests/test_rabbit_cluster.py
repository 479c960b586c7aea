"""RabbitMQ as a 3-node cluster (one per module: a cluster takes 20-60 s to form): provisioned definitions load
verbatim, check-ins wait in a quorum queue that competing AMQP collectors drain (acking after commit),
retained documents reach a gate on any node, and a gate with three hosts keeps delivering while nodes stop."""

from __future__ import annotations

import json
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import psycopg
import pytest
from gpiozero.pins.mock import MockFactory

from conftest import make_config, wait_until
from gate.decide.codes import Status, issue
from gate.decide.keys import generate_keypair
from gate.lane.wiring import build
from gate.scan.decoders import make_decoder
from gate.scanner import DecodingSource
from gate.testing import ScriptedFrames

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
IDENTITIES = (
    ["lane-r1"],
    ["collector-1", "--role", "collector"],
    ["collector-2", "--role", "collector"],
    ["ops-1", "--role", "publisher"],
)


def central(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "gate", "central", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


def queue(cluster: Any, name: str = "gate-checkins") -> dict[str, int] | None:
    """messages_ready and messages_unacknowledged of a queue, as node 1 sees them (None: no such queue)."""
    r = cluster.ctl(0, "list_queues", "-q", "--no-table-headers", "name", "messages_ready", "messages_unacknowledged")
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == name:
            return {"ready": int(parts[1]), "unacked": int(parts[2])}
    return None


@pytest.fixture(scope="module")
def prov(rabbit_cluster: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Identities provisioned with --broker rabbitmq, loaded by the very command provision prints."""
    d = tmp_path_factory.mktemp("prov") / "broker"
    for args in IDENTITIES:
        r = central("provision", *args, "--broker-dir", str(d), "--broker", "rabbitmq")
        assert r.returncode == 0, r.stderr
    load = next(line for line in r.stdout.splitlines() if "rabbitmqctl import_definitions" in line)
    cmd = shlex.split(load.split("load it: ", 1)[1])
    assert cmd[:2] == ["rabbitmqctl", "import_definitions"]
    done = subprocess.run(cmd, env=rabbit_cluster.shell_env(0), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    users = lambda: rabbit_cluster.ctl(0, "list_users", "-q").stdout  # noqa: E731
    assert wait_until(lambda: queue(rabbit_cluster) is not None and "collector-2" in users(), 60)
    return d


def gate_on(hosts: list[str], prov: Path, state: Path, keys: Any, **sections: Any) -> Any:
    creds = prov / "credentials" / "lane-r1"
    mqtt_cfg = {
        "hosts": hosts,
        "protocol": "3.1.1",
        "username": "lane-r1",
        "password_file": str(creds / "mqtt-password"),
        "topic_prefix": "gate",
    }
    cfg = make_config(
        state,
        keys,
        mqtt=mqtt_cfg,
        policy={"passback_seconds": 0},
        gate={"id": "lane-r1", "device_key": str(creds / "device.key")},
        **sections,
    )
    return build(
        cfg, source=DecodingSource(ScriptedFrames([]), make_decoder("zxing")), pin_factory=MockFactory()
    ).start()


def collect_amqp(cluster: Any, prov: Path, name: str, db: str, order: list[int]) -> subprocess.Popen[str]:
    urls = [f"amqp://{name}@127.0.0.1:{cluster.nodes[i].amqp_port}/%2F" for i in order]
    amqp = [a for u in urls for a in ("--amqp", u)]
    password = prov / "credentials" / name / "mqtt-password"
    options = ["--password-file", str(password), "--db", db, "--devices", str(prov / "devices")]
    cmd = [sys.executable, "-m", "gate", "central", "collect-amqp", *amqp, *options]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "collect-amqp: consuming gate-checkins on" in line, line
    return proc


def finish(proc: subprocess.Popen[str]) -> str:
    """Stop a collector as an operator would (Ctrl-C) and return what it printed."""
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    return err


def stored_new(output: str) -> int:
    line = [ln for ln in output.splitlines() if ln.startswith("received ")][-1]
    return int(line.split("stored ")[1].split(" new")[0])


def test_the_cluster_fixture_forms_three_nodes_and_a_killed_node_rejoins(rabbit_cluster: Any) -> None:
    names = sorted(n.name for n in rabbit_cluster.nodes)
    assert rabbit_cluster.members(0) == names
    rabbit_cluster.kill_node(2)
    rest = sorted(n.name for n in rabbit_cluster.nodes[:2])
    assert wait_until(lambda: rabbit_cluster.members(0) == rest, 60)
    rabbit_cluster.start_node(2)
    assert wait_until(lambda: rabbit_cluster.members(1) == names, 60)


def test_provisioned_definitions_load_verbatim_with_a_quorum_queue_on_every_node(rabbit_cluster, prov) -> None:
    r = rabbit_cluster.ctl(1, "list_queues", "-q", "--no-table-headers", "name", "type", "members")
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("gate-checkins"))
    assert "quorum" in line and all(n.name in line for n in rabbit_cluster.nodes)
    topics = rabbit_cluster.ctl(2, "list_topic_permissions", "-q").stdout
    assert "lane-r1" in topics and "collector-1" in topics
    defs = json.loads((prov / "rabbitmq" / "definitions.json").read_text())
    assert (prov / "rabbitmq" / "definitions.json").stat().st_mode & 0o077 == 0  # password hashes: root's alone
    assert [b["routing_key"] for b in defs["bindings"]] == ["gate.*.checkin"]


def test_two_amqp_collectors_share_the_queue_and_a_killed_ones_messages_go_to_the_other(
    rabbit_cluster, prov, tmp_path, keys, pg_url
) -> None:
    c1 = collect_amqp(rabbit_cluster, prov, "collector-1", pg_url, [0, 1, 2])
    c2 = collect_amqp(rabbit_cluster, prov, "collector-2", pg_url, [1, 2, 0])
    g = gate_on(rabbit_cluster.mqtt_hosts[2:], prov, tmp_path / "state", keys)
    now = int(time.time())

    def send(tag: str, n: int) -> set[str]:
        codes = [issue(keys.private, f"tok-{tag}{i:05d}", Status.RED, now, 600).encode() for i in range(n)]
        return {g.handle(c)[1].event_id for c in codes}

    def stored() -> tuple[int, int]:
        with psycopg.connect(pg_url) as db:
            row = db.execute("SELECT count(*), count(DISTINCT event_id) FROM checkins").fetchone()
        assert row is not None
        return int(row[0]), int(row[1])

    try:
        sent = send("q", 300)
        assert wait_until(lambda: stored()[0] >= 300, 120), stored()
        c1.send_signal(signal.SIGSTOP)  # hangs mid-batch: what it was given stays unacknowledged
        sent |= send("k", 300)
        held = lambda: (q := queue(rabbit_cluster)) is not None and q["ready"] == 0 and q["unacked"] > 0  # noqa: E731
        assert wait_until(lambda: stored()[0] >= 300 and held(), 120), queue(rabbit_cluster)
        c1.send_signal(signal.SIGKILL)
        c1.wait(30)
        assert wait_until(lambda: stored()[0] >= 600, 120), stored()
        assert stored() == (600, 600)  # 0 lost, 0 duplicates
        with psycopg.connect(pg_url) as db:
            assert {r[0] for r in db.execute("SELECT event_id FROM checkins")} == sent
        second = stored_new(finish(c2))
        assert 0 < second < 600  # both took a share of the first 300; the second also the killed one's
    finally:
        g.close()
        for c in (c1, c2):
            if c.poll() is None:
                c.kill()
                c.wait(30)


def test_a_policy_published_through_node_1_reaches_a_gate_that_joins_on_node_3(
    rabbit_cluster, prov, tmp_path, keys
) -> None:
    """RabbitMQ 3 keeps retained messages on the node that received them: central's tools, given the cluster's
    hosts, publish each retained document to every node."""
    _, ckey, cpub = generate_keypair(tmp_path / "central")
    hosts = rabbit_cluster.mqtt_hosts
    conf = tmp_path / "central.toml"
    ops = prov / "credentials" / "ops-1" / "mqtt-password"
    conf.write_text(
        f'[mqtt]\nhosts = {json.dumps(hosts)}\nprotocol = "3.1.1"\nusername = "ops-1"\npassword_file = "{ops}"\n'
    )
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"version": 7, "passback_seconds": 11}))
    r = central("publish-policy", str(policy), "--config", str(conf), "--key", str(ckey))
    assert r.returncode == 0, r.stderr
    g = gate_on(hosts[2:], prov, tmp_path / "state", keys, central={"keys": [str(cpub)]})
    try:
        assert wait_until(lambda: (g.pump(), g.decider.policy.version == 7)[1], 60)
        assert g.state()["broker"] == hosts[2]
    finally:
        g.close()


def test_a_gate_with_three_hosts_keeps_delivering_while_nodes_stop_one_at_a_time(
    rabbit_cluster, prov, tmp_path, keys
) -> None:
    """The issue's done-when: each round stops the node the gate is on; nothing is lost."""
    db = tmp_path / "c.db"
    col = collect_amqp(rabbit_cluster, prov, "collector-1", str(db), [2, 1, 0])
    hosts = rabbit_cluster.mqtt_hosts
    g = gate_on(hosts, prov, tmp_path / "state", keys)
    sent: set[str] = set()
    names = sorted(n.name for n in rabbit_cluster.nodes)

    def send(tag: str, n: int = 20) -> None:
        now = int(time.time())
        for i in range(n):
            sent.add(g.handle(issue(keys.private, f"tok-{tag}{i:04d}", Status.RED, now, 600).encode())[1].event_id)

    def stored() -> set[str]:  # the decisions: the gate's own events (an alarm on a slow failover) may be there too
        with sqlite3.connect(db) as con:
            return {r[0] for r in con.execute("SELECT event_id FROM checkins WHERE type = 'decision'")}

    try:
        assert wait_until(lambda: g.link.connected.is_set(), 60)
        visited = set()
        for round_ in range(3):
            on = hosts.index(g.link.broker)
            visited.add(on)
            send(f"a{round_}")
            rabbit_cluster.stop_node(on)
            send(f"b{round_}")  # while the gate finds another node: kept in the outbox, then sent
            assert wait_until(lambda: g.link.connected.is_set() and g.link.broker != hosts[on], 60)  # noqa: B023
            send(f"c{round_}")
            rabbit_cluster.start_node(on)
            assert wait_until(lambda: rabbit_cluster.members(0) == names, 120)
        assert g.drainer.wait_empty(60)
        assert wait_until(lambda: stored() >= sent, 120), len(sent - stored())
        assert stored() == sent and len(sent) == 180
        assert len(visited) >= 2 and g.link.brokers.failovers >= 3
    finally:
        g.close()
        if col.poll() is None:
            finish(col)


def doc_blocks(heading: str) -> list[str]:
    """The ```sh blocks of docs/broker.md under `heading`, up to the next heading of its level."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "broker.md").read_text()
    part = text.split(heading + "\n", 1)[1].split("\n### ", 1)[0]
    return [b.split("\n", 1)[1] for b in part.split("```sh")[1:] for b in [b.split("```", 1)[0]]]


def test_the_single_node_steps_of_the_broker_doc_store_every_check_in(rabbit_cluster, tmp_path, keys) -> None:
    """docs/broker.md's RabbitMQ steps as written (only the addresses differ; no TLS on the test nodes), run last
    in this module: they delete the guest user and give collector-1 a new password."""
    setup, consume = doc_blocks("### One node")
    env = {
        **rabbit_cluster.shell_env(0),
        "PATH": f"{Path(sys.executable).parent}:{rabbit_cluster.shell_env(0)['PATH']}",
    }
    r = subprocess.run(["bash", "-euc", setup], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    users = lambda: rabbit_cluster.ctl(0, "list_users", "-q").stdout  # noqa: E731
    assert wait_until(lambda: "lane-01" in users() and "guest" not in users(), 60), users()
    cfg = tomllib.loads((tmp_path / "lane-01.toml").read_text())
    assert cfg["mqtt"]["hosts"] == ["mq1.example.org:8883"] and cfg["mqtt"]["protocol"] == "3.1.1"
    creds = tmp_path / "gate-broker" / "credentials" / "lane-01"
    mqtt_cfg = {**cfg["mqtt"], "hosts": [rabbit_cluster.mqtt_hosts[0]], "password_file": str(creds / "mqtt-password")}
    del mqtt_cfg["tls"]
    gcfg = make_config(
        tmp_path / "state",
        keys,
        mqtt=mqtt_cfg,
        policy={"passback_seconds": 0},
        gate={"id": "lane-01", "device_key": str(creds / "device.key")},
    )
    amqp = f"127.0.0.1:{rabbit_cluster.nodes[0].amqp_port}"
    cmd = consume.replace("mq1.example.org:5672", amqp).strip() + " --count 20 --idle-timeout 120"
    col = subprocess.Popen(["bash", "-euc", cmd], cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    source = DecodingSource(ScriptedFrames([]), make_decoder("zxing"))
    g = build(gcfg, source=source, pin_factory=MockFactory()).start()
    try:
        now = int(time.time())
        sent = {
            g.handle(issue(keys.private, f"tok-d{i:04d}", Status.RED, now, 600).encode())[1].event_id for i in range(20)
        }
        _, err = col.communicate(timeout=180)
        assert col.returncode == 0 and "stored 20 new" in err, err
        with sqlite3.connect(tmp_path / "checkins.db") as con:
            assert {row[0] for row in con.execute("SELECT event_id FROM checkins")} == sent  # 100 %
    finally:
        g.close()
        if col.poll() is None:
            col.kill()
