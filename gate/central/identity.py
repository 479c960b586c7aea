"""Who a collector is, checked before it takes a share of the check-ins: its role in the broker folder, or a
probe the broker itself answers (a publish only a collector's ACL allows)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from gate.central.mqtt import Connack
from gate.config.model import MqttSection
from gate.core.errors import GateError

PROBE_TIMEOUT = 10.0


def probe_topic(prefix: str, name: str) -> str:
    """The one topic a collector may write (docs/broker.md): nobody subscribes to it."""
    return f"{prefix}/collectors/{name}/probe"


def identity_of(broker: MqttSection, client_id: str) -> str:
    """The broker identity: the user name (mosquitto binds the client id to it), else the client id."""
    return broker.username or client_id


def roles(broker_dir: Path) -> dict[str, str]:
    """name -> role, from the folder `gate central provision` keeps."""
    path = broker_dir / "identities.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise GateError(f"--broker-dir: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return {str(k): str(v.get("role")) for k, v in data.items() if isinstance(v, dict)}


def check_role(broker_dir: Path, name: str) -> str:
    """GateError unless `name` is a collector in the folder; else how it was checked, for the first line."""
    role = roles(broker_dir).get(name)
    if role != "collector":
        what = f"a {role}" if role else "not provisioned"
        raise GateError(
            f"collect: identity {name!r} is {what} in {broker_dir / 'identities.json'}, not a collector: in the "
            "shared group it would take a share of the check-ins it may not read. Use a collector's credentials"
        )
    return f"a collector in {broker_dir / 'identities.json'}"


def probe(client: mqtt.Client, connack: Connack, prefix: str, name: str) -> str:
    """Publish to the collector's probe topic and read the PUBACK (MQTT 5): "Not authorized" means this is not a
    collector, and collect refuses to run. MQTT 3.1.1 cannot report a refusal: then the role is not verified."""
    if not connack.mqtt5:
        return "role not verified: MQTT 3.1.1 cannot report a refused publish (give --broker-dir to check it)"
    if connack.maximum_qos < 1:  # a QoS 0 publish has no answer; the subscription's check refuses such a broker
        return "role not verified: the broker takes QoS 0 only"
    answer: list[Any] = []
    done = threading.Event()

    def on_publish(c: Any, u: Any, mid: Any, reason: Any, p: Any) -> None:
        answer.append(reason)
        done.set()

    before = client.on_publish
    client.on_publish = on_publish
    try:
        client.publish(probe_topic(prefix, name), b"probe", qos=1)
        if not done.wait(PROBE_TIMEOUT):
            raise GateError(f"collect: the broker did not acknowledge the identity probe within {PROBE_TIMEOUT:g} s")
    finally:
        client.on_publish = before
    if answer[0].is_failure:
        raise GateError(
            f"collect: identity {name!r} is not a collector: the broker refused its probe "
            f"{probe_topic(prefix, name)} ({answer[0]}). Use a collector's credentials (gate central provision "
            "NAME --role collector; an older broker folder: provision any identity once to rewrite its ACL)"
        )
    return "a collector (the broker accepted its probe)"
