"""A gate with `[mqtt] hosts` fails over across brokers: the next host on a lost connection, after a jittered
backoff; what was in flight is re-sent there, subscriptions are renewed, and the state names the broker."""

from __future__ import annotations

import json
import random
import signal
import threading
import time

import pytest
from gpiozero.pins.mock import MockFactory
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import Broker, make_config, wait_until
from gate.config.model import MqttSection, parse_config
from gate.core.errors import ConfigError
from gate.decide.codes import Status, issue
from gate.decide.keys import generate_keypair
from gate.deliver.failover import MAX_DELAY, BrokerRotation
from gate.lane.wiring import build
from gate.ops.metrics import GateCollector
from gate.ops.status import on_broker
from gate.scan.decoders import make_decoder
from gate.scanner import DecodingSource
from gate.testing import ScriptedFrames


def test_hosts_are_tried_in_turn_and_a_connect_resets_the_backoff() -> None:
    r = BrokerRotation((("a", 1), ("b", 2), ("c", 3)), random.Random(1))
    assert r.label == "a:1"
    tried = [r.failed() for _ in range(7)]
    assert [(t.host, t.port) for t in tried] == [("b", 2), ("c", 3), ("a", 1), ("b", 2), ("c", 3), ("a", 1), ("b", 2)]
    assert all(0.5 <= t.delay <= 1.0 for t in tried[:3])  # first round: about a second each
    assert all(1.0 <= t.delay <= 2.0 for t in tried[3:6])  # a round of failures doubles the wait
    r.connected()
    assert 0.5 <= r.failed().delay <= 1.0 and r.failovers == 8


@settings(deadline=None)  # a shared CI machine: no per-example time limit
@given(st.integers(1, 5), st.integers(1, 100), st.integers(0, 2**32))
def test_the_wait_is_jittered_and_never_beyond_the_maximum(n: int, failures: int, seed: int) -> None:
    r = BrokerRotation(tuple((f"h{i}", 1000 + i) for i in range(n)), random.Random(seed))
    delays = [r.failed().delay for _ in range(failures)]
    assert all(0.5 <= d <= MAX_DELAY for d in delays)


def test_hosts_config_gives_the_endpoints_in_order_and_refuses_bad_lists() -> None:
    assert MqttSection(hosts=("a:8883", "[::1]:1883")).endpoints() == (("a", 8883), ("::1", 1883))
    assert MqttSection(host="b", port=8883).endpoints() == (("b", 8883),)
    base = {"gate": {"id": "lane-01"}, "venue": {"id": "v"}}
    for mqtt, why in [
        ({"hosts": ["a"]}, 'expected "host:port"'),
        ({"hosts": ["a:1", "a:1"]}, "names one broker twice"),
        ({"hosts": ["a:1"], "host": "b"}, "not both"),
        ({"hosts": ["a:70000"]}, 'expected "host:port"'),
    ]:
        with pytest.raises(ConfigError, match=why) as exc:
            parse_config({**base, "mqtt": mqtt}, "t.toml")
        assert "mqtt" in str(exc.value)


def test_status_names_the_broker_the_gate_is_on() -> None:
    assert on_broker({"broker": "b:1883", "broker_connected": True}) == " to b:1883"
    assert on_broker({"broker": "b:1883", "broker_connected": False}) == ", trying b:1883"
    assert on_broker({"broker_connected": True}) == ""


@pytest.mark.slow
def test_a_gate_fails_over_to_the_next_broker_resends_and_resubscribes(tmp_path, keys, subscriber_factory) -> None:
    a, b = Broker(tmp_path / "a"), Broker(tmp_path / "b")
    for x in (a, b):
        x.workdir.mkdir()
        x.start()
    subs = [subscriber_factory(x, "fo/#") for x in (a, b)]
    hosts = [f"{a.host}:{a.port}", f"{b.host}:{b.port}"]
    _, _, cpub = generate_keypair(tmp_path / "central")
    mqtt_cfg = {"hosts": hosts, "topic_prefix": "fo"}
    cfg = make_config(tmp_path / "state", keys, mqtt=mqtt_cfg, central={"keys": [str(cpub)]})
    g = build(cfg, source=DecodingSource(ScriptedFrames([]), make_decoder("zxing")), pin_factory=MockFactory()).start()
    heard: list[bytes] = []
    got = threading.Event()
    g.link.subscribe("fo/probe", lambda t, p, ack: (heard.append(p), got.set(), ack()))

    def send(n: int, tag: str) -> set[str]:
        now = int(time.time())
        return {
            g.handle(issue(keys.private, f"tok-{tag}{i:04d}", Status.RED, now, 600).encode())[1].event_id
            for i in range(n)
        }

    try:
        assert wait_until(lambda: g.link.connected.is_set() and g.link.subscribed.is_set(), 30)
        assert g.state()["broker"] == hosts[0]
        sent = send(20, "a")
        assert subs[0].wait_for_ids("/checkin", sent, 30) >= sent
        a.proc.send_signal(signal.SIGSTOP)  # a hangs: what the gate sends now waits unacknowledged ...
        held = send(20, "b")
        assert wait_until(lambda: g.link.client._inflight_messages >= 20, 30)
        a.stop()  # ... until a dies: then it is re-sent to b
        sent |= held | send(20, "c")
        assert subs[1].wait_for_ids("/checkin", held, 60) >= held
        seen = lambda: subs[0].event_ids("/checkin") | subs[1].event_ids("/checkin")  # noqa: E731
        assert wait_until(lambda: seen() >= sent, 60), len(sent - seen())
        assert g.drainer.wait_empty(30)
        assert g.state()["broker"] == hosts[1] and g.link.brokers.failovers >= 1
        g.reporter.publish_snapshot(g.state())  # as the lane does every STATUS_SECONDS (this test runs no loop)
        metrics = {m.name: m for m in GateCollector(lambda: g.reporter.snapshot, dict).collect()}
        assert metrics["gate_broker"].samples[0].labels == {"broker": hosts[1]}  # gate_broker_info{broker=…}
        subs[1].client.publish("fo/probe", b"hello", qos=1)  # the subscription was renewed on b
        assert got.wait(20) and heard == [b"hello"]
        # b had no session for it: deltas sent meanwhile may be missing, so it sends its sequence for a resync
        resync = json.loads(subs[1].wait_for("/resync", 1)[0])
        assert "without a session" in resync["reason"] and resync["have_seq"] == 0
        assert subs[0].on("/resync") == []  # not at the first connect
    finally:
        g.close()
        b.stop()
