"""How a collector subscribes, and the proof that the subscription works: a collector that would receive
nothing (a `$share/…` topic the broker takes literally, a refused or downgraded subscription) refuses to run."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from gate.central.mqtt import Connack
from gate.core.errors import GateError

SHARE_MODES = ("auto", "on", "off")
SUBACK_TIMEOUT = 10.0


@dataclass(frozen=True)
class Plan:
    shared: bool
    note: str  # one line for the operator: which subscription, and why


def plan(connack: Connack, mode: str, group: str) -> Plan:
    """auto: a shared subscription only where the broker says it has them (MQTT 5 CONNACK "Shared Subscription
    Available", absent = yes). MQTT 3.1.1 cannot say, and RabbitMQ 3 binds `$share/…` as a literal topic that
    no gate publishes to, so there auto means a plain subscription. on (`--share`): shared, refused if the
    broker says it has none. off (`--no-share`): plain."""
    if mode not in SHARE_MODES:
        raise GateError(f"collect: share mode must be one of {', '.join(SHARE_MODES)}")
    if mode == "off":
        return Plan(False, "a plain subscription (--no-share): this collector receives every check-in")
    if connack.mqtt5 and not connack.shared_subscriptions:
        if mode == "on":
            raise GateError(
                "collect: --share, but the broker's CONNACK says Shared Subscription Available = 0; "
                "run one collector with --no-share"
            )
        return Plan(False, "a plain subscription: the broker has no shared subscriptions (MQTT 5 CONNACK)")
    if connack.mqtt5:
        return Plan(True, f"a shared subscription in group {group!r} (the broker offers them)")
    if mode == "on":
        return Plan(True, f"a shared subscription in group {group!r} (--share: MQTT 3.1.1 cannot confirm it)")
    return Plan(
        False,
        "a plain subscription: under MQTT 3.1.1 the broker cannot say it has shared subscriptions "
        "(RabbitMQ 3 takes $share/… literally); more collectors each store every check-in once (--share forces it)",
    )


def subscribe(client: mqtt.Client, topics: list[tuple[str, int]], need_qos1: set[str]) -> None:
    """Subscribe and read the SUBACK: every topic granted, and QoS 1 for those acknowledged after the commit
    (a QoS 0 grant would lose what a collector held when it died). Raises GateError naming what failed."""
    got: list[list[Any]] = []
    done = threading.Event()

    def on_subscribe(c: Any, u: Any, mid: Any, codes: list[Any], p: Any) -> None:
        got.append(list(codes))
        done.set()

    client.on_subscribe = on_subscribe
    client.subscribe(topics)
    if not done.wait(SUBACK_TIMEOUT):
        raise GateError(f"collect: the broker did not answer the subscription within {SUBACK_TIMEOUT:g} s")
    check_suback([t for t, _ in topics], got[0], need_qos1)


def check_suback(topics: list[str], codes: list[Any], need_qos1: set[str]) -> None:
    if len(codes) != len(topics):
        raise GateError(f"collect: the broker answered {len(codes)} of {len(topics)} subscriptions")
    for topic, code in zip(topics, codes, strict=True):
        value = int(getattr(code, "value", code))
        if value >= 0x80:
            raise GateError(f"collect: the broker refused the subscription to {topic}: {code}")
        if topic in need_qos1 and value < 1:
            raise GateError(
                f"collect: the broker granted {topic} only QoS {value}: check-ins would not wait for the "
                "commit (raise the broker's max_qos)"
            )
