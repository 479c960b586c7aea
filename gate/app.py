"""App wiring: source → decoder → decision → outbox → actuator, and delivery to the broker."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from gate import __version__
from gate.actuator import Actuator, Alarm, PassageOutcome, Release, make_pin_factory
from gate.clock import Clock, ClockReading, SystemClock
from gate.config import Config
from gate.control import Verifier
from gate.decision import Decider, Decision, Reason
from gate.decoders import make_decoder
from gate.delivery import Drainer
from gate.errors import OutboxFull
from gate.events import CheckIn, Venue, alarm_json, short, uuid7
from gate.keys import TrustStore, load_public_key
from gate.mqtt_link import MqttLink, Topics
from gate.outbox import Outbox
from gate.passcache import PassCache
from gate.policy import Action, PolicyStore
from gate.scanner import CodeSource, DecodingSource, Deduplicator, ImageSource, Scan, Scanner
from gate.sync import CentralSync
from gate.telemetry import Stats

log = logging.getLogger(__name__)
OFFLINE_AFTER = 30.0


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1)
    os.replace(tmp, path)


def make_source(cfg: Config) -> CodeSource:
    """The configured source; hardware libraries are imported inside their adapters."""
    sc = cfg.scanner
    if sc.source == "serial":
        from gate.serial_source import SerialScanner

        return SerialScanner(sc.serial)
    decoder = make_decoder(sc.decoder, sc.formats)
    if sc.source == "images":
        assert sc.images_path is not None
        return DecodingSource(ImageSource([sc.images_path]), decoder)
    from gate.camera import PiCamera

    return DecodingSource(PiCamera(sc.camera), decoder)


@dataclass
class Gate:
    cfg: Config
    scanner: Scanner
    decider: Decider
    cache: PassCache
    outbox: Outbox
    actuator: Actuator
    clock: Clock
    link: MqttLink | None = None
    drainer: Drainer | None = None
    sync: CentralSync | None = None
    stats: Stats = field(default_factory=Stats)
    listeners: list[Callable[[Scan | None, Decision, CheckIn], None]] = field(default_factory=list)
    outcome_listeners: list[Callable[[PassageOutcome], None]] = field(default_factory=list)
    heartbeat: Callable[[], None] = lambda: None
    _last_status: float = 0.0
    _last_telemetry: float = 0.0
    _full_alarm: bool = False
    _stale_alarm: bool = False
    _last_slow: float = float("-inf")
    _link_seen: float = field(default_factory=time.monotonic)
    _released: dict[str, CheckIn] = field(default_factory=dict)  # decision event_id -> its check-in

    @cached_property
    def topics(self) -> Topics:
        return Topics(self.cfg.mqtt.topic_prefix, self.cfg.gate.id)

    def _checkin(self, d: Decision, now: ClockReading | None = None) -> CheckIn:
        now = now or self.clock.read()
        v = self.cfg.venue
        base: dict[str, Any] = dict(
            event_id=uuid7(now.wall), type="decision", gate_id=self.cfg.gate.id,
            venue=Venue(v.id, v.name, v.category.value), token=d.token, kind=d.kind,
            decision=d.action.value, reason=d.reason.value, companions=d.companions, companion_index=None,
            outcome=None, decision_id=None, operator=d.operator, time=now.wall, clock_synced=now.usable,
            policy_version=self.decider.policy.version, cache_version=self.cache.info().version,
        )  # fmt: skip
        return CheckIn(**base)

    def _record(self, event_id: str, topic: str, payload: bytes) -> None:
        try:
            self.outbox.append(event_id, topic, payload)
        except OutboxFull as exc:
            log.critical("CHECK-IN NOT RECORDED %s: %s", event_id, exc)
            raise
        if self.drainer is not None:
            self.drainer.wake()

    def handle(self, payload: bytes, scan: Scan | None = None) -> tuple[Decision, CheckIn]:
        """Decide, record durably, then actuate: a power cut at any instant loses no passage record."""
        blocked = Reason.OUT_OF_SERVICE if self.actuator.mode == "out_of_service" or (
            self.outbox.full and self.cfg.outbox.on_full == "out_of_service") else None  # fmt: skip
        now = self.clock.read()
        decision = self.decider.decide(payload, now, blocked)
        event = self._checkin(decision, now)
        try:
            self._record(event.event_id, self.topics.checkin, event.to_json())
        except OutboxFull:  # cannot record, so cannot admit: fail closed
            self.actuator.signal("deny")
            return replace(decision, action=Action.DENY, reason=Reason.OUT_OF_SERVICE), event
        if decision.admits:
            self._released[event.event_id] = event
            self.actuator.release(Release(event.event_id, decision.companions + 1))
        self.actuator.signal(decision.action.value)
        tok = short(decision.token)
        self.stats.decided(decision.reason.value, {"time": event.time, "decision": decision.action.value,
                                                   "reason": decision.reason.value, "token": tok})  # fmt: skip
        log.info("decision %s %s token=%s kind=%s companions=%d event=%s", decision.action.value,
                 decision.reason.value, tok, decision.kind or "-", decision.companions, event.event_id)  # fmt: skip
        for listener in self.listeners:
            listener(scan, decision, event)
        return decision, event

    def on_outcome(self, o: PassageOutcome) -> None:
        """Actuator thread: one passage of a release finished; record it against its decision."""
        if o.outcome == "passed":
            self.stats.passed()
        for listener in self.outcome_listeners:
            listener(o)
        decided = self._released.get(o.ref)
        if decided is None:
            return
        if o.index + 1 >= decided.companions + 1:
            self._released.pop(o.ref, None)
        now = self.clock.read()
        ev = replace(decided, event_id=uuid7(now.wall), type="passage", reason="passage", outcome=o.outcome,
                     companion_index=o.index, decision_id=decided.event_id, time=now.wall,
                     clock_synced=now.usable)  # fmt: skip
        self._record(ev.event_id, self.topics.checkin, ev.to_json())

    def remote_open(self, operator: str) -> str:
        """Control room opens the lane for a person without a phone: a staff-assisted check-in."""
        d = Decision(Action.ADMIT, Reason.STAFF_ASSISTED, "opened remotely by staff", None, "staff_assisted",
                     operator=operator)  # fmt: skip
        event = self._checkin(d)
        self._record(event.event_id, self.topics.checkin, event.to_json())
        self._released[event.event_id] = event
        self.actuator.release(Release(event.event_id, 1))
        self.actuator.signal("admit")
        log.info("remote open by operator %s event=%s", short(operator), event.event_id)
        return event.event_id

    def on_alarm(self, a: Alarm) -> None:
        now = time.time()
        event_id, payload = alarm_json(self.cfg.gate.id, a.name, a.active, a.detail, now)
        self._record(event_id, self.topics.alarm, payload)

    def state(self) -> dict[str, Any]:
        info = self.cache.info()
        now = self.clock.read()
        return {
            "schema": "gate.state/1", "version": __version__, "gate_id": self.cfg.gate.id,
            "mode": self.actuator.mode,
            "broker_connected": bool(self.link and self.link.connected.is_set()),
            "cache_version": info.version, "cache_seq": info.seq, "cache_entries": info.count,
            "cache_age_s": None if info.synced_at is None else round(now.wall - info.synced_at, 1),
            "policy_version": self.decider.policy.version, "outbox_depth": self.outbox.depth,
            "outbox_dropped": self.outbox.dropped, "clock_synced": now.usable, "time": now.wall,
            "sync": None if self.sync is None else self.sync.status(),
        }  # fmt: skip

    def tick(self) -> None:
        """Periodic work off the hot path: status file for `gate status`, telemetry, retained state."""
        mono = time.monotonic()
        self._watch_link(mono)
        if mono - self._last_slow >= 30.0:
            self._last_slow = mono
            self._slow_checks()
        if self.outbox.full != self._full_alarm:
            self._full_alarm = self.outbox.full
            ob = self.outbox
            detail = f"{ob.depth} undelivered, {ob.free_mb():.0f} MB free; on_full={self.cfg.outbox.on_full}"
            log.critical("outbox %s: %s", "full" if self._full_alarm else "no longer full", detail)
            self.on_alarm(Alarm("outbox_full", self._full_alarm, detail))
        if mono - self._last_status >= 2.0:
            self._last_status = mono
            state = self.state()
            write_json_atomic(self.cfg.gate.state_dir / "status.json",
                              {**state, "stats": self.stats.snapshot(), "last": list(self.stats.last)})  # fmt: skip
        if self.link is not None and mono - self._last_telemetry >= self.cfg.mqtt.telemetry_seconds:
            self._last_telemetry = mono
            self.publish_state()
            src = self.scanner.source
            restarts = getattr(getattr(src, "frames", src), "restarts", 0) + getattr(src, "reconnects", 0)
            tel = {"schema": "gate.telemetry/1", "gate_id": self.cfg.gate.id, "time": time.time(),
                   "outbox_depth": self.outbox.depth, "source_restarts": restarts, **self.stats.snapshot()}  # fmt: skip
            self.link.publish(self.topics.telemetry, json.dumps(tel).encode(), qos=0)

    def _slow_checks(self) -> None:
        """Trust-key windows open and close with time; a stale cache is raised as an alarm, not hidden."""
        if self.sync is not None:
            self.sync.refresh_trust()
        info, now = self.cache.info(), self.clock.read()
        stale = info.synced_at is None or now.wall - info.synced_at > self.decider.policy.cache_stale_after_seconds
        if stale != self._stale_alarm:
            self._stale_alarm = stale
            age = "never synced" if info.synced_at is None else f"{now.wall - info.synced_at:.0f}s old"
            self.on_alarm(Alarm("cache_stale", stale, f"pass cache version {info.version}.{info.seq}, {age}"))

    def _watch_link(self, mono: float) -> None:
        """Show `offline` on the idle indicator after OFFLINE_AFTER s without the broker; keep deciding."""
        if self.link is None:
            return
        if self.link.connected.is_set():
            self._link_seen = mono
        offline = mono - self._link_seen > OFFLINE_AFTER
        if offline and self.actuator.mode == "normal":
            log.warning("broker unreachable for %.0fs: indicator shows offline; check-ins wait in the outbox",
                        mono - self._link_seen)  # fmt: skip
            self.actuator.set_mode("offline")
        elif not offline and self.actuator.mode == "offline":
            self.actuator.set_mode("normal")

    def publish_state(self) -> None:
        if self.link is not None:
            self.link.publish(self.topics.state, json.dumps(self.state()).encode(), qos=1, retain=True)

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            scans = self.scanner.poll(0.2)
            self.heartbeat()  # the scan loop made progress (watchdog)
            for scan in scans or ():
                self.stats.scanned(scan.decode_ms)
                with contextlib.suppress(OutboxFull):
                    self.handle(scan.payload, scan)
            self.tick()

    def close(self) -> None:
        """Relay safe first, then the rest."""
        self.actuator.close()
        self.scanner.close()
        if self.sync is not None:
            self.sync.stop()
        if self.drainer is not None:
            self.drainer.stop()
        if self.link is not None:
            self.link.stop()
        self.outbox.close()
        self.cache.close()


def build(cfg: Config, source: CodeSource | None = None, pin_factory: Any = None, clock: Clock | None = None,
          trust: TrustStore | None = None, with_mqtt: bool = True) -> Gate:  # fmt: skip
    """Start-up, step by step."""
    state = cfg.gate.state_dir
    state.mkdir(parents=True, exist_ok=True)
    trust = trust or TrustStore.from_files(cfg.trust.keys)
    policy = PolicyStore(state / "device.json", cfg.policy).load()
    cache = PassCache(state / "passes.db")
    decider = Decider(trust, policy, cache.lookup, cache.info, cfg.scanner.max_payload_bytes)
    outbox = Outbox(state / "outbox.db", cfg.outbox)
    scanner = Scanner(source or make_source(cfg), Deduplicator(cfg.scanner.rearm_seconds,
                                                               cfg.scanner.absent_seconds))  # fmt: skip
    factory = pin_factory if pin_factory is not None else make_pin_factory(cfg.gpio.pin_factory)
    gate = Gate(cfg, scanner, decider, cache, outbox, None, clock or SystemClock(cfg.clock.sync_source))  # type: ignore[arg-type]
    gate.actuator = Actuator(cfg.gpio, factory, gate.on_outcome, gate.on_alarm)
    if with_mqtt:
        drainer_ref: list[Drainer] = []
        link = MqttLink(cfg.mqtt, cfg.gate.id, lambda mid, ok: drainer_ref[0].on_publish(mid, ok),
                        on_up=gate.publish_state)  # fmt: skip
        gate.drainer = Drainer(outbox, link, cfg.mqtt.inflight_window)
        drainer_ref.append(gate.drainer)
        gate.link = link
        if cfg.central.keys:
            verifier = Verifier(TrustStore.from_files(cfg.central.keys), cfg.gate.id, cfg.central.max_message_bytes,
                                cfg.central.command_max_age_seconds)  # fmt: skip
            base_keys = [load_public_key(p) for p in cfg.trust.keys] if trust is None else list(trust.keys.values())
            gate.sync = CentralSync(gate, verifier, base_keys, state)
            gate.sync.start()
        else:
            log.warning("no [central] keys pinned: pass status, policy and commands from central are ignored")
        gate.drainer.start()
        link.start()
    return gate
