"""RabbitMQ definitions from provision: the permission regexes match the client ids and topics the gates and
central tools really use, and nothing of another identity's (checked here with Python's re; the cluster test
loads them into RabbitMQ)."""

from __future__ import annotations

import base64
import hashlib
import re

from gate.central.rabbitdefs import definitions, rabbit_toml, routing
from gate.contracts import Topics

IDS = {"lane-01": "gate", "collector-1": "collector", "ops-1": "publisher", "ha": "homeassistant"}


def perms(defs: dict, user: str, key: str = "permissions") -> dict:
    return next(p for p in defs[key] if p["user"] == user)


def test_each_identity_may_use_only_its_own_session_queues_and_topics() -> None:
    d = definitions(IDS, {n: "pw" for n in IDS}, "gate")
    gate = perms(d, "lane-01")
    col = perms(d, "collector-1")
    ops = perms(d, "ops-1")
    own_queue = "mqtt-subscription-gate-lane-01qos1"  # the MQTT plugin's queue for client id gate-lane-01
    assert re.match(gate["configure"], own_queue) and not re.match(gate["configure"], own_queue.replace("01", "02"))
    assert not re.match(ops["configure"], own_queue) and not re.match(col["configure"], own_queue)
    for cid in ("gate-collect-collectors-host1", "collector-1"):  # collect's default id, or --client-id NAME
        assert re.match(col["configure"], f"mqtt-subscription-{cid}qos1")
    assert re.match(col["read"], "gate-checkins") and not re.match(gate["read"], "gate-checkins")
    t = Topics("gate", "lane-01")
    key = lambda topic: topic.replace("/", ".")  # noqa: E731
    gw, gr = perms(d, "lane-01", "topic_permissions")["write"], perms(d, "lane-01", "topic_permissions")["read"]
    for topic in (t.checkin, t.state, t.availability, "homeassistant/sensor/gate_lane-01/mode/config"):
        assert re.match(gw, key(topic)), topic
    for topic in ("gate/lane-02/checkin", "gate/central/policy", "homeassistant/sensor/gate_lane-02/mode/config"):
        assert not re.match(gw, key(topic)), topic
    assert re.match(gr, "gate.central.passes.chunk.4.0") and not re.match(gr, "gate.lane-02.command")
    cr = perms(d, "collector-1", "topic_permissions")
    assert re.match(cr["read"], "gate.*.checkin") and not re.match(cr["write"], "gate.lane-01.checkin")


def test_home_assistant_topics_only_once_it_has_an_identity_and_hashes_are_rabbitmqs() -> None:
    ids = {k: v for k, v in IDS.items() if v != "homeassistant"}
    d = definitions(ids, {n: "secret" for n in ids}, "city/north")
    gw = perms(d, "lane-01", "topic_permissions")["write"]
    assert not re.match(gw, "homeassistant.sensor.gate_lane-01.mode.config")
    assert re.match(gw, "city.north.lane-01.checkin") and routing("city/north") == r"city\.north"
    raw = base64.b64decode(d["users"][0]["password_hash"])
    assert raw[4:] == hashlib.sha256(raw[:4] + b"secret").digest()
    assert d["queues"][0]["arguments"] == {"x-queue-type": "quorum"}
    assert d["bindings"][0]["routing_key"] == "city.north.*.checkin"


def test_a_provisioned_gate_toml_lists_every_node_and_speaks_mqtt_3_1_1() -> None:
    text = '[mqtt]\nhost = "mq1"\nport = 8883\ntopic_prefix = "gate"\nprotocol = "5"\n'
    out = rabbit_toml(text, ["mq1", "mq2", "mq3"], 8883)
    assert 'hosts = ["mq1:8883", "mq2:8883", "mq3:8883"]' in out and 'protocol = "3.1.1"' in out
    assert "host = " not in out and "port = " not in out
