"""`gate central sessions`: the sessions the broker keeps for central identities (a collector's holds its share
of the check-ins while it is away), listed, and one cleared after what it holds is stored."""

from __future__ import annotations

import argparse
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gate.central.brokerconf import Settings
from gate.central.collect import SESSION_EXPIRY, Checks, Collector
from gate.central.db import open_store
from gate.central.identity import roles
from gate.config.model import MqttSection
from gate.core.errors import GateError
from gate.mqtt_link import authenticate

DRAIN_IDLE = 2.0  # seconds without a message before a drained session counts as empty


def add_arguments(sub: Any, mqtt_cmd: Any) -> None:
    """Registered by gate.central.cli."""
    se = mqtt_cmd("sessions", "list central identities' sessions at the broker; --clear NAME ends a stray one", False)
    se.add_argument("--broker-dir", required=True, help="the broker folder (identities and their credentials)")
    se.add_argument("--clear", metavar="NAME", help="store what NAME's session holds (--db), then end the session")
    se.add_argument("--db", help="where the drained check-ins go (the collection collect writes), for --clear")
    se.add_argument("--devices", help="the gates' device keys (default: the broker folder's devices/)")
    se.add_argument(
        "--all",
        action="store_true",
        help="list every central identity, not only collectors (each is disconnected for a moment while looked at)",
    )


def as_identity(base: MqttSection, name: str, broker_dir: Path) -> MqttSection:
    """The broker as `name` reaches it: its password from the folder's credentials/."""
    pw = broker_dir / "credentials" / name / "mqtt-password"
    return base.model_copy(update={"username": name, "password": None, "password_file": pw, "protocol": "5"})


def open_session(broker: MqttSection, name: str, on_message: Any = None) -> tuple[mqtt.Client, bool]:
    """Connect as `name` resuming its session (never starting a clean one); (client, session present)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5, manual_ack=True)
    authenticate(client, broker)
    answer: list[Any] = []
    up = threading.Event()

    def on_connect(c: Any, u: Any, flags: Any, rc: Any, p: Any) -> None:
        answer.append((rc, flags.session_present))
        up.set()

    client.on_connect = on_connect
    if on_message is not None:
        client.on_message = on_message
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = SESSION_EXPIRY  # as collect keeps it: looking does not shorten it
    try:
        client.connect(broker.host, broker.port, keepalive=30, clean_start=False, properties=props)
    except OSError as exc:
        raise GateError(f"sessions: cannot reach broker {broker.host}:{broker.port}: {exc}") from None
    client.loop_start()
    if not up.wait(10) or answer[0][0].is_failure:
        close(client, end=False)
        raise GateError(f"sessions: the broker refused {name}: {answer[0][0] if answer else 'no answer'}")
    return client, bool(answer[0][1])


def close(client: mqtt.Client, end: bool) -> None:
    """Disconnect; `end`: with session expiry 0, so the broker discards the session (and its subscriptions)."""
    props = None
    if end:
        props = Properties(PacketTypes.DISCONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = 0
    client.disconnect(properties=props)
    client.loop_stop()


def sessions(args: argparse.Namespace) -> int:
    broker_dir = Path(args.broker_dir)
    base: MqttSection = args.broker if args.broker_given or args.config else _local(broker_dir)
    known = {n: r for n, r in roles(broker_dir).items() if r != "gate"}  # a gate's session is the gate's
    shown = {n: r for n, r in known.items() if r == "collector" or args.all}  # not Home Assistant's, unasked
    if args.clear:
        if args.clear not in known:
            raise GateError(f"sessions: {args.clear!r} is not a central identity in {broker_dir / 'identities.json'}")
        return _clear(args, as_identity(base, args.clear, broker_dir), broker_dir)
    for name, role in sorted(shown.items()):
        client, present = open_session(as_identity(base, name, broker_dir), name)
        close(client, end=not present)  # looking must not leave a new empty session behind
        state = "SESSION KEPT (it holds its share while away)" if present else "no session"
        print(f"{name:<20} {role:<14} {state}")
    return 0


def _local(broker_dir: Path) -> MqttSection:
    """On the broker's host: its plain listener on loopback, from the folder's broker.json."""
    return MqttSection(host="127.0.0.1", port=Settings.load(broker_dir / "broker.json").plain_port)


def _clear(args: argparse.Namespace, broker: MqttSection, broker_dir: Path) -> int:
    """Resume NAME's session, store every check-in it held (acknowledged after the commit), then end it."""
    if not args.db:
        raise GateError("sessions: --clear needs --db (where the check-ins it holds are stored first)")
    devices = Path(args.devices) if args.devices else broker_dir / "devices"
    store = open_store(args.db)
    # Without device keys every check-in is quarantined (kept with its payload), never dropped
    col = Collector(store, Checks.from_dir(devices if devices.is_dir() else None, False), None)
    try:
        client, present = open_session(broker, args.clear, col.on_message)
        col.client = client
        try:
            while time.monotonic() - col.last_message < DRAIN_IDLE or col._inbox:
                col.step()
        finally:
            while col._inbox and col.flush():
                pass
            close(client, end=True)
    finally:
        store.close()
    s = col.stats
    print(
        f"sessions: {args.clear}: {'session' if present else 'no session'} cleared; it held {s['received']} "
        f"check-ins: {s['stored']} stored new, {s['duplicates']} duplicates, {s['quarantined']} quarantined"
    )
    return 0
