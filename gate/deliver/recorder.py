"""Recording: every decision, passage and alarm becomes an event committed to the outbox before it counts."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from gate.config.model import Config
from gate.config.policy import Stop
from gate.config.venue import Venue
from gate.contracts import Alarm, Topics
from gate.core import reserve
from gate.core.clock import Clock, ClockReading
from gate.core.errors import OutboxFull
from gate.decide.decision import Decision
from gate.deliver.events import CheckIn, alarm_json, uuid7
from gate.deliver.ledger import Ledger, Resolved
from gate.deliver.outbox import Outbox
from gate.venue.gps import nearest_stop

log = logging.getLogger(__name__)
KEPT_LIMIT = 10_000  # passage and alarm events kept in memory while the outbox is full; past this, counted


class Recorder:
    """The lane thread's writer into the outbox. A released decision opens its release in the ledger (the one
    memory of releases), where each passage event later finds the decision it names."""

    def __init__(
        self,
        cfg: Config,
        outbox: Outbox,
        clock: Clock,
        wake: Callable[[], None] = lambda: None,
        position: Callable[[], dict[str, Any] | None] = lambda: None,
        stops: Callable[[str], Sequence[Stop]] = lambda route: (),
        venue: Venue | None = None,
        send_now: Callable[[str, bytes], object] = lambda topic, payload: None,
        ledger: Ledger | None = None,
    ) -> None:
        """`position`: the GPS receiver's last fix (a vehicle); `stops`: a route's stops in the policy in force;
        `venue`: where check-ins say they are, when it is not the config's (a bus's trip set by central);
        `send_now`: publish an alarm at once, signed, when the outbox has no room to store it yet."""
        self.gate_id = cfg.gate.id
        self.venue = venue or cfg.venue.venue()
        self.position = position
        self.stops = stops
        self.send_now = send_now
        self.topics = Topics(cfg.mqtt.topic_prefix, cfg.gate.id)
        self.outbox = outbox
        self.clock = clock
        self._wake = wake
        self.active_alarms: set[str] = set()  # raised and not cleared since start (state, metrics, dashboards)
        self.ledger = ledger if ledger is not None else Ledger()
        self._kept: deque[tuple[str, str, bytes]] = deque()  # passage and alarm events waiting for room
        self.kept_dropped = 0
        self._retry_at = 0.0

    def set_trip(self, route: str | None, run: str | None) -> None:
        """A bus's new route and run (central's `set-trip`): every check-in from now on carries them."""
        self.venue = replace(self.venue, route=route, run=run)

    def checkin(self, d: Decision, now: ClockReading, policy_version: int, cache_version: int) -> CheckIn:
        return CheckIn(
            event_id=uuid7(now.wall),
            type="decision",
            gate_id=self.gate_id,
            venue=self.venue,
            token=d.token,
            kind=d.kind,
            decision=d.action.value,
            reason=d.reason.value,
            companions=d.companions,
            companion_index=None,
            outcome=None,
            decision_id=None,
            operator=d.operator,
            time=now.wall,
            clock_synced=now.usable,
            policy_version=policy_version,
            cache_version=cache_version,
            position=self._where(),
        )

    def _where(self) -> dict[str, Any] | None:
        pos = self.position()
        if pos is None or not self.venue.route or not (stops := self.stops(self.venue.route)):
            return pos
        return {**pos, "stop": nearest_stop(pos, stops)}

    def record(
        self, event_id: str, topic: str, payload: bytes, wake: bool = True, quiet: bool = False, reserved: bool = False
    ) -> None:
        """Commit durably, then let the drainer know. OutboxFull propagates: the caller fails closed."""
        try:
            self.outbox.append(event_id, topic, payload, reserved=reserved)
        except OutboxFull as exc:
            if not quiet:
                log.critical("CHECK-IN NOT RECORDED %s: %s", event_id, exc)
            raise
        if wake:
            self._wake()

    def keep(self, event_id: str, topic: str, payload: bytes) -> None:
        """A passage or alarm event: recorded now if the outbox has room, else kept in memory, in order, and
        stored once there is room again (`retry_kept`). Decisions never come here: one that cannot be recorded
        is a denial."""
        if not self._kept:
            try:
                self.record(event_id, topic, payload, quiet=True, reserved=True)
                return
            except OutboxFull as exc:
                log.error("outbox full: passage and alarm events are kept in memory until there is room (%s)", exc)
        if topic == self.topics.alarm:  # an alarm is news now: sent at once too (QoS 1, not durable till stored)
            self.send_now(topic, payload)
        if len(self._kept) >= KEPT_LIMIT:
            self.kept_dropped += 1
            return
        self._kept.append((event_id, topic, payload))

    def retry_kept(self, now: float) -> None:
        """On the lane thread, at most once a second while events are kept: store them, oldest first (on the
        reserve if the disk is full). Also where the state directory's reserve is taken back once there is room."""
        if (r := reserve.of(self.outbox.path)) is not None:
            r.retake(now)
        if not self._kept or now < self._retry_at:
            return
        self._retry_at = now + 1.0
        stored = 0
        while self._kept:
            try:
                self.outbox.append(*self._kept[0], reserved=True)
            except OutboxFull:
                break
            self._kept.popleft()
            stored += 1
        if stored:
            self._wake()
        if not self._kept:
            log.warning("outbox has room again: %d kept events stored, %d dropped", stored, self.kept_dropped)

    @property
    def kept(self) -> int:
        return len(self._kept)

    def wake(self) -> None:
        """Let the drainer know there is something to send."""
        self._wake()

    def decision(self, event: CheckIn, released: bool, at: float | None = None) -> None:
        """Record a decision; a released one opens its release in the ledger (`at`: the decision's monotonic
        time, read now if not given). The caller wakes the drainer once the relay is open (`wake`), so that
        delivery does not compete with the passenger's wait."""
        self.record(event.event_id, self.topics.checkin, event.to_json(), wake=False)
        if released:
            self.ledger.open(event, self.clock.read().mono if at is None else at)

    def decided(self, ref: str) -> CheckIn | None:
        """The decision a release was made for, while its passages are still being recorded."""
        release = self.ledger.get(ref)
        return None if release is None else release.decision

    def passage(self, done: Resolved) -> None:
        """One passage of a release finished (the ledger has applied it): record it against its decision."""
        decided, o = done.release.decision, done.outcome
        now = self.clock.read()
        ev = replace(
            decided,
            event_id=uuid7(now.wall),
            type="passage",
            reason="passage",
            outcome=o.outcome,
            companion_index=o.index,
            decision_id=decided.event_id,
            time=now.wall,
            clock_synced=now.usable,
        )
        self.keep(ev.event_id, self.topics.checkin, ev.to_json())

    def alarm(self, a: Alarm) -> str:
        if a.active:
            self.active_alarms.add(a.name)
        else:
            self.active_alarms.discard(a.name)
        event_id, payload = alarm_json(self.gate_id, a.name, a.active, a.detail, self.clock.read().wall)
        self.keep(event_id, self.topics.alarm, payload)
        return event_id
