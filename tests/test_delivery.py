"""Check-in delivery against a real mosquitto: acks, outages, schemas, shared subscriptions."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from gpiozero.pins.mock import MockFactory

from conftest import Broker, make_config, new_broker, require, wait_until
from gate.contracts import Alarm
from gate.core.clock import SystemClock
from gate.decide.codes import Status, issue
from gate.lane.loop import Gate
from gate.lane.wiring import build
from gate.scan.decoders import make_decoder
from gate.scanner import DecodingSource
from gate.testing import ScriptedFrames

pytestmark = pytest.mark.slow  # starts a broker, a daemon, a database or a browser

SCHEMAS = Path(__file__).resolve().parent.parent / "gate" / "schemas"


def schema(name: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / f"{name}.json").read_text())


def make_gate(tmp_path: Path, keys, broker: Broker, **sections: Any) -> Gate:
    cfg = make_config(
        tmp_path / "state",
        keys,
        mqtt={"host": broker.host, "port": broker.port, "telemetry_seconds": 1, **sections.pop("mqtt", {})},
        policy={"passback_seconds": 0},
        **sections,
    )
    src = DecodingSource(ScriptedFrames([]), make_decoder("zxing"))
    return build(cfg, source=src, pin_factory=MockFactory(), clock=SystemClock("assume_synced")).start()


def codes(keys, n: int, status: Status = Status.GREEN) -> list[bytes]:
    now = int(time.time())
    return [issue(keys.private, f"tok-{i:06d}", status, now - 5, 600).encode() for i in range(n)]


def ids(payloads: list[bytes]) -> list[str]:
    return [json.loads(p)["event_id"] for p in payloads]


@pytest.fixture
def gates():
    made: list[Gate] = []
    yield made
    for g in made:
        g.close()


def test_check_ins_are_published_acked_and_removed(tmp_path, keys, broker, subscriber_factory, gates) -> None:
    sub = subscriber_factory(broker)
    gate = make_gate(tmp_path, keys, broker)
    gates.append(gate)
    sent = [gate.handle(c)[1].event_id for c in codes(keys, 3, Status.RED)]
    got = sub.wait_for("/checkin", 3)
    assert ids(got) == sent  # in order
    assert gate.drainer.wait_empty(10) and gate.outbox.depth == 0
    for payload in got:
        jsonschema.validate(json.loads(payload), schema("checkin"))


def test_every_published_payload_matches_its_schema(tmp_path, keys, broker, subscriber_factory, gates) -> None:
    sub = subscriber_factory(broker)
    gate = make_gate(tmp_path, keys, broker, gpio={"passage": {"pin": 5, "timeout_seconds": 0.2}})
    gates.append(gate)
    gate.handle(codes(keys, 1)[0])  # admit -> decision + not_passed passage
    gate.handle(b"garbage")  # deny malformed: token null
    gate.control.post(Alarm("fire", True, "test"))  # as the actuator's threads report one
    assert wait_until(lambda: (gate.tick(), len(sub.on("/checkin")) == 3 and sub.on("/alarm"))[1])
    gate.reporter._last_telemetry = 0
    gate.tick()
    assert sub.wait_for("/telemetry", 1) and sub.wait_for("/state", 1)
    for suffix, name in (
        ("/checkin", "checkin"),
        ("/alarm", "alarm"),
        ("/state", "state"),
        ("/telemetry", "telemetry"),
    ):
        for payload in sub.on(suffix):
            jsonschema.validate(json.loads(payload), schema(name))
    for payload in sub.on("/availability"):
        jsonschema.validate(payload.decode(), schema("availability"))
    kinds = [(m["type"], m["reason"]) for m in map(json.loads, sub.on("/checkin"))]
    assert ("passage", "passage") in kinds and ("decision", "malformed") in kinds


def test_online_only_after_connect_and_offline_with_the_reason_on_clean_stop(
    tmp_path, keys, broker, subscriber_factory
) -> None:
    sub = subscriber_factory(broker, "gate/#")
    gate = make_gate(tmp_path, keys, broker)
    assert sub.wait_for("/availability", 1) == [b"online"]
    gate.reporter.publish_state()
    sub.wait_for("/state", 1)
    gate.close()
    assert sub.wait_for("/availability", 2)[-1] == b"offline"  # Home Assistant's payload for unavailable
    last = json.loads(sub.on("/state")[-1])  # rewritten at stop, before the availability
    assert last["mode"] == "stopped" and last["broker_connected"] is False and last["stopped"]["reason"] == "stop"
    status = json.loads((tmp_path / "state" / "status.json").read_text())
    assert status["stopped"]["reason"] == "stop"
    # MQTT 5: every JSON payload says so; the plain-text availability does not (MQTT 3.1.1 has no such field)
    v5 = getattr(broker, "mqtt5", True)
    assert sub.content_types[f"gate/{gate.cfg.gate.id}/state"] == {"application/json" if v5 else None}
    assert sub.content_types[f"gate/{gate.cfg.gate.id}/availability"] == {None}
    # a newcomer sees the stopped state (by its exact topic: RabbitMQ 3 sends retained ones only for those)
    retained = subscriber_factory(broker, f"gate/{gate.cfg.gate.id}/state")
    assert json.loads(retained.wait_for("/state", 1)[-1])["mode"] == "stopped"


def test_broker_down_during_1000_decisions_loses_nothing(tmp_path, keys, subscriber_factory, gates) -> None:
    broker = new_broker(tmp_path)  # not started yet
    gate = make_gate(tmp_path, keys, broker)
    gates.append(gate)
    sent = [gate.handle(c)[1].event_id for c in codes(keys, 1000, Status.RED)]
    assert gate.outbox.depth == 1000
    broker.start()
    try:
        sub = subscriber_factory(broker)
        got = set(ids(sub.wait_for("/checkin", 1000, timeout=60)))
        assert got >= set(sent)
        assert gate.drainer.wait_empty(20)
    finally:
        broker.stop()


@pytest.mark.mosquitto_only("a broker that forgets its sessions when killed (persistence false)")
def test_broker_killed_and_restarted_mid_stream_loses_nothing(tmp_path, keys, subscriber_factory, gates) -> None:
    broker = Broker(tmp_path, extra="persistence false\n")
    broker.start()
    try:
        gate = make_gate(tmp_path, keys, broker)
        gates.append(gate)
        all_codes = codes(keys, 600, Status.RED)
        sent = [gate.handle(c)[1].event_id for c in all_codes[:300]]
        broker.stop()  # SIGKILL mid-stream: in-flight messages may be lost by the broker
        sent += [gate.handle(c)[1].event_id for c in all_codes[300:]]
        broker.start()
        sub = subscriber_factory(broker)
        assert gate.drainer.wait_empty(60)
        # What the first broker took before dying cannot be re-read from it; what was undelivered is resent.
        # The gate's PUBACK can come before the broker has passed a message on: wait for every id.
        assert set(sent[300:]) <= sub.wait_for_ids("/checkin", set(sent[300:]), timeout=30)
        assert gate.outbox.depth == 0
    finally:
        broker.stop()


@pytest.mark.mqtt5_only("RabbitMQ 3 has no shared subscriptions (collect --no-share)")
def test_a_shared_subscription_group_receives_every_check_in(tmp_path, keys, broker, subscriber_factory, gates) -> None:
    a = subscriber_factory(broker, "$share/collectors/gate/+/checkin")
    b = subscriber_factory(broker, "$share/collectors/gate/+/checkin")
    gate = make_gate(tmp_path, keys, broker)
    gates.append(gate)
    sent = [gate.handle(c)[1].event_id for c in codes(keys, 200, Status.RED)]
    wait_until(lambda: len(a.on("/checkin")) + len(b.on("/checkin")) >= 200)
    got = ids(a.on("/checkin")) + ids(b.on("/checkin"))
    assert set(got) == set(sent)
    assert a.on("/checkin") and b.on("/checkin")  # the load was spread


def offline_gate(tmp_path: Path, keys, **outbox: Any) -> Gate:
    cfg = make_config(tmp_path / "state", keys, outbox=outbox, policy={"passback_seconds": 0})
    return build(
        cfg,
        source=DecodingSource(ScriptedFrames([]), make_decoder("zxing")),
        pin_factory=MockFactory(),
        clock=SystemClock("assume_synced"),
        with_mqtt=False,
    ).start()


def test_full_outbox_takes_the_gate_out_of_service_and_alarms(tmp_path, keys, gates) -> None:
    gate = offline_gate(tmp_path, keys, max_events=1000)
    gates.append(gate)
    gate.cache.apply_delta([], [], 0)
    green = codes(keys, 1001)
    for c in green[:1000]:
        gate.handle(c)
    d, _ = gate.handle(green[1000])
    assert (d.action.value, d.reason.value) == ("deny", "out_of_service")
    gate.tick()
    alarms = [json.loads(r[4]) for r in gate.outbox.fetch(0, 5000) if r[2].endswith("/alarm")]
    assert [(a["alarm"], a["active"]) for a in alarms] == [("outbox_full", True)]
    assert gate.outbox.dropped == 0 and gate.outbox.depth >= 1001  # nothing lost


def test_drop_oldest_policy_drops_counted_and_keeps_admitting(tmp_path, keys, gates) -> None:
    gate = offline_gate(tmp_path, keys, max_events=1000, on_full="drop_oldest")
    gates.append(gate)
    gate.cache.apply_delta([], [], 0)
    for c in codes(keys, 1100, Status.RED):
        gate.handle(c)
    assert gate.outbox.depth < 1000 and gate.outbox.dropped > 0
    assert gate.outbox.depth + gate.outbox.dropped == 1100
    assert gate.state()["outbox_dropped"] == gate.outbox.dropped


def test_indicator_shows_offline_while_the_broker_is_unreachable(tmp_path, keys, monkeypatch, gates) -> None:
    import gate.ops.reporting

    monkeypatch.setattr(gate.ops.reporting, "OFFLINE_AFTER", 0.2)
    broker = new_broker(tmp_path)
    g = make_gate(tmp_path, keys, broker)
    gates.append(g)
    assert wait_until(lambda: (g.tick(), g.actuator.mode == "offline")[1], timeout=5)
    assert g.state()["mode"] == "offline"
    assert g.handle(codes(keys, 1, Status.RED)[0])[0].reason.value == "status_red"  # still deciding
    broker.start()
    try:
        # (RabbitMQ takes seconds to start, and the gate's reconnect backs off meanwhile)
        assert wait_until(lambda: (g.tick(), g.actuator.mode == "normal")[1], timeout=60)
    finally:
        broker.stop()


def test_logs_never_show_a_full_token(tmp_path, keys, caplog, gates) -> None:
    g = offline_gate(tmp_path, keys)
    gates.append(g)
    caplog.set_level("DEBUG")
    text = issue(keys.private, "tok-secret-123456", Status.GREEN, int(time.time()), 60)
    g.handle(text.encode())
    g.handle(text.encode())
    assert "tok-secret-123456" not in caplog.text and text not in caplog.text
    assert "tok-…" in caplog.text


def test_a_check_in_handed_to_paho_during_a_disconnect_is_still_acked_and_removed(tmp_path, keys, gates) -> None:
    broker = new_broker(tmp_path)  # down
    g = make_gate(tmp_path, keys, broker)
    gates.append(g)
    g.link.connected.set()  # the race: the link looked up when the drainer published
    g.handle(codes(keys, 1, Status.RED)[0])
    assert wait_until(lambda: g.drainer.inflight == 1, timeout=5)  # paho holds it with rc NO_CONN
    broker.start()
    try:
        assert g.drainer.wait_empty(60)
    finally:
        broker.stop()


def test_event_ids_are_unique_and_ordered_even_when_threads_are_preempted_mid_call() -> None:
    """Events are made on three threads. A tracer hands the GIL to another thread between any two lines of
    uuid7, so an unguarded read-modify-write of its counter shows up as repeated time+counter prefixes."""
    import threading

    from gate.deliver import events

    def on_line(frame, event, arg):
        if event == "line":
            time.sleep(0)  # let another thread run here
        return on_line

    out: list[list[str]] = [[] for _ in range(4)]
    now = 1_800_000_000.0  # one millisecond for every call: the counter alone keeps them apart
    threading.settrace(lambda frame, event, arg: on_line if frame.f_code is events.uuid7.__code__ else None)
    try:
        threads = [threading.Thread(target=lambda o=o: o.extend(events.uuid7(now) for _ in range(500))) for o in out]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        threading.settrace(None)  # type: ignore[arg-type]
    stamps = [i[:18] for o in out for i in o]  # 48-bit ms, version, 12-bit counter
    assert len(set(stamps)) == 2000
    assert all(o == sorted(o) for o in out)


@pytest.mark.mqtt5_only("a refusal is only visible in an MQTT 5 PUBACK reason code")
def test_an_event_the_broker_keeps_refusing_becomes_a_dead_letter_and_the_rest_flow(
    tmp_path, keys, subscriber_factory, gates
) -> None:
    pw, acl = tmp_path / "passwd", tmp_path / "acl"
    subprocess.run([require("mosquitto_passwd"), "-b", "-c", str(pw), "lane-t", "pw-t"], check=True)
    subprocess.run([require("mosquitto_passwd"), "-b", str(pw), "reader", "pw-r"], check=True)
    # the gate may publish its check-ins but not its alarms: every alarm is refused
    acl.write_text(
        "user lane-t\ntopic write gate/lane-t/checkin\ntopic write gate/lane-t/availability\n"
        "topic write gate/lane-t/state\nuser reader\ntopic read gate/#\n"
    )
    broker = Broker(tmp_path, extra=f"password_file {pw}\nacl_file {acl}\n", anonymous=False)
    broker.start()
    try:
        creds = tmp_path / "pw"
        creds.write_text("pw-t")
        gate = make_gate(
            tmp_path,
            keys,
            broker,
            mqtt={"username": "lane-t", "password_file": str(creds), "protocol": "5", "max_refusals": 3},
        )
        gates.append(gate)
        gate.drainer.retry_delay = 0.05
        sub = subscriber_factory(broker, username="reader", password="pw-r")
        gate.handle(codes(keys, 1, Status.RED)[0])
        gate.control.post(Alarm("fire", True, "refused by the ACL"))
        gate.pump()
        sent = [gate.handle(c)[1].event_id for c in codes(keys, 5, Status.RED)]
        assert set(sent) <= sub.wait_for_ids("/checkin", set(sent), timeout=30)  # the rows behind it flowed
        assert wait_until(lambda: gate.outbox.dead_letters == 1, 30)
        assert gate.drainer.wait_empty(10)
        gate.pump()  # the dead_letter alarm is itself an event: refused too, so it ends a dead letter as well
        assert wait_until(lambda: (gate.pump(), gate.state()["dead_letters"] >= 1)[1], 10)
        assert gate.state()["refusals_visible"] is True
    finally:
        broker.stop()
