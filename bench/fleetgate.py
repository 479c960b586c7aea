"""bench/fleet.py's gate processes: simulated gates built from the real parts (MQTT link, central sync worker,
signature checks, a small pass cache, outbox and drainer; no camera, no relay), driven over a pipe."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gate.config.model import parse_config
from gate.contracts import LaneControl
from gate.core.clock import SystemClock
from gate.core.docstore import DocStore
from gate.core.supervisor import Supervisor
from gate.decide.codes import Kind, Status, issue
from gate.decide.decision import Decider
from gate.decide.keys import TrustStore, load_private_key, load_public_key
from gate.decide.passcache import PassCache
from gate.decide.policy import PolicyStore
from gate.deliver.delivery import Drainer
from gate.deliver.outbox import Outbox
from gate.deliver.recorder import Recorder
from gate.deliver.sealing import Sealer
from gate.mqtt_link import MqttLink
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


class SimGate:
    """One gate's central-facing half. Built on the process's lane thread, which owns its SQLite writers."""

    def __init__(self, gate_id: str, spec: Spec) -> None:
        state = (spec.gate_state or spec.work / "gates") / gate_id
        host, port = spec.hosts[0].rsplit(":", 1)
        mqtt_cfg: dict[str, Any] = {"host": host, "port": int(port), "keepalive": 20}
        if len(spec.hosts) > 1:  # a cluster: each gate lists every node, starting at its own, so the fleet spreads
            turn = int(gate_id.lstrip("g")) % len(spec.hosts)
            hosts = [*spec.hosts[turn:], *spec.hosts[:turn]]
            mqtt_cfg = {"hosts": hosts, "keepalive": 20, "protocol": "3.1.1"}  # RabbitMQ 3 speaks MQTT 3.1.1
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
        self.link = MqttLink(self.cfg.mqtt, gate_id)
        self.drainer = Drainer(
            self.outbox,
            self.link,
            self.cfg.mqtt.inflight_window,
            sealer=Sealer(load_private_key(self.cfg.gate.device_key)),
        )
        self.recorder = Recorder(self.cfg, self.outbox, self.clock, self.drainer.wake)
        self.verifier = NotingVerifier(
            TrustStore.from_files(self.cfg.central.keys),
            gate_id,
            self.cfg.central.max_message_bytes,
            self.cfg.central.command_max_age_seconds,
            DocStore(state / "device.json", "command_nonces"),
        )
        self.sync = CentralSync(LaneControl(Discard()), self.link, self.verifier, [], self.cfg)  # type: ignore[arg-type]
        self.threads = Supervisor()  # as the gate runs them (gate.lane.lifecycle): a thread that dies comes back
        self.sync.start()  # subscriptions, before the link connects
        self.threads.spawn("central-sync", self.sync.run, wake=self.sync.interrupt)
        self.threads.spawn("outbox-drain", self.drainer.run, wake=self.drainer.wake)
        self.link.start()

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
        self.threads.stop(5.0)
        self.sync.close()
        self.outbox.close()
        self.cache.close()


class RawClient:
    """A plain paho subscriber: what the broker alone takes to fan a message out."""

    def __init__(self, host: str, port: int, name: str) -> None:
        self.got: list[float] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv311)
        self.client.on_message = lambda c, u, m: self.got.append(time.time())
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(RAW_TOPIC, qos=1)
        self.client.connect_async(host, port, keepalive=30)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def run(index: int, gate_ids: list[str], spec: Spec, conn: Connection) -> None:
    """A gate process: one lane thread owns every gate's writers; commands arrive on `conn`, answers go back."""
    jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()

    def lane() -> None:
        while (job := jobs.get()) is not None:
            job()

    def on_lane(fn: Callable[[], Any]) -> Any:
        box: queue.Queue[Any] = queue.Queue()
        jobs.put(lambda: box.put(_call(fn)))
        ok, value = box.get()
        if not ok:
            raise value
        return value

    thread = threading.Thread(target=lane, name="fleet-lane", daemon=True)
    thread.start()
    gates: list[SimGate] = on_lane(lambda: [SimGate(g, spec) for g in gate_ids])
    raws: list[RawClient] = []
    if spec.raw:
        host, port = spec.hosts[index % len(spec.hosts)].rsplit(":", 1)
        raws = [RawClient(host, int(port), f"raw-{g}") for g in gate_ids]
    ingest = Ingest(gates, on_lane)
    commands: dict[str, Callable[..., Any]] = {
        "ready": lambda: (
            sum(g.link.connected.is_set() and g.link.subscribed.is_set() for g in gates)
            + sum(bool(r.client.is_connected()) for r in raws)
        ),
        "accepted": lambda: [len(g.verifier.accepted_at) for g in gates],
        "applied": lambda since, token: on_lane(lambda: applied(gates, since, token)),
        "raw_times": lambda since: [next((t for t in r.got if t >= since), None) for r in raws],
        "ingest": ingest.start,
        "ingest_stop": ingest.stop,
        "depth": lambda: on_lane(lambda: sum(g.outbox.depth for g in gates)),
        "links": lambda: [(g.link.connected.is_set(), g.link.broker) for g in gates],
    }
    try:
        while True:
            name, args = conn.recv()
            if name == "stop":
                break
            conn.send(_call(lambda name=name, args=args: commands[name](*args)))
    finally:
        ingest.stop()
        for r in raws:
            r.close()
        on_lane(lambda: [g.close() for g in gates])
        jobs.put(None)
        thread.join(30)
        conn.send((True, None))


def applied(gates: list[SimGate], since: float, token: int) -> list[float | None]:
    """Per gate: when its sync worker accepted the revocation, if its decider now denies the revoked pass."""
    out: list[float | None] = []
    for g in gates:
        at = next((t for t in g.verifier.accepted_at if t >= since), None)
        out.append(at if at is not None and g.denies(token) else None)
    return out


class Ingest:
    """Scans at a steady rate across this process's gates, on the lane thread, until stopped; every event id
    decided is kept so the bench can check each is stored exactly once."""

    def __init__(self, gates: list[SimGate], on_lane: Callable[[Callable[[], Any]], Any]) -> None:
        self.gates, self.on_lane = gates, on_lane
        self.ids: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, rate: float) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(rate,), daemon=True)
        self._thread.start()

    def _run(self, rate: float) -> None:
        batch = max(1, int(rate / 20))  # 20 lane jobs a second
        t0, done = time.monotonic(), 0
        while not self._stop.is_set():
            self.ids.extend(self.on_lane(lambda start=done: self._scan(start, batch)))
            done += batch
            ahead = t0 + done / rate - time.monotonic() if rate > 0 else 0
            if ahead > 0:
                self._stop.wait(ahead)

    def _scan(self, start: int, n: int) -> list[str]:
        ids = []
        for i in range(start, start + n):
            g = self.gates[i % len(self.gates)]
            ids.append(g.checkin(g.codes[REVOCABLE + i % (len(g.codes) - REVOCABLE)]))
        return ids

    def stop(self) -> list[str]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
            self._thread = None
        ids, self.ids = self.ids, []
        return ids


def _call(fn: Callable[[], Any]) -> tuple[bool, Any]:
    try:
        return True, fn()
    except Exception as exc:  # sent back to the bench, which reports it
        return False, exc
