"""Blocking MQTT helpers for the central tools: publish and wait, request and reply."""

from __future__ import annotations

import json
import sys
import threading
import tomllib
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from gate.config.errors import describe
from gate.config.model import MqttSection
from gate.core.errors import ConfigError, GateError
from gate.mqtt_link import authenticate
from gate.sync.envelope import sign

Broker = MqttSection  # the central tools connect with the same options as a gate


@dataclass
class Connack:
    """What the broker told a client that connected: the protocol, and under MQTT 5 whether it offers shared
    subscriptions (absent from the CONNACK means yes) and the highest QoS it accepts."""

    protocol: int
    shared_subscriptions: bool = True
    maximum_qos: int = 2

    @property
    def mqtt5(self) -> bool:
        return self.protocol == mqtt.MQTTv5


def broker_from(args_broker: tuple[str, int] | None, config: str | None) -> MqttSection:
    """`--config central.toml` ([mqtt]: host, port, username, password_file, tls, protocol) or `--broker H:P`."""
    if config is not None:
        data = _toml(Path(config))
        try:
            return MqttSection.model_validate_json(json.dumps(data.get("mqtt", {})), strict=True)
        except ValidationError as exc:
            raise ConfigError(describe(exc, config)) from None
    if args_broker is None:
        raise GateError("give --broker HOST:PORT or --config central.toml")
    return MqttSection(host=args_broker[0], port=args_broker[1])


def _toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid UTF-8 TOML: {str(exc)[:120]}") from None


def connect(
    broker: MqttSection | tuple[str, int],
    client_id: str = "",
    manual_ack: bool = False,
    session_expiry: int = 0,
    on_message: Callable[..., None] | None = None,
) -> mqtt.Client:
    """Connected, with paho's loop running. protocol = auto tries MQTT 5, then 3.1.1 if the broker refuses it
    or closes the connection (RabbitMQ). `session_expiry` > 0 keeps the session (subscriptions and un-acked
    messages) at the broker for that long after a disconnect; `manual_ack`: messages are acked by `ack()`.
    `on_message` is in place before connecting: a resumed session's messages arrive right after CONNACK."""
    return connect_session(broker, client_id, manual_ack, session_expiry, on_message)[0]


def connect_session(
    broker: MqttSection | tuple[str, int],
    client_id: str = "",
    manual_ack: bool = False,
    session_expiry: int = 0,
    on_message: Callable[..., None] | None = None,
) -> tuple[mqtt.Client, Connack]:
    """As `connect`, with what the broker said in its CONNACK (the protocol spoken and its MQTT 5 properties)."""
    if isinstance(broker, tuple):
        broker = MqttSection(host=broker[0], port=broker[1])
    if len(broker.endpoints()) > 1:  # [mqtt] hosts: the first node that answers
        failures: list[str] = []
        for node in nodes(broker):
            try:
                return connect_session(node, client_id, manual_ack, session_expiry, on_message)
            except GateError as exc:
                failures.append(str(exc))
        raise GateError("; ".join(failures))
    protocols = {"5": [mqtt.MQTTv5], "3.1.1": [mqtt.MQTTv311]}.get(broker.protocol, [mqtt.MQTTv5, mqtt.MQTTv311])
    last = ""
    for protocol in protocols:
        connack = Connack(mqtt.MQTTv311 if protocol == mqtt.MQTTv311 else mqtt.MQTTv5)
        client, answer = _attempt(broker, client_id, protocol, manual_ack, session_expiry, on_message, connack)
        if answer == "Success":
            return client, connack
        last = answer
    raise GateError(f"broker {broker.host}:{broker.port} refused the connection: {last}")


def _attempt(
    broker: MqttSection,
    client_id: str,
    protocol: Any,
    manual_ack: bool = False,
    session_expiry: int = 0,
    on_message: Callable[..., None] | None = None,
    connack: Connack | None = None,
) -> tuple[mqtt.Client, str]:
    persistent = session_expiry > 0 and bool(client_id)
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=protocol,
        manual_ack=manual_ack,
        clean_session=None if protocol == mqtt.MQTTv5 else not persistent,
    )
    client.max_inflight_messages_set(100)
    if on_message is not None:
        client.on_message = on_message
    authenticate(client, broker)
    answers: list[str] = []
    up = threading.Event()

    def on_connect(c: mqtt.Client, u: Any, f: Any, rc: Any, p: Any) -> None:
        answers.append("Success" if not rc.is_failure else str(rc))
        if connack is not None and p is not None:
            connack.shared_subscriptions = bool(getattr(p, "SharedSubscriptionAvailable", 1))
            connack.maximum_qos = int(getattr(p, "MaximumQoS", 2))
        up.set()

    client.on_connect = on_connect
    options: dict[str, Any] = {}
    if protocol == mqtt.MQTTv5:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.ReceiveMaximum = 65535  # manual acks after a batch commit: let a batch's worth be in flight
        if persistent:
            props.SessionExpiryInterval = session_expiry
        options = {"clean_start": not persistent, "properties": props}
    try:
        client.connect(broker.host, broker.port, keepalive=30, **options)
    except OSError as exc:
        raise GateError(f"cannot reach broker {broker.host}:{broker.port}: {exc}") from None
    client.loop_start()
    if up.wait(10) and answers == ["Success"]:
        return client, "Success"
    client.loop_stop()
    client.disconnect()
    return client, answers[0] if answers else "the broker closed the connection without answering"


def retained(broker: MqttSection | tuple[str, int], topic: str, timeout: float = 2.0) -> bytes | None:
    """The retained message on `topic`, if the broker holds one (None after `timeout`)."""
    got: list[bytes] = []
    done = threading.Event()
    client = connect(broker)

    def on_message(c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.retain:
            got.append(bytes(msg.payload))
        done.set()

    client.on_message = on_message
    client.subscribe(topic, qos=1)
    try:
        done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    return got[0] if got and got[0] else None


def nodes(broker: MqttSection) -> list[MqttSection]:
    """One section per broker of `[mqtt] hosts` (or the one host), with the same credentials and TLS."""
    return [broker.model_copy(update={"host": h, "port": p, "hosts": ()}) for h, p in broker.endpoints()]


@contextmanager
def publisher(broker: MqttSection | tuple[str, int]) -> Iterator[Callable[[str, bytes, bool], None]]:
    """QoS 1 publishes, each waited for (PUBACK) before the context exits. With several `[mqtt] hosts` (a
    RabbitMQ cluster, whose nodes each keep their own retained messages) a retained message goes to every node
    that answers, so that a gate gets it on whichever node it connects to; the others go to the first."""
    if isinstance(broker, MqttSection) and len(broker.endpoints()) > 1:
        with retained_everywhere(broker) as pub:
            yield pub
        return
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
    broker: MqttSection | tuple[str, int],
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


@contextmanager
def retained_everywhere(broker: MqttSection) -> Iterator[Callable[[str, bytes, bool], None]]:
    """`publisher` for a cluster: a node that cannot be reached is named and skipped (publish again once it is
    back: until then it serves what it retained before); none reachable is an error."""
    stack, pubs = ExitStack(), []
    with stack:
        for node in nodes(broker):
            try:
                pubs.append(stack.enter_context(publisher(node)))
            except GateError as exc:
                print(f"publish: skipping {node.host}:{node.port}: {exc}", file=sys.stderr)
        if not pubs:
            raise GateError(f"no broker of {', '.join(h for h, _ in broker.endpoints())} answered")

        def pub(topic: str, payload: bytes, retain: bool) -> None:
            for p in pubs if retain else pubs[:1]:
                p(topic, payload, retain)

        yield pub
