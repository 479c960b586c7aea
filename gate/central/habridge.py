"""`gate central ha-bridge`: Home Assistant's "Requested mode" select, turned into central's signed commands; the
gate's reply (and its retained state) written back as the select's state. The gate itself never takes an
unsigned command: Home Assistant reaches it only through this bridge and central's key."""

from __future__ import annotations

import argparse
import json
import logging
import queue
import signal
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gate.central.mqtt import connect
from gate.contracts import HA_MODES, ha_mode_topics
from gate.core.errors import GateError
from gate.decide.keys import load_private_key
from gate.sync.envelope import sign

log = logging.getLogger(__name__)
COMMANDS = {  # each option of Home Assistant's select -> central's signed command; never "open"
    "in_service": ("in-service", {}),
    "out_of_service": ("out-of-service", {}),
    "free_pass": ("free-pass", {"state": "on"}),
}
OPTION_OF = {mode: option for option, mode in HA_MODES.items()}  # a gate's requested_mode -> the select's option
QUEUE_LIMIT = 1000


def add_arguments(sub: Any, mqtt_cmd: Any) -> None:
    """Registered by gate.central.cli."""
    hb = mqtt_cmd("ha-bridge", "Home Assistant's requested-mode select as central's signed commands (a service)")
    hb.add_argument("--ha-prefix", default="homeassistant", help="Home Assistant's discovery prefix (the gates')")
    hb.add_argument("--allow-free-pass", action="store_true", help="also carry free_pass (off: refused, logged)")
    hb.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for a gate's reply (10)")


@dataclass(frozen=True)
class Pending:
    gate_id: str
    option: str
    deadline: float


class Bridge:
    """paho's thread only queues; the main thread signs, sends, matches replies and writes states."""

    def __init__(self, key: Ed25519PrivateKey, prefix: str, ha_prefix: str, allow_free_pass: bool, timeout: float):
        self.key = key
        self.prefix = prefix
        self.ha_prefix = ha_prefix
        self.timeout = timeout
        self.allowed = {o for o in COMMANDS if o != "free_pass" or allow_free_pass}
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue(QUEUE_LIMIT)
        self.pending: dict[str, Pending] = {}
        self.shown: dict[str, str] = {}  # gate id -> the option last written to its state topic
        self.client: Any = None

    def topics(self) -> list[tuple[str, int]]:
        command = ha_mode_topics(self.ha_prefix, "+")[0]
        return [(command, 1), (f"{self.prefix}/+/replies/#", 1), (f"{self.prefix}/+/state", 1)]

    def on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self.inbox.put_nowait((msg.topic, bytes(msg.payload)))
        except queue.Full:
            log.error("ha-bridge: %d messages waiting; dropped one on %s", QUEUE_LIMIT, msg.topic)

    def step(self, wait: float = 0.5) -> None:
        try:
            topic, payload = self.inbox.get(timeout=wait)
        except queue.Empty:
            topic, payload = "", b""
        parts = topic.split("/")
        if topic.endswith("/requested_mode/set"):
            self.chosen(parts[-3], payload.decode(errors="replace").strip())
        elif "/replies/" in topic:
            self.replied(payload)
        elif topic.endswith("/state"):
            self.state_of(parts[-2], payload)
        now = time.monotonic()
        for cid, p in list(self.pending.items()):
            if now > p.deadline:
                del self.pending[cid]
                log.error("ha-bridge: no reply from gate %s to %s within %.0f s", p.gate_id, p.option, self.timeout)

    def chosen(self, gate_id: str, option: str) -> None:
        """Home Assistant chose an option: central's signed command to that gate, or a logged refusal."""
        if option not in self.allowed:
            log.warning("ha-bridge: %s for gate %s refused (allowed: %s)", option[:40], gate_id, sorted(self.allowed))
            return
        name, args = COMMANDS[option]
        cid = str(uuid.uuid4())
        body = {
            "name": name,
            "args": dict(args),
            "correlation_id": cid,
            "reply_to": f"{self.prefix}/{gate_id}/replies/{cid[:12]}",
        }
        self.pending[cid] = Pending(gate_id, option, time.monotonic() + self.timeout)
        self.client.publish(f"{self.prefix}/{gate_id}/command", sign(self.key, "command", body, gate=gate_id), qos=1)
        log.info("ha-bridge: gate %s: %s sent as central's signed command %s", gate_id, option, name)

    def replied(self, payload: bytes) -> None:
        try:
            reply = json.loads(payload)
            p = self.pending.pop(str(reply.get("correlation_id")))
        except (ValueError, KeyError, AttributeError):
            return  # another program's reply, or malformed
        if not reply.get("ok"):
            log.error("ha-bridge: gate %s refused %s: %s", p.gate_id, p.option, str(reply.get("error"))[:200])
        result = reply.get("result") if isinstance(reply.get("result"), dict) else {}
        self.show(p.gate_id, result.get("requested_mode"))

    def state_of(self, gate_id: str, payload: bytes) -> None:
        """The gate's own retained state: the select shows its requested mode from the start, not only after a
        command from Home Assistant."""
        try:
            self.show(gate_id, json.loads(payload).get("requested_mode"))
        except (ValueError, AttributeError):
            return

    def show(self, gate_id: str, mode: Any) -> None:
        option = OPTION_OF.get(str(mode))
        if option is None or self.shown.get(gate_id) == option:
            return
        self.shown[gate_id] = option
        self.client.publish(ha_mode_topics(self.ha_prefix, gate_id)[1], option.encode(), qos=1, retain=True)


def ha_bridge(args: argparse.Namespace) -> int:
    bridge = Bridge(load_private_key(Path(args.key)), args.prefix, args.ha_prefix, args.allow_free_pass, args.timeout)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    client = connect(args.broker, client_id=args.broker.username or "", on_message=bridge.on_message)
    bridge.client = client
    try:
        granted: list[Any] = []
        done = threading.Event()

        def on_subscribe(c: Any, u: Any, mid: Any, codes: list[Any], p: Any) -> None:
            granted.extend(codes)
            done.set()

        client.on_subscribe = on_subscribe
        client.subscribe(bridge.topics())
        if not done.wait(10) or any(getattr(c, "is_failure", False) for c in granted):
            raise GateError(f"ha-bridge: the broker refused a subscription: {granted}")
        print(f"ha-bridge: serving {bridge.topics()[0][0]} for {sorted(bridge.allowed)}", flush=True)
        while not stop.is_set():
            bridge.step()
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
    return 0
