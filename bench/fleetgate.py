"""bench/fleet.py's gate processes: simulated gates built from the real parts (MQTT link, central sync worker,
signature checks, a small pass cache, outbox and drainer; no camera, no relay), sharing a process's threads: one
network thread serves every paho client (bench/fleetloop.py) and a few crew threads turn each gate's sync worker
and drainer in rounds and make its scans. Driven over a pipe."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from fleetloop import NetLoop
from paho.mqtt.enums import CallbackAPIVersion

from gate.config.model import parse_config
from gate.contracts import LaneControl
from gate.core.clock import SystemClock
from gate.core.docstore import DocStore
from gate.decide.codes import Kind, Status, issue
from gate.decide.decision import Decider
from gate.decide.keys import TrustStore, load_private_key, load_public_key
from gate.decide.passcache import PassCache
from gate.decide.policy import PolicyStore
from gate.deliver.delivery import Drainer
from gate.deliver.outbox import Outbox
from gate.deliver.recorder import Recorder
from gate.deliver.sealing import Sealer
from gate.mqtt_link import Handler, MqttLink
from gate.sync.envelope import Verifier
from gate.sync.worker import CentralSync

PASSES = 50  # each gate's pass cache: small, as on a bus
REVOCABLE = 4  # the passes of codes 0..3 are revoked, one per round; check-ins use the others
RAW_TOPIC = "bench/fleet/raw"


@dataclass(frozen=True)
class Spec:
    """What every gate process is told: where the broker(s) are and where the keys and state live."""

    hosts: tuple[str, ...]  # "host:port" of each broker node
    work: Path
    central_pub: Path
    issuer_key: Path
    devices: Path  # <gate>.key files (the collectors read <gate>.pub beside them)
    raw: bool = True  # also a plain paho subscriber per gate, for the side-by-side fan-out
    gate_state: Path | None = None  # where the gates' state dirs go (default: under work)
    crews: int = 4  # threads per process that turn the gates' workers (fsyncs overlap across them)
    connect_rate: float = 50.0  # first connects a second, per process
    connect_window: int = 10  # first connects not yet up (CONNACK and SUBACKs), per process


class NotingVerifier(Verifier):
    """The real verifier, noting when the sync worker counted a message accepted (after its handler applied
    it: a delta is committed to the pass cache by then)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.accepted_at: list[float] = []
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
    def accepted(self) -> int:
        return len(self.accepted_at)

    @accepted.setter
    def accepted(self, n: int) -> None:
        if n:
            self.accepted_at.append(time.time())


class Discard:
    """The lane's inbox, which nobody reads here: there is no lane thread to report to."""

    def put(self, request: object, essential: bool = False) -> bool:
        return True


class SharedLink(MqttLink):
    """The gate's real link, its paho client served by the process's network thread instead of a thread of its
    own; every message, acknowledgement and (re)connect also pokes the crew that turns this gate."""

    def __init__(self, cfg: Any, gate_id: str, net: NetLoop, poke: Callable[[], None]) -> None:
        self.net, self.poke = net, poke
        self.deltas_at: list[float] = []  # when each pass delta reached this link (before the worker took it)
        super().__init__(cfg, gate_id)
        self.ack_listeners.append(lambda mid, refused: poke())
        self.up_listeners.append(poke)

    def _build(self) -> mqtt.Client:
        client = super()._build()
        client.loop_start = lambda: self.net.add(client, self._up)  # type: ignore[method-assign]
        client.loop_stop = lambda: self.net.remove(client)  # type: ignore[method-assign]
        return client

    def _up(self) -> bool:
        return self.connected.is_set() and self.subscribed.is_set()

    def subscribe(self, topic: str, handler: Handler) -> None:
        def poking(topic: str, payload: bytes, ack: Callable[[], object] = lambda: None) -> None:
            if topic.endswith("/passes/delta"):
                self.deltas_at.append(time.time())
            handler(topic, payload, ack)
            self.poke()

        super().subscribe(topic, poking)


class SimGate:
    """One gate's central-facing half. Built, turned and scanned on one crew thread, which owns its SQLite
    connections (as the lane and sync threads own theirs on a real gate)."""

    def __init__(self, gate_id: str, spec: Spec, net: NetLoop, poke: Callable[[], None]) -> None:
        state = (spec.gate_state or spec.work / "gates") / gate_id
        host, port = spec.hosts[0].rsplit(":", 1)
        mqtt_cfg: dict[str, Any] = {"host": host, "port": int(port)}
        if len(spec.hosts) > 1:  # a cluster: each gate lists every node, starting at its own, so the fleet spreads
            turn = int(gate_id.lstrip("g")) % len(spec.hosts)
            hosts = [*spec.hosts[turn:], *spec.hosts[:turn]]
            mqtt_cfg = {"hosts": hosts, "protocol": "3.1.1"}  # RabbitMQ 3 speaks MQTT 3.1.1
        self.cfg = parse_config(
            {
                "gate": {"id": gate_id, "state_dir": str(state), "device_key": str(spec.devices / f"{gate_id}.key")},
                "venue": {"id": "fleet"},
                "central": {"keys": [str(spec.central_pub)]},
                "policy": {"passback_seconds": 0},
                "mqtt": mqtt_cfg,
            },
            gate_id,
        )
        self.id = gate_id
        self.cache = PassCache(state / "passes.db")
        self.cache.replace_all([(f"tok-{i:04d}", 0, None, 0, None) for i in range(PASSES)], version=1)
        issuer = load_private_key(spec.issuer_key)
        now = int(time.time()) - 60
        self.codes = [issue(issuer, f"tok-{i:04d}", Status.GREEN, now, 86400, Kind.CARD).encode() for i in range(8)]
        self.clock = SystemClock("assume_synced")
        self.decider = Decider(
            TrustStore.of([load_public_key(p) for p in spec.issuer_key.parent.glob("*.pub")]),
            PolicyStore(state / "device.json", self.cfg.policy).load(),
            self.cache.lookup,
            self.cache.info,
            self.cfg.scanner.max_payload_bytes,
        )
        self.outbox = Outbox(state / "outbox.db", self.cfg.outbox)
        self.link = SharedLink(self.cfg.mqtt, gate_id, net, poke)
        self.drainer = Drainer(
            self.outbox,
            self.link,
            self.cfg.mqtt.inflight_window,
            sealer=Sealer(load_private_key(self.cfg.gate.device_key)),
        )
        self.recorder = Recorder(self.cfg, self.outbox, self.clock, poke)
        self.verifier = NotingVerifier(
            TrustStore.from_files(self.cfg.central.keys),
            gate_id,
            self.cfg.central.max_message_bytes,
            self.cfg.central.command_max_age_seconds,
            DocStore(state / "device.json", "command_nonces"),
        )
        self.sync = CentralSync(LaneControl(Discard()), self.link, self.verifier, [], self.cfg)  # type: ignore[arg-type]
        self.sync.start()  # subscriptions, before the link connects

    def turn(self) -> None:
        """What the gate's central-sync and outbox-drain threads would do now: every queued message (verified,
        applied, acknowledged), then one drainer step (collect PUBACKs, delete, publish the next rows)."""
        for _ in range(100):
            if not self.sync.turn(0.0):
                break
        # One step of Drainer.run's loop, as that loop does it (its own loop waits on an event per gate).
        self.drainer.faults.run("delivering the outbox", self.drainer._step)

    def checkin(self, code: bytes) -> str:
        """A scan decided and recorded, as the lane does it: verified, looked up, committed to the outbox."""
        now = self.clock.read()
        d = self.decider.decide(code, now)
        ev = self.recorder.checkin(d, now, 0, self.cache.info().version)
        self.recorder.decision(ev, released=False)
        self.recorder.wake()
        return ev.event_id

    def denies(self, token: int) -> bool:
        issuer_code = self.codes[token]
        return self.decider.decide(issuer_code, self.clock.read()).action.value != "admit"

    def close(self) -> None:
        self.link.stop()
        self.sync.close()
        self.outbox.close()
        self.cache.close()


class RawClient:
    """A plain paho subscriber on the same network thread: what the broker alone takes to fan a message out."""

    def __init__(self, host: str, port: int, name: str, net: NetLoop) -> None:
        self.got: list[float] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv311)
        self.client.on_message = lambda c, u, m: self.got.append(time.time())
        self.client.on_connect = lambda c, u, f, r, p: (self.subacked.clear(), c.subscribe(RAW_TOPIC, qos=1))
        self.subacked = threading.Event()
        self.client.on_subscribe = lambda c, u, m, r, p: self.subacked.set()
        self.client.connect_async(host, port, keepalive=30)
        net.add(self.client, lambda: self.client.is_connected() and self.subacked.is_set())
        self.net = net

    def close(self) -> None:
        self.client.disconnect()
        self.net.remove(self.client)
