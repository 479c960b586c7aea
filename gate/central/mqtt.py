"""Blocking MQTT helpers for the central tools: publish and wait, request and reply."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from gate.control import sign
from gate.errors import GateError


def connect(broker: tuple[str, int], client_id: str = "") -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(100)
    try:
        client.connect(broker[0], broker[1], keepalive=30)
    except OSError as exc:
        raise GateError(f"cannot reach broker {broker[0]}:{broker[1]}: {exc}") from None
    client.loop_start()
    return client


@contextmanager
def publisher(broker: tuple[str, int]) -> Iterator[Callable[[str, bytes, bool], None]]:
    """QoS 1 publishes, each waited for (PUBACK) before the context exits."""
    client = connect(broker)
    infos: list[mqtt.MQTTMessageInfo] = []
    try:
        yield lambda topic, payload, retain: infos.append(client.publish(topic, payload, qos=1, retain=retain))
        for info in infos:
            info.wait_for_publish(30)
            if not info.is_published():
                raise GateError("the broker did not acknowledge every message")
    finally:
        client.disconnect()
        client.loop_stop()


def request(
    broker: tuple[str, int],
    topic: str,
    body: dict[str, Any],
    key: Ed25519PrivateKey,
    gate_id: str,
    prefix: str,
    timeout: float,
) -> dict[str, Any] | None:
    """Send a signed command and wait for the reply with the same correlation id."""
    reply_to = f"{prefix}/{gate_id}/replies/{uuid.uuid4().hex[:12]}"
    body = {**body, "reply_to": reply_to}
    got: list[dict[str, Any]] = []
    done, subscribed = threading.Event(), threading.Event()
    client = connect(broker)

    def on_message(c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            data = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(data, dict) and data.get("correlation_id") == body["correlation_id"]:
            got.append(data)
            done.set()

    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.subscribe(reply_to, qos=1)
    try:
        subscribed.wait(timeout)
        client.publish(topic, sign(key, "command", body, gate=gate_id), qos=1).wait_for_publish(timeout)
        done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0] if got else None
