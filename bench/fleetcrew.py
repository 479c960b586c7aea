"""A bench/fleet.py gate process: its gates split across a few crew threads that build them, turn their sync
workers and drainers in rounds and make their scans; one network thread for every paho client; a pipe to the bench."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from fleetgate import REVOCABLE, RawClient, SimGate, Spec
from fleetloop import NetLoop

SWEEP_SECONDS = 1.0  # every gate is turned at least this often (trust refresh, held messages, stalls)
SCANS_PER_PASS = 200  # at most this many scans between two rounds of the gates that were poked


class Crew:
    """One thread owning some gates: everything a gate's lane, central-sync and outbox-drain threads would do
    for it, done in turn. Other threads poke a gate (a message, a PUBACK, a connect) or ask for a job."""

    def __init__(self, name: str, gate_ids: list[str], spec: Spec, net: NetLoop) -> None:
        self.gate_ids = gate_ids
        self.spec = spec
        self.net = net
        self.gates: list[SimGate] = []
        self._poked: set[int] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self.rate, self._t0, self._done = 0.0, 0.0, 0
        self.ids: list[str] = []
        self.built = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def poke(self, index: int) -> None:
        with self._lock:
            self._poked.add(index)
        self._wake.set()

    def call(self, fn: Callable[[], Any], timeout: float = 120.0) -> Any:
        """Run `fn` on this crew's thread (it owns the gates' SQLite connections)."""
        box: queue.Queue[tuple[bool, Any]] = queue.Queue()
        self._jobs.put(lambda: box.put(_call(fn)))
        self._wake.set()
        ok, value = box.get(timeout=timeout)
        if not ok:
            raise value
        return value

    def ingest(self, rate: float) -> None:
        """Scans at `rate` a second across this crew's gates, from now (0: stop)."""
        self.rate, self._t0, self._done = rate, time.monotonic(), 0

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(60)

    def _run(self) -> None:
        try:
            for i, g in enumerate(self.gate_ids):
                self.gates.append(SimGate(g, self.spec, self.net, lambda i=i: self.poke(i)))
        except BaseException as exc:  # reported to the bench by `built`
            self.error = exc
        self.built.set()
        next_sweep = time.monotonic()
        while not self._stop.is_set():
            while not self._jobs.empty():
                self._jobs.get()()
            self._scan()
            with self._lock:
                poked, self._poked = self._poked, set()
            for i in poked:
                self.gates[i].turn()
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + SWEEP_SECONDS
                for g in self.gates:
                    g.turn()
            wait = 0.005 if self.rate else next_sweep - time.monotonic()
            if not self._poked and self._jobs.empty():
                self._wake.wait(max(0.0, wait))
            self._wake.clear()
        while not self._jobs.empty():
            self._jobs.get()()
        for g in self.gates:
            g.close()

    def _scan(self) -> None:
        """The scans owed by the rate clock (a few hundred at most before the gates are turned again)."""
        if not self.rate or not self.gates:
            return
        owed = min(SCANS_PER_PASS, int((time.monotonic() - self._t0) * self.rate) - self._done)
        for _ in range(max(0, owed)):
            i, turn = self._done % len(self.gates), self._done // len(self.gates)
            g = self.gates[i]
            self.ids.append(g.checkin(g.codes[REVOCABLE + turn % (len(g.codes) - REVOCABLE)]))
            with self._lock:
                self._poked.add(i)
            self._done += 1


def applied(gates: list[SimGate], since: float, token: int, proven: bool) -> list[tuple[float | None, float | None]]:
    """Per gate: when the delta reached its link, and when its sync worker accepted it (with `proven`: only if its
    decider now denies the revoked pass; without, a cheap poll)."""
    out: list[tuple[float | None, float | None]] = []
    for g in gates:
        arrived = next((t for t in g.link.deltas_at if t >= since), None)
        at = next((t for t in g.verifier.accepted_at if t >= since), None)
        out.append((arrived, at if at is not None and (not proven or g.denies(token)) else None))
    return out


def run(index: int, gate_ids: list[str], spec: Spec, conn: Connection) -> None:
    """A gate process: builds its gates, connects them when told, answers the bench's commands until `stop`."""
    net = NetLoop(spec.connect_rate, spec.connect_window)
    t0 = time.monotonic()
    crews = [Crew(f"crew-{k}", gate_ids[k :: spec.crews], spec, net) for k in range(spec.crews)]
    raws: list[RawClient] = []

    def built() -> float:
        for c in crews:
            c.built.wait(3600)
            if c.error is not None:
                raise c.error
        return time.monotonic() - t0

    def connect() -> None:
        for c in crews:  # interleaved, so that each crew's gates come up at the same pace
            for g in c.gates:
                g.link.start()
        if spec.raw:
            host, port = spec.hosts[index % len(spec.hosts)].rsplit(":", 1)
            raws.extend(RawClient(host, int(port), f"raw-{g}", net) for g in gate_ids)

    def gates() -> list[SimGate]:
        return [g for c in crews for g in c.gates]

    def each(fn: Callable[[Crew], list[Any]]) -> list[Any]:
        return [x for c in crews for x in c.call(lambda c=c: fn(c))]

    def ingest_stop() -> list[str]:
        ids: list[str] = []
        for c in crews:
            ids += c.call(lambda c=c: (c.ingest(0.0), c.ids, setattr(c, "ids", []))[1])
        return ids

    commands: dict[str, Callable[..., Any]] = {
        "built": built,
        "connect": connect,
        "ready": lambda: (
            sum(g.link.connected.is_set() and g.link.subscribed.is_set() for g in gates())
            + sum(bool(r.client.is_connected() and r.subacked.is_set()) for r in raws)
        ),
        "accepted": lambda: [len(g.verifier.accepted_at) for g in gates()],
        "applied": lambda since, token, proven: each(lambda c: applied(c.gates, since, token, proven)),
        "raw_times": lambda since: [next((t for t in r.got if t >= since), None) for r in raws],
        "ingest": lambda rate: [c.ingest(rate / len(crews)) for c in crews] and None,
        "ingest_stop": ingest_stop,
        "depth": lambda: sum(each(lambda c: [g.outbox.depth for g in c.gates])),
        "links": lambda: [(g.link.connected.is_set(), g.link.broker) for g in gates()],
        "net": lambda: {"attempts": net.attempts, "refused": net.refused, "up_s": net.up_s},
    }
    try:
        while True:
            name, args = conn.recv()
            if name == "stop":
                break
            conn.send(_call(lambda name=name, args=args: commands[name](*args)))
    finally:
        for r in raws:
            r.close()
        for c in crews:
            c.stop()
        time.sleep(0.5)  # the DISCONNECTs written
        net.stop()
        conn.send((True, None))


def _call(fn: Callable[[], Any]) -> tuple[bool, Any]:
    try:
        return True, fn()
    except Exception as exc:  # sent back to the bench, which reports it
        return False, exc
