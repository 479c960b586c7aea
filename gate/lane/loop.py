"""The lane: scan → decide → record → actuate on one thread, and requests from other threads between scans."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property, partial

from gate.actuator import Actuator
from gate.config.model import Config
from gate.config.policy import Action
from gate.contracts import (
    Alarm,
    ApplyPolicy,
    DistrustCache,
    Inbox,
    LaneControl,
    Mode,
    PassageOutcome,
    Release,
    RemoteOpen,
    Report,
    Request,
    Requested,
    SetMode,
    SetTrip,
    TrustKeys,
)
from gate.core.clock import Clock
from gate.core.errors import GateError, OutboxFull
from gate.core.faults import Faults
from gate.core.sqlite import WrongThread
from gate.core.threads import LaneFirst, freeze_heap
from gate.decide.decision import Decider, Decision, Reason
from gate.decide.keys import TrustStore
from gate.decide.passcache import PassCache
from gate.deliver.delivery import Drainer
from gate.deliver.events import CheckIn, short
from gate.deliver.ledger import Ledger
from gate.deliver.outbox import Outbox
from gate.deliver.recorder import Recorder
from gate.lane.lifecycle import Threads
from gate.lane.state import LaneState, ModeRecord
from gate.lane.statefiles import Startup, prove_cache, prove_lane_state
from gate.mqtt_link import MqttLink
from gate.ops.metrics import MetricsServer
from gate.ops.reporting import Reporter
from gate.ops.telemetry import Stats
from gate.scanner import Scan, Scanner
from gate.sync.worker import CentralSync

log = logging.getLogger(__name__)
DecisionListener = Callable[[Scan | None, Decision, CheckIn], None]
PUMP_BATCH = 64  # requests carried out between two looks at the scanner
PUMP_AT_CLOSE = 100_000  # what the actuator reported while stopping: all of it
TICK_SECONDS = 0.1  # the periodic reporting (link watch, alarms, status.json) at most ten times a second


@dataclass
class Gate:
    """Owns the lane's state: its pass-cache reader, the outbox writer, the decider's memories and the
    actuator's mode. `handle`, `tick`, `pump` and `state` run on the lane thread (the one that calls
    `run`); other threads reach the lane only through `control` (gate.contracts.LaneControl)."""

    cfg: Config
    scanner: Scanner
    decider: Decider
    cache: PassCache
    outbox: Outbox
    actuator: Actuator
    clock: Clock
    recorder: Recorder
    reporter: Reporter
    inbox: Inbox
    stats: Stats
    lanestate: LaneState
    faults: Faults
    threads: Threads
    startup: Startup
    listeners: list[DecisionListener] = field(default_factory=list)
    outcome_listeners: list[Callable[[PassageOutcome], None]] = field(default_factory=list)
    heartbeat: Callable[[], None] = lambda: None
    metrics_listen: str | None = None  # [metrics] listen: the endpoint is bound by start(), not by build()
    source_counters: Callable[[], dict[str, int]] = lambda: {}
    lane_first: LaneFirst = field(default_factory=LaneFirst)
    lane_thread: threading.Thread | None = None  # the thread that called start(): it owns the lane's state
    closed: bool = False

    @property
    def ledger(self) -> Ledger:
        """The releases waiting for their passages (the recorder writes them as it records decisions)."""
        return self.recorder.ledger

    @property
    def link(self) -> MqttLink | None:
        return self.threads.link

    @property
    def drainer(self) -> Drainer | None:
        return self.threads.drainer

    @property
    def sync(self) -> CentralSync | None:
        return self.threads.sync

    # -- the lifecycle: build() -> start() -> run() -> close() -----------------------------------------
    def start(self) -> Gate:
        """On the thread that will run the lane (it owns the lane's connections from here on): prove the state
        files against their seals, restore the mode and the anti-passback memory, raise what start-up found;
        then start the other threads (gate.lane.lifecycle.Threads, in its stated order). Idempotent."""
        if self.lane_thread is not None:
            return self
        self.scanner.open()  # the camera starts on the thread that reads it; one that cannot start stops start-up
        self.lane_thread = threading.current_thread()
        self._open_state()
        self.threads.metrics = bind_metrics(self, self.metrics_listen, self.source_counters)
        self.threads.start()
        return self

    def _open_state(self) -> None:
        found = self.startup
        cache_unproven = prove_cache(self.cache, found.recovery, found.cache_lost)
        mode_unknown = found.lane_lost or prove_lane_state(self.lanestate, found.recovery)
        self.reporter.open()
        trip = self.lanestate.trip() if self.cfg.venue.category == "bus" else None
        if trip is not None:  # the trip central set since stands over the config's
            self.recorder.set_trip(*trip)
        self._restore(mode_unknown)
        for name, detail in found.recovery.alarms:
            self.control.post(Alarm(name, True, detail))
        if self.sync is not None and found.cache_lost:
            self.sync.resync_soon("the pass cache was unreadable and started empty")
        elif self.sync is not None and cache_unproven:
            self.sync.resync_soon("the pass cache holds less than its seal")

    def _restore(self, mode_unknown: bool) -> None:
        """Before the first scan: the remote mode and the anti-passback memory from before the restart."""
        now = self.clock.read()
        record = None
        try:
            record = None if mode_unknown else self.lanestate.mode()
        except ValueError as exc:  # a value that is no mode: as unknown as an unreadable file
            log.error("lane.db: %s", exc)
            mode_unknown = True
        if mode_unknown:
            self.set_mode(Requested.OUT_OF_SERVICE, "start-up: lane.db was unreadable")
        elif record is not None:
            log.warning("lane mode %s restored (set by %s at %.0f)", record.mode, record.set_by, record.set_at)
            self.actuator.request(record.mode, record.set_by, record.set_at)
        window = self.decider.policy.passback_seconds
        passed = self.lanestate.recent_passages(now.wall, window) if window > 0 else {}
        self.decider.restore({t: now.mono - (now.wall - at) for t, at in passed.items()})

    @cached_property
    def control(self) -> LaneControl:
        return LaneControl(self.inbox)

    def handle(self, payload: bytes, scan: Scan | None = None) -> tuple[Decision, CheckIn]:
        """Decide, record durably, then actuate: a power cut at any instant loses no passage record."""
        full = self.outbox.full and self.cfg.outbox.on_full == "out_of_service"
        blocked = Reason.OUT_OF_SERVICE if self.actuator.mode is Mode.OUT_OF_SERVICE or full else None
        now = self.clock.read()
        info = self.cache.info()  # once per decision: the decision and its check-in read the same
        decision = self.decider.decide(payload, now, blocked, info)
        event = self.recorder.checkin(decision, now, self.decider.policy.version, info.version)
        if full:  # denied without adding a row: counted instead, and reported when the outbox clears
            self.reporter.denied_while_full()
        else:
            try:  # a released decision opens its release in the ledger once it is recorded, not before
                self.recorder.decision(event, released=decision.admits, at=now.mono)
            except OutboxFull:  # cannot record, so cannot admit: fail closed
                self.reporter.denied_while_full()  # every denial on a full disk is counted, this one too
                self.actuator.signal("deny")
                return replace(decision, action=Action.DENY, reason=Reason.OUT_OF_SERVICE), event
        if decision.admits:
            self.actuator.release(Release(event.event_id, decision.companions + 1))
        self.actuator.signal(decision.action.value)
        if not full:
            self.recorder.wake()  # only now: delivering the record must not delay the relay
        tok = short(decision.token)
        self.stats.decided(
            decision.reason.value,
            {"time": event.time, "decision": decision.action.value, "reason": decision.reason.value, "token": tok},
        )
        log.info(
            "decision %s %s token=%s kind=%s companions=%d event=%s%s",
            decision.action.value,
            decision.reason.value,
            tok,
            decision.kind or "-",
            decision.companions,
            event.event_id,
            " (not recorded: outbox full)" if full else "",
        )
        for listener in self.listeners:
            listener(scan, decision, event)
        return decision, event

    def pump(self, limit: int = PUMP_BATCH) -> None:
        """Carry out up to `limit` requests queued by other threads, in order (a flood of requests waits for the
        next turn: a presentation waits at most one batch); then store events kept while the outbox was full,
        if there is room now."""
        for _ in range(limit):
            try:
                request = self.inbox.get_nowait()
            except queue.Empty:
                break
            try:
                self._carry_out(request)
            except Exception:
                log.exception("lane: request %s failed", type(request).__name__)
        self.recorder.retry_kept(time.monotonic())

    def _carry_out(self, r: Request) -> None:
        match r:
            case PassageOutcome():
                self.stats.passage(r.outcome)
                for listener in self.outcome_listeners:
                    listener(r)
                done = self.ledger.resolve(r)  # the one memory of releases: each outcome applies once
                if done is None:
                    return
                if done.holder and done.release.token is not None:
                    self._passback(done.release.token, r.outcome)  # stored first: the record below may fail
                self.recorder.passage(done)
            case Alarm():  # shown in the state at once; its record may wait for room (a full disk)
                self.recorder.alarm(r)
            case SetMode():
                self.set_mode(r.mode, r.by)
            case SetTrip():
                self.recorder.set_trip(r.route, r.run)
                self.faults.run("storing the trip", lambda: self.lanestate.set_trip(r.route, r.run, time.time()))
                log.info("venue: vehicle %s now on route %s, run %s", self.recorder.venue.vehicle_id, r.route, r.run)
            case ApplyPolicy():
                self.decider.policy = r.policy
            case TrustKeys():
                self.decider.trust = TrustStore.of(r.keys)
            case RemoteOpen():
                if self.actuator.mode is Mode.OUT_OF_SERVICE:  # locked means locked, for staff too
                    log.warning("remote open by operator %s refused: the lane is out of service", short(r.operator))
                    if r.reply is not None:
                        r.reply({"error": "the lane is out of service: not opened"})
                    return
                event_id = self.remote_open(r.operator)
                if r.reply is not None:
                    r.reply({"event_id": event_id})
            case DistrustCache():
                self.cache.distrust()
            case Report():
                state = self.reporter.publish_state()
                if r.reply is not None:
                    r.reply(state)

    def remote_open(self, operator: str) -> str:
        """Control room opens the lane for a person without a phone: a staff-assisted check-in."""
        d = Decision(
            Action.ADMIT, Reason.STAFF_ASSISTED, "opened remotely by staff", None, "staff_assisted", operator=operator
        )
        now = self.clock.read()
        event = self.recorder.checkin(d, now, self.decider.policy.version, self.cache.info().version)
        self.recorder.decision(event, released=True, at=now.mono)
        self.actuator.release(Release(event.event_id, 1))
        self.actuator.signal("admit")
        log.info("remote open by operator %s event=%s", short(operator), event.event_id)
        return event.event_id

    def set_mode(self, mode: Requested, by: str) -> None:
        """A requested mode is on disk before the lane acts on it. If it cannot be stored, out-of-service still
        applies (it only restricts), and any other mode is refused."""
        record = ModeRecord(mode, by, self.clock.read().wall)
        stored = self.faults.run("storing the lane mode", lambda: self.lanestate.set_mode(record))
        if not stored and mode is not Requested.OUT_OF_SERVICE:
            raise GateError(f"lane mode {mode} not applied: it could not be stored ({self.lanestate.path})")
        log.warning("lane mode %s requested by %s", mode, by)
        self.actuator.request(mode, by, record.set_at)

    def _passback(self, token: str, outcome: str) -> None:
        """Anti-passback counts the holder only once they went through; it is kept across restarts. One who did
        not go through may show the code again at once: the ledger no longer says they are being let through."""
        if outcome == "not_passed":
            return
        now = self.clock.read()
        self.decider.confirm(token, now.mono)
        window = self.decider.policy.passback_seconds
        if window > 0:
            self.faults.run("storing anti-passback", lambda: self.lanestate.passed(token, now.wall, window))

    def state(self) -> dict[str, object]:
        return self.reporter.state()

    def tick(self) -> None:
        """Between scans: queued requests, then the periodic reporting."""
        self.pump()
        self.reporter.tick()

    def run(self, stop: threading.Event) -> None:
        """The scan loop. Nothing in it stops the daemon: a failure is logged once, counted, and the lane
        stays safe (a decision that fails is a denial; the relay is only ever released after a record)."""
        self.start()
        lane = self.lane_thread
        if lane is not None and lane is not threading.current_thread():
            raise WrongThread(f"the gate was started on {lane.name!r}: run() belongs on that thread")
        freeze_heap()
        try:
            self._loop(stop)
        finally:
            self.reporter.loop_at = 0.0
            self.reporter.publish_snapshot()  # /healthz says at once that the loop stopped

    def _loop(self, stop: threading.Event) -> None:
        ticked = 0.0
        while not stop.is_set():
            scans = self.scanner.poll(0.2)
            self.heartbeat()  # the scan loop made progress (watchdog)
            self.reporter.loop_at = time.monotonic()
            self.pump()  # a mode or policy change queued before this scan applies to it
            if scans:
                with self.lane_first.deciding():  # delivery and sync pause at their next step meanwhile
                    for scan in scans:
                        self.stats.scanned(scan.decode_ms)
                        if not self.faults.run("deciding", partial(self.handle, scan.payload, scan)):
                            self.actuator.signal("deny")
            if self.reporter.loop_at - ticked >= TICK_SECONDS:  # not at 30 fps: idle CPU is a budget too
                ticked = self.reporter.loop_at
                self.reporter.tick()

    def close(self, reason: str = "stop") -> None:
        """Relay safe first; then record what the actuator reported while stopping and say why the gate stops
        (`stop`, `reload`, `error`) in the retained state; then the other threads in reverse start order; then
        the files. Safe to call twice, from the lane thread or (once the lane thread has ended) any other."""
        if self.closed:
            return
        self.closed = True
        self.actuator.close()
        self.scanner.close()
        if self._own_lane():
            self.pump(limit=PUMP_AT_CLOSE)
            self.faults.run("publishing the stopped state", lambda: self.reporter.stopping(reason))
        self.threads.stop()
        self.outbox.close()
        self.cache.close()
        self.lanestate.close()

    def _own_lane(self) -> bool:
        """Whether this thread may do the lane's work: it is the lane thread, or that thread has ended and its
        connections are handed over here explicitly. A lane thread still running is not to be overtaken."""
        lane, me = self.lane_thread, threading.current_thread()
        if lane is None or lane is me:
            return True
        if lane.is_alive():
            log.error("close(): the lane thread %r is still running; its last requests are not recorded", lane.name)
            return False
        self.outbox.hand_over_writer()
        self.cache.hand_over()
        self.lanestate.hand_over()
        self.lane_thread = me
        return True


def bind_metrics(gate: Gate, listen: str | None, counters: Callable[[], dict[str, int]]) -> MetricsServer | None:
    """Monitoring is not the lane: an address that cannot be bound is logged, and the gate runs on."""
    if not listen:
        return None
    try:
        return MetricsServer(listen, lambda: gate.reporter.snapshot, counters)
    except OSError as exc:
        log.error("metrics: cannot listen on %s: %s; the gate runs without /metrics", listen, exc.strerror)
        return None
