"""Central sync against a real mosquitto: snapshots, deltas, policy, keys, commands, hostile input, end to end."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from gpiozero.pins.mock import MockFactory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_delivery import schema

from conftest import Broker, make_config, wait_until
from fakes import started_gate
from gate.central.mqtt import publisher
from gate.core.clock import SystemClock
from gate.decide.codes import Kind, Status, issue
from gate.decide.keys import generate_keypair, load_private_key
from gate.decide.passcache import PassCache
from gate.deliver.sealing import Sealer
from gate.lane.loop import Gate
from gate.lane.wiring import build
from gate.scan.decoders import make_decoder
from gate.scanner import DecodingSource
from gate.sync.envelope import sign
from gate.sync.passsync import rows_digest
from gate.sync.worker import central_topics
from gate.testing import ScriptedFrames

pytestmark = pytest.mark.slow  # starts a broker, a daemon, a database or a browser

PREFIX = "gate"
R = TypeVar("R")
T = central_topics(PREFIX)


class Central:
    def __init__(self, tmp: Path, broker: Broker) -> None:
        _, priv, self.pub = generate_keypair(tmp / "central")
        self.key = load_private_key(priv)
        self.broker = broker

    def send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        with publisher((self.broker.host, self.broker.port)) as pub:
            pub(topic, payload, retain)

    def snapshot(self, version: int, rows: list[list[Any]], chunk: int = 10_000) -> None:
        chunks = [rows[i : i + chunk] for i in range(0, len(rows), chunk)] or [[]]
        with publisher((self.broker.host, self.broker.port)) as pub:
            for i, c in enumerate(chunks):
                pub(
                    f"{PREFIX}/central/passes/chunk/{version}/{i}",
                    sign(self.key, "chunk", {"version": version, "index": i, "rows": c}),
                    True,
                )
            manifest = {"version": version, "count": len(rows), "chunks": len(chunks), "sha256": rows_digest(chunks)}
            pub(T["manifest"], sign(self.key, "manifest", manifest), True)

    def delta(self, base: int, seq: int, upserts: list[list[Any]], deletes: tuple[str, ...] = ()) -> bytes:
        body = {"base_version": base, "seq": seq, "upserts": upserts, "deletes": list(deletes)}
        return sign(self.key, "delta", body)


@pytest.fixture
def central(tmp_path, broker) -> Central:
    return Central(tmp_path, broker)


@pytest.fixture
def gate(tmp_path, keys, broker, central):
    cfg = make_config(
        tmp_path / "state",
        keys,
        mqtt={"host": broker.host, "port": broker.port},
        central={"keys": [str(central.pub)], "command_max_age_seconds": 30},
        gpio={"passage": {"pin": 5, "timeout_seconds": 0.3}},
    )
    g = started_gate(cfg)
    yield g
    g.close()


def settle(g: Gate, cond, timeout: float = 20.0) -> bool:
    """Wait, as the lane thread, until `cond` holds: the sync worker idle and the lane's requests done."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        g.sync.wait_idle()
        g.pump()
        if cond():
            return True
        time.sleep(0.05)
    return False


def pumping(g: Gate, fn: Callable[[], R], timeout: float = 60.0) -> R:
    """Run `fn` on a helper thread while this thread, the lane's, carries out the lane's requests."""
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(fn)
        assert wait_until(lambda: (g.pump(), future.done())[1], timeout, interval=0.01)
        return future.result()


def staged(g: Gate, version: int) -> set[int]:
    """The chunks staged on disk, read through a connection of this thread's own."""
    with PassCache(g.cfg.gate.state_dir / "passes.db") as reader:
        return reader.staging.staged(version)


def rows(n: int, status: int = 0, prefix: str = "tok") -> list[list[Any]]:
    return [[f"{prefix}-{i:08d}", status, None, 0, None] for i in range(n)]


def card(keys, token: str) -> bytes:
    return issue(keys.private, token, Status.GREEN, int(time.time()) - 60, 86_400 * 365, Kind.CARD).encode()


def test_a_100k_snapshot_is_applied_while_decisions_continue(gate, central, keys) -> None:
    central.snapshot(1, rows(100_000, status=0))
    assert settle(gate, lambda: gate.cache.info().version == 1, 60)
    gate.decider.policy = gate.decider.policy.model_copy(update={"passback_seconds": 0})
    code = card(keys, "tok-00099999")
    seen: list[str] = []
    t = threading.Thread(target=central.snapshot, args=(2, rows(100_000, status=2)))
    t.start()
    deadline = time.monotonic() + 60
    while gate.cache.info().version != 2 and time.monotonic() < deadline:  # the lane decides while it arrives
        seen.append(gate.decider.decide(code, gate.clock.read()).reason.value)
    seen.append(gate.decider.decide(code, gate.clock.read()).reason.value)
    ok = gate.cache.info().version == 2
    t.join()
    assert ok and gate.cache.info().count == 100_000
    assert set(seen) <= {"admitted", "status_red"} and seen[0] == "admitted" and seen[-1] == "status_red"
    assert len(seen) > 50  # deciding went on during the download and the swap
    assert gate.state()["cache_version"] == 2


def test_deltas_apply_in_sequence_and_a_gap_asks_for_a_resync(gate, central, keys, subscriber_factory, broker) -> None:
    sub = subscriber_factory(broker, f"{PREFIX}/+/resync")
    central.snapshot(3, rows(10))
    assert settle(gate, lambda: gate.cache.info().version == 3)
    central.send(T["delta"], central.delta(3, 1, [["tok-00000001", 2, None, 0, None]], ["tok-00000002"]))
    assert settle(gate, lambda: gate.cache.info().seq == 1)
    assert gate.cache.lookup("tok-00000001").status.value == "red" and gate.cache.lookup("tok-00000002") is None
    central.send(T["delta"], central.delta(3, 3, [["tok-00000003", 2, None, 0, None]]))  # seq 2 never came
    assert settle(gate, lambda: gate.sync.passes.awaiting_resync)
    assert gate.cache.info().seq == 1 and gate.cache.lookup("tok-00000003").status.value == "green"
    req = json.loads(sub.wait_for("/resync", 1)[0])
    jsonschema.validate(req, schema("resync"))
    assert (req["have_version"], req["have_seq"]) == (3, 1) and "gap" in req["reason"]
    assert gate.state()["sync"]["awaiting_resync"] is True
    central.snapshot(4, rows(10, status=1))
    assert settle(gate, lambda: gate.cache.info().version == 4 and not gate.sync.passes.awaiting_resync)


def test_policy_and_trust_keys_are_pushed_versioned_and_rotate_with_overlap(gate, central, tmp_path) -> None:
    central.send(T["policy"], sign(central.key, "policy", {"version": 5, "policy": {"passback_seconds": 7}}), True)
    assert settle(gate, lambda: gate.decider.policy.version == 5)
    assert gate.decider.policy.passback_seconds == 7 and gate.state()["policy_version"] == 5
    _, new_priv, new_pub = generate_keypair(tmp_path / "new")
    new_key = load_private_key(new_priv)
    code = issue(new_key, "tok-newkey1", Status.GREEN, int(time.time()), 60).encode()
    assert gate.decider.decide(code, gate.clock.read()).reason.value == "unknown_key"
    doc = {"version": 1, "keys": [{"pem": new_pub.read_text()}]}
    central.send(T["keys"], sign(central.key, "keys", doc), True)
    assert settle(gate, lambda: gate.decider.decide(code, gate.clock.read()).reason.value != "unknown_key")
    retired = {"version": 2, "keys": [{"pem": new_pub.read_text(), "not_after": time.time() - 1}]}
    central.send(T["keys"], sign(central.key, "keys", retired), True)
    assert settle(gate, lambda: gate.decider.decide(code, gate.clock.read()).reason.value == "unknown_key")


def _every_kind(central: Central, other: Ed25519PrivateKey) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("manifest", T["manifest"], {"version": 99, "count": 0, "chunks": 1, "sha256": "0" * 64}),
        ("chunk", f"{PREFIX}/central/passes/chunk/99/0", {"version": 99, "index": 0, "rows": []}),
        ("delta", T["delta"], {"base_version": 0, "seq": 1, "upserts": [["tok-forged01", 0, None, 0, None]]}),
        ("policy", T["policy"], {"version": 99, "policy": {"passback_seconds": 0}}),
        ("keys", T["keys"], {"version": 99, "keys": []}),
        ("command", f"{PREFIX}/lane-t/command", {"name": "out-of-service", "correlation_id": "x"}),
    ]


def test_forged_and_replayed_messages_of_every_kind_are_rejected_and_counted(gate, central) -> None:
    other = Ed25519PrivateKey.generate()
    before = gate.state()
    for kind, topic, body in _every_kind(central, other):
        central.send(topic, sign(other, kind, body))  # an unpinned key
        env = json.loads(sign(central.key, kind, body))
        env["msg"] = env["msg"].replace('"version":99', '"version":98').replace('"seq":1', '"seq":2')
        env["msg"] = env["msg"].replace("out-of-service", "free-pass")
        central.send(topic, json.dumps(env).encode())  # tampered after signing
        central.send(topic, b"\x00not json")
        central.send(topic, b"{" + b" " * (5 << 20) + b"}")  # oversized
    # A chunk no manifest asked for is not even taken in (chunks are fetched by exact topic), so of the six
    # kinds five reach the verifier, and each of their four forgeries is refused and counted.
    assert settle(gate, lambda: sum(gate.sync.status()["rejected"].values()) >= 20)
    rejected = gate.sync.status()["rejected"]
    assert (rejected["unknown_key"], rejected["bad_signature"], rejected["malformed"], rejected["oversized"]) == (
        5,
        5,
        5,
        5,
    )
    after = gate.state()
    for k in ("cache_version", "cache_seq", "policy_version", "mode"):
        assert before[k] == after[k]
    # replays: old versions and sequences, a reused command, a stale command, a message for another gate
    central.send(T["policy"], sign(central.key, "policy", {"version": 3, "policy": {}}))
    assert settle(gate, lambda: gate.decider.policy.version == 3)
    central.send(T["policy"], sign(central.key, "policy", {"version": 2, "policy": {}}))
    command = sign(central.key, "command", {"name": "status", "correlation_id": "c1"}, gate="lane-t")
    central.send(f"{PREFIX}/lane-t/command", command)
    central.send(f"{PREFIX}/lane-t/command", command)
    central.send(
        f"{PREFIX}/lane-t/command",
        sign(central.key, "command", {"name": "status"}, gate="lane-t", ts=time.time() - 3600),
    )
    central.send(f"{PREFIX}/lane-t/command", sign(central.key, "command", {"name": "out-of-service"}, gate="lane-9"))
    central.snapshot(2, rows(3))
    assert settle(gate, lambda: gate.cache.info().version == 2)
    central.send(T["delta"], central.delta(2, 1, []))
    central.send(T["delta"], central.delta(2, 1, []))
    central.send(T["delta"], central.delta(1, 5, []))
    rejected = gate.sync.verifier.rejected
    assert settle(gate, lambda: rejected["replayed"] >= 4 and rejected["stale"] >= 1 and rejected["wrong_gate"] >= 1)
    assert gate.decider.policy.version == 3 and gate.actuator.mode == "normal"


def _cli(*args: str, gate: Gate | None = None) -> subprocess.CompletedProcess[str]:
    """`gate central …`; with `gate`, run while this thread serves as that gate's lane (commands need it)."""

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gate", "central", *args], capture_output=True, text=True, timeout=60
        )

    return run() if gate is None else pumping(gate, run)


def test_command_round_trip_open_service_modes_and_status(gate, central, broker, subscriber_factory, keys) -> None:
    b = f"{broker.host}:{broker.port}"
    sub = subscriber_factory(broker, f"{PREFIX}/lane-t/checkin")
    r = _cli("command", "--broker", b, "--key", str(central.pub.with_suffix(".key")), "lane-t", "status", gate=gate)
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)
    jsonschema.validate(reply, schema("reply"))
    assert reply["ok"] and reply["result"]["gate_id"] == "lane-t" and reply["result"]["mode"] == "normal"
    key = str(central.pub.with_suffix(".key"))
    relay = gate.actuator.relay.pin_factory.pin(17)
    relay.clear_states()
    r = _cli("command", "--broker", b, "--key", key, "lane-t", "open", "--operator", "ctrl-room-07", gate=gate)
    assert r.returncode == 0, r.stderr
    assert any(s.state for s in relay.states)
    ev = [json.loads(p) for p in sub.wait_for("/checkin", 1)]
    assert (ev[0]["kind"], ev[0]["reason"], ev[0]["operator"], ev[0]["token"]) == (
        "staff_assisted",
        "staff_assisted",
        "ctrl-room-07",
        None,
    )
    assert json.loads(_cli("command", "--broker", b, "--key", key, "lane-t", "out-of-service", gate=gate).stdout)["ok"]
    code = issue(keys.private, "tok-oos0001", Status.GREEN, int(time.time()), 60).encode()
    assert gate.handle(code)[0].reason.value == "out_of_service"
    assert json.loads(_cli("command", "--broker", b, "--key", key, "lane-t", "in-service", gate=gate).stdout)["ok"]
    assert gate.handle(code)[0].reason.value != "out_of_service"
    r = _cli("command", "--broker", b, "--key", key, "lane-t", "free-pass", "--state", "on", gate=gate)
    assert json.loads(r.stdout)["result"]["mode"] == "free_pass" and relay.state is True
    _cli("command", "--broker", b, "--key", key, "lane-t", "free-pass", "--state", "off", gate=gate)
    assert gate.actuator.mode == "normal" and relay.state is False
    r = _cli("command", "--broker", b, "--key", key, "lane-t", "open", "--operator", "13812345678", gate=gate)
    assert r.returncode == 1 and "phone or ID-card" in json.loads(r.stdout)["error"]


HOSTILE = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=20,
)


@HOSTILE
@given(
    st.sampled_from(["manifest", "chunk", "delta", "policy", "keys", "command"]),
    st.one_of(
        st.binary(max_size=300),
        JSONISH.map(lambda v: json.dumps(v).encode()),
        st.dictionaries(st.text(max_size=10), JSONISH, max_size=6),
    ),
)
def test_hostile_payloads_on_every_inbound_topic_never_crash_or_change_state(gate, central, kind, payload) -> None:
    if isinstance(payload, dict):  # validly signed, nonsense inside
        payload = sign(
            central.key,
            kind,
            {k: v for k, v in payload.items() if k not in ("type", "gate", "ts", "nonce")},
            gate="lane-t",
        )
    before = (gate.cache.info().version, gate.cache.info().seq, gate.decider.policy.version, gate.actuator.mode)
    route = {
        "manifest": gate.sync.passes.manifest,
        "chunk": gate.sync.passes.chunk,
        "delta": gate.sync.passes.delta,
        "policy": gate.sync.trust.policy,
        "keys": gate.sync.trust.keys,
        "command": gate.sync.commands.handle,
    }[kind]
    gate.sync._enqueue(route, kind)("hostile/topic", payload)
    gate.sync.wait_idle()
    assert "central-sync" in gate.threads.supervisor.alive() and gate.threads.supervisor.restarts()["central-sync"] == 0
    after = (gate.cache.info().version, gate.cache.info().seq, gate.decider.policy.version, gate.actuator.mode)
    if kind in ("manifest", "chunk", "keys", "command"):
        assert after[:3] == before[:3]
    assert gate.sync.verifier.rejected.get("error", 0) == 0  # every failure was a named rejection


def test_end_to_end_issue_scan_collect_trace(tmp_path, keys, broker, central) -> None:
    b = f"{broker.host}:{broker.port}"
    images = tmp_path / "images"
    images.mkdir()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gate",
            "central",
            "issue",
            "--key",
            str(keys.private_path),
            "--token",
            "tok-e2e-0001",
            "--status",
            "green",
            "--valid-for",
            "600",
            "--companions",
            "1",
            "--png",
            str(images / "code.png"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout.startswith("GT1:")
    bdir = tmp_path / "broker"  # the gate's device key, as central provisions it
    assert _cli("provision", "lane-e2e", "--broker-dir", str(bdir)).returncode == 0
    db = tmp_path / "collected.db"
    collect = [
        "collect",
        "--broker",
        b,
        "--db",
        str(db),
        "--count",
        "3",
        "--idle-timeout",
        "60",
        "--devices",
        str(bdir / "devices"),
    ]
    collector = subprocess.Popen([sys.executable, "-m", "gate", "central", *collect], stderr=subprocess.PIPE, text=True)
    assert "collect: subscribed" in collector.stderr.readline()  # before the gate publishes anything
    forged = json.dumps(
        {
            "schema": "gate.checkin/1",
            "event_id": "forged-1",
            "gate_id": "lane-e2e",
            "token": "tok-e2e-0001",
            "type": "decision",
            "time": time.time(),
        }
    ).encode()
    central.send(f"{PREFIX}/lane-e2e/checkin", forged)  # anyone on an open broker: unsigned
    ghost = Sealer(Ed25519PrivateKey.generate()).seal(forged.replace(b"lane-e2e", b"lane-ghost"))
    central.send(f"{PREFIX}/lane-ghost/checkin", ghost)  # signed, but by no registered gate
    cfg = tmp_path / "gate.toml"
    cfg.write_text(f"""
[gate]
id = "lane-e2e"
state_dir = "{tmp_path / "state"}"
device_key = "{bdir / "credentials" / "lane-e2e" / "device.key"}"
[venue]
id = "bus-north"
category = "bus_station"
[scanner]
source = "images"
images_path = "{images}"
[trust]
keys = ["{keys.public_path}"]
[central]
keys = ["{central.pub}"]
[clock]
sync_source = "assume_synced"
[policy.on_cache_stale]
phone = "use_code"
card = "assist"
staff = "use_code"
[gpio]
pin_factory = "mock"
[gpio.relay]
pin = 17
pulse_seconds = 0.1
[mqtt]
host = "{broker.host}"
port = {broker.port}
""")
    gate_proc = subprocess.Popen(
        [sys.executable, "-m", "gate", "run", "--config", str(cfg)], stderr=subprocess.DEVNULL, env=dict(os.environ)
    )
    try:
        assert collector.wait(60) == 0
    finally:
        gate_proc.terminate()
        gate_proc.wait(10)
    progress = collector.stderr.read()
    assert "stored 3 new" in progress and "quarantined 2" in progress
    with sqlite3.connect(db) as q:
        assert sorted(r[0] for r in q.execute("SELECT reason FROM quarantine")) == ["unknown_gate", "unsigned"]
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gate",
            "central",
            "trace",
            "tok-e2e-0001",
            "--db",
            str(db),
            "--json",
            "--operator",
            "t",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    trail = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 0 and [t["type"] for t in trail] == ["decision", "passage", "passage"]
    assert trail[0]["decision"] == "admit" and trail[0]["venue_id"] == "bus-north" and trail[0]["gate_id"] == "lane-e2e"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gate",
            "central",
            "trace",
            "--venue",
            "bus-north",
            "--db",
            str(db),
            "--operator",
            "epi-1",
            "--from",
            str(time.time() - 600),
            "--to",
            str(time.time() + 60),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "tok-e2e-0001" in r.stdout and len(r.stdout.splitlines()) == 3


def test_a_snapshot_download_resumes_after_a_restart(tmp_path, keys, broker, central, gate) -> None:
    data = rows(30_000)
    chunks = [data[i : i + 10_000] for i in range(0, len(data), 10_000)]
    manifest = {"version": 7, "count": len(data), "chunks": 3, "sha256": rows_digest(chunks)}
    topic = [f"{PREFIX}/central/passes/chunk/7/{i}" for i in range(3)]
    # the manifest and two of the three chunks are at the broker; the gate stages those two, then restarts
    central.send(T["manifest"], sign(central.key, "manifest", manifest), retain=True)
    for i in (0, 1):
        central.send(topic[i], sign(central.key, "chunk", {"version": 7, "index": i, "rows": chunks[i]}), retain=True)
    assert settle(gate, lambda: staged(gate, 7) == {0, 1})
    cfg = gate.cfg
    gate.close()
    for i in (0, 1):  # gone from the broker: after the restart they can only come from the gate's staging
        central.send(topic[i], b"", retain=True)
    again = build(
        cfg,
        source=DecodingSource(ScriptedFrames([]), make_decoder("zxing")),
        pin_factory=MockFactory(),
        clock=SystemClock("assume_synced"),
    ).start()
    try:
        assert again.link.connected.wait(10) and again.link.subscribed.wait(10)
        central.send(topic[2], sign(central.key, "chunk", {"version": 7, "index": 2, "rows": chunks[2]}), retain=True)
        assert settle(again, lambda: again.cache.info().version == 7)
        assert again.cache.info().count == 30_000 and staged(again, 7) == set()
    finally:
        again.close()


def test_the_publishing_tools_reach_the_gate(tmp_path, gate, central, broker) -> None:
    b, key = f"{broker.host}:{broker.port}", str(central.pub.with_suffix(".key"))
    passes = tmp_path / "passes.csv"
    passes.write_text("token,status\n" + "".join(f"tok-pub{i:05d},green\n" for i in range(2500)))
    r = _cli("publish-snapshot", str(passes), "--version", "9", "--chunk-size", "1000", "--broker", b, "--key", key)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["chunks"] == 3
    assert settle(gate, lambda: gate.cache.info().version == 9 and gate.cache.info().count == 2500)
    change = tmp_path / "change.ndjson"
    change.write_text('{"token": "tok-pub00001", "status": "red"}\n')
    r = _cli(
        "publish-delta",
        str(change),
        "--base-version",
        "9",
        "--seq",
        "1",
        "--delete",
        "tok-pub00002",
        "--broker",
        b,
        "--key",
        key,
    )
    assert r.returncode == 0, r.stderr
    assert settle(gate, lambda: gate.cache.info().seq == 1)
    assert gate.cache.lookup("tok-pub00001").status.value == "red" and gate.cache.lookup("tok-pub00002") is None
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"version": 4, "passback_seconds": 11, "status_actions": {"yellow": "deny"}}))
    assert _cli("publish-policy", str(policy), "--broker", b, "--key", key).returncode == 0
    assert settle(gate, lambda: gate.decider.policy.version == 4)
    assert gate.decider.policy.status_actions.yellow.value == "deny"
    _, _, issuer = generate_keypair(tmp_path / "issuer")
    r = _cli("publish-keys", "--version", "1", f"{issuer}@0:{time.time() + 3600:.0f}", "--broker", b, "--key", key)
    assert r.returncode == 0, r.stderr
    assert settle(gate, lambda: len(gate.decider.trust.keys) == 2)


def snapshot_messages(key, version: int, n: int) -> list[tuple[str, str, bytes]]:
    rows = [[f"tok-{version:03d}-{i:05d}", version % 3, None, 0, None] for i in range(n)]
    manifest = {"version": version, "count": n, "chunks": 1, "sha256": rows_digest([rows])}
    return [
        (
            "chunk",
            f"{PREFIX}/central/passes/chunk/{version}/0",
            sign(key, "chunk", {"version": version, "index": 0, "rows": rows}),
        ),
        ("manifest", T["manifest"], sign(key, "manifest", manifest)),
    ]


@pytest.mark.parametrize("attempt", range(3))
def test_state_is_read_while_snapshots_are_applied(gate, central, attempt) -> None:
    """The reproduction of the old fault: 30 snapshots applied while another thread reads the state
    gave `database table is locked` and left the last snapshot unapplied. (`script/test --repeat 100
    tests/test_sync.py -k while_snapshots` runs it a hundred times.)"""
    sync = gate.sync
    base = attempt * 30
    routes = {"chunk": sync.passes.chunk, "manifest": sync.passes.manifest}
    for version in range(base + 1, base + 31):
        for kind, topic, payload in snapshot_messages(central.key, version, 50):
            sync._enqueue(routes[kind], kind)(topic, payload)
    states = []
    while sync._jobs.unfinished:  # the lane thread reads its state while the worker applies
        states.append(gate.state())
        # Paced, not spinning: a reader that never lets go of the GIL starved the worker on a busy machine
        # (120 s timeouts); hundreds of reads still interleave with the 30 snapshots.
        time.sleep(0.002)
    sync.wait_idle()
    gate.pump()
    assert gate.cache.info().version == base + 30 and gate.cache.info().count == 50
    assert sync.status()["rejected"].get("error", 0) == 0 and not sync.status()["snapshot_in_progress"]
    assert all(s["sync"]["rejected"].get("error", 0) == 0 for s in states)


def test_chunks_are_fetched_by_exact_topic_and_a_new_snapshot_clears_the_old_ones(
    gate, central, broker, tmp_path, subscriber_factory
) -> None:
    f = tmp_path / "passes.csv"
    f.write_text("token,status\n" + "".join(f"tok-x{i:06d},green\n" for i in range(25)))
    key = str(central.pub.with_suffix(".key"))
    b = f"{broker.host}:{broker.port}"
    # Like RabbitMQ, which keeps retained messages only for exact-topic subscriptions: no wildcard delivery.
    gate.link.unsubscribe(T["chunk"])
    r = _cli("publish-snapshot", str(f), "--version", "1", "--chunk-size", "10", "--broker", b, "--key", key)
    assert r.returncode == 0, r.stderr
    assert settle(gate, lambda: gate.cache.info().version == 1 and gate.cache.info().count == 25)
    assert not any("/chunk/1/" in t for t in gate.link._subs)  # let go once applied
    f.write_text("token,status\ntok-y000001,red\n")
    r = _cli("publish-snapshot", str(f), "--version", "2", "--broker", b, "--key", key)
    assert r.returncode == 0 and json.loads(r.stdout)["cleared_chunks_of_version"] == 1
    assert settle(gate, lambda: gate.cache.info().version == 2 and gate.cache.lookup("tok-y000001") is not None)
    late = subscriber_factory(broker, f"{PREFIX}/central/passes/chunk/#")  # a gate that connects later
    assert wait_until(lambda: late.on("/0"), 10)
    assert {t for t, _, retain in late.messages if retain} == {f"{PREFIX}/central/passes/chunk/2/0"}


@pytest.mark.parametrize("fault", ["a bad row in the last chunk", "a count the rows disagree with"])
def test_a_snapshot_that_fails_late_in_its_stream_changes_nothing(gate, central, fault) -> None:
    """Rows stream into the swap one chunk at a time, so a fault found in the last chunk is found after most
    rows were written: the swap rolls back whole, and the cache keeps its version and rows."""
    sync = gate.sync
    routes = {"chunk": sync.passes.chunk, "manifest": sync.passes.manifest}
    for kind, topic, payload in snapshot_messages(central.key, 1, 50):
        sync._enqueue(routes[kind], kind)(topic, payload)
    assert settle(gate, lambda: gate.cache.info().version == 1)
    chunks = [rows(1000, prefix="new"), rows(1000, prefix="newer")]
    count = 2000
    if fault.startswith("a bad row"):
        chunks[1][-1][1] = 7  # status 7 does not exist
    else:
        count = 2001
    manifest = {"version": 2, "count": count, "chunks": 2, "sha256": rows_digest(chunks)}
    for i, c in enumerate(chunks):
        topic = f"{PREFIX}/central/passes/chunk/2/{i}"
        sync._enqueue(sync.passes.chunk, "chunk")(
            topic, sign(central.key, "chunk", {"version": 2, "index": i, "rows": c})
        )
    sync._enqueue(sync.passes.manifest, "manifest")(T["manifest"], sign(central.key, "manifest", manifest))
    assert settle(gate, lambda: sync.status()["rejected"].get("malformed", 0) >= 1)
    assert gate.cache.info().version == 1 and gate.cache.info().count == 50
    assert gate.cache.lookup("new-00000000") is None and gate.cache.lookup("tok-001-00000") is not None
    assert staged(gate, 2) == set()


def test_central_changes_a_buss_route_and_run_without_a_restart_and_it_lasts(tmp_path, keys, broker, central) -> None:
    def bus(route: str) -> Gate:
        cfg = make_config(
            tmp_path / "state",
            keys,
            venue={"id": "city-bus", "category": "bus", "vehicle_id": "bus-1042", "route": route, "run": "R7-0600"},
            gps={"optional": True},
            mqtt={"host": broker.host, "port": broker.port},
            central={"keys": [str(central.pub)], "command_max_age_seconds": 30},
        )
        g = build(
            cfg, source=DecodingSource(ScriptedFrames([]), make_decoder("zxing")), pin_factory=MockFactory()
        ).start()
        assert g.link is not None and g.link.connected.wait(10) and g.link.subscribed.wait(10)
        return g

    b, key = f"{broker.host}:{broker.port}", str(central.pub.with_suffix(".key"))
    g = bus("R7")
    try:
        assert g.recorder.venue.route == "R7"
        r = _cli(
            "command", "--broker", b, "--key", key, "lane-t", "set-trip", "--route", "R12", "--run", "R12-1410", gate=g
        )
        reply = json.loads(r.stdout)
        assert (
            reply["ok"] and reply["result"]["venue"]["route"] == "R12" and reply["result"]["venue"]["run"] == "R12-1410"
        )
        r = _cli("command", "--broker", b, "--key", key, "lane-t", "set-trip", "--route", "R 12/#", gate=g)
        assert not json.loads(r.stdout)["ok"] and "route must be an id" in json.loads(r.stdout)["error"]
        assert g.recorder.venue.route == "R12"  # a refused change changes nothing
    finally:
        g.close()
    g = bus("R7")  # restarted with the config's R7: central's later word stands
    try:
        assert (g.recorder.venue.route, g.recorder.venue.run) == ("R12", "R12-1410")
    finally:
        g.close()


def test_set_trip_is_refused_for_a_station_gate(gate, central, broker) -> None:
    b, key = f"{broker.host}:{broker.port}", str(central.pub.with_suffix(".key"))
    r = _cli("command", "--broker", b, "--key", key, "lane-t", "set-trip", "--route", "R1", gate=gate)
    reply = json.loads(r.stdout)
    assert not reply["ok"] and "not a bus" in reply["error"]
