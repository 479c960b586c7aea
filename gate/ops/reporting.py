"""Periodic reporting off the hot path: the state document, status file, telemetry and health alarms."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gate import __version__
from gate.actuator import Actuator
from gate.config.model import Config
from gate.config.policy import Policy
from gate.contracts import Alarm, Topics
from gate.core.clock import Clock
from gate.core.faults import Faults
from gate.core.mailbox import Mailbox
from gate.decide.passcache import PassCache
from gate.deliver.outbox import Outbox
from gate.deliver.recorder import Recorder
from gate.mqtt_link import MqttLink
from gate.ops.snapshot import LaneSnapshot
from gate.ops.telemetry import Stats


class Counters(Protocol):
    """Lasting counters (the lane's lane.db): read at start, added to on the lane thread."""

    def counter(self, name: str) -> int: ...

    def add(self, name: str, n: int = 1) -> int: ...


log = logging.getLogger(__name__)
OFFLINE_AFTER = 30.0  # seconds without the broker before the idle indicator shows offline
SLOW_CHECK_SECONDS = 30.0
STATUS_SECONDS = 2.0
SPACE_SECONDS = 1.0  # free disk is measured at least this often (and by the drainer after acks)


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Readers see the old file or the new one, never half; a failed write (a full disk) leaves no temp file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Reporter:
    """Runs on the lane thread (it reads the lane's cache connection and sets the lane's idle mode)."""

    cfg: Config
    cache: PassCache
    outbox: Outbox
    policy: Callable[[], Policy]  # the policy in force (the decider's)
    actuator: Actuator
    clock: Clock
    recorder: Recorder
    stats: Stats
    link: MqttLink | None = None
    sync_status: Callable[[], dict[str, Any]] | None = None
    lanestate: Counters | None = None
    faults: Faults = field(default_factory=Faults)
    source_counters: Callable[[], dict[str, int]] = lambda: {"source_restarts": 0, "dropped_lines": 0}
    queues: tuple[Mailbox[Any], ...] = ()  # the bounded queues whose refusals the state shows
    _last_status: float = 0.0
    _last_telemetry: float = 0.0
    _last_slow: float = float("-inf")
    _full_alarm: bool = False
    _stale_alarm: bool = False
    _link_seen: float = field(default_factory=time.monotonic)
    _last_space: float = float("-inf")
    _denied_at_full: int = 0
    stopped: dict[str, Any] | None = None
    loop_at: float = 0.0  # monotonic time of the scan loop's last turn (0: not running); set by the lane
    snapshot: LaneSnapshot = field(default_factory=LaneSnapshot)  # read by the metrics thread, replaced whole

    def __post_init__(self) -> None:
        self.topics = Topics(self.cfg.mqtt.topic_prefix, self.cfg.gate.id)
        self.denied = 0

    def open(self) -> None:
        """On the lane thread, at start: the lasting counter of entries denied while the outbox was full."""
        self.denied = self.lanestate.counter("denied_while_full") if self.lanestate else 0

    def denied_while_full(self) -> None:
        """One more entry denied, unrecorded, because the outbox was full: one lasting counter."""
        self.denied += 1
        store = self.lanestate
        if store is not None:  # best effort: the disk may be what is full
            self.faults.run("storing the denied-while-full counter", lambda: store.add("denied_while_full"))

    def state(self) -> dict[str, Any]:
        info = self.cache.info()
        now = self.clock.read()
        lane = self.actuator.mode_state
        return {
            "schema": "gate.state/1",
            "version": __version__,
            "gate_id": self.cfg.gate.id,
            "venue": self.recorder.venue.as_json(),
            "mode": lane.effective.value,
            "requested_mode": lane.requested.value,
            "fire": lane.fire,
            "broker_connected": bool(self.link and self.link.connected.is_set()),
            "broker_failure": None if self.link is None else self.link.failures.as_json(),
            "broker": None if self.link is None else self.link.broker,  # of [mqtt] hosts: the one it is on
            "cache_version": info.version,
            "cache_seq": info.seq,
            "safety_seq": self.lanestate.counter("safety_seq") if self.lanestate is not None else 0,
            "cache_entries": info.count,
            "cache_age_s": None if info.synced_at is None else round(now.wall - info.synced_at, 1),
            "policy_version": self.policy().version,
            "outbox_depth": self.outbox.depth,
            "outbox_dropped": self.outbox.dropped,
            "outbox_oldest_age_s": self.outbox.oldest_age(now.wall),
            "alarms_active": sorted(self.recorder.active_alarms),
            "clock_synced": now.usable,
            "time": now.wall,
            "sync": None if self.sync_status is None else self.sync_status(),
            **self.stats.last_decision(),  # last_decision, last_reason, last_time: kept with the state
            "mode_set_by": lane.set_by,
            "mode_set_at": lane.set_at,
            "releases_open": len(self.recorder.ledger),
            "denied_while_full": self.denied,
            "faults": self.faults.snapshot(),
            "dead_letters": self.outbox.dead_letters,
            "queue_refusals": {q.name: q.refused for q in self.queues},
            "refusals_visible": None if self.link is None else self.link.refusals_visible,
            "stopped": self.stopped,
        }

    def stopping(self, reason: str) -> None:
        """The last word before a clean stop (on the lane thread, before the link goes): the retained state and
        status.json say the gate stopped, why, and that it is no longer connected; availability says offline."""
        self.stopped = {"reason": reason, "at": time.time()}
        state = {**self.state(), "mode": "stopped", "broker_connected": False}
        if self.link is not None and self.link.connected.is_set():
            self.link.publish(self.topics.state, json.dumps(state).encode(), qos=1, retain=True)
        write_json_atomic(self.cfg.gate.state_dir / "status.json", {**state, "stats": self.stats.snapshot()})

    def publish_state(self) -> dict[str, Any]:
        state = self.state()
        if self.link is not None:
            self.link.publish(self.topics.state, json.dumps(state).encode(), qos=1, retain=True)
        return state

    def tick(self) -> None:
        """Each step on its own: one that fails is logged once, counted and retried; none stops the lane."""
        mono = time.monotonic()
        run = self.faults.run
        run("watching the broker link", lambda: self._watch_link(mono))
        if mono - self._last_space >= SPACE_SECONDS:
            self._last_space = mono
            run("measuring free disk", self.outbox.check_space)
        if mono - self._last_slow >= SLOW_CHECK_SECONDS:
            self._last_slow = mono
            run("checking the cache age", self._check_stale)
        if self.outbox.full != self._full_alarm:
            run("raising the outbox_full alarm", self._full_changed)
        if mono - self._last_status >= STATUS_SECONDS:
            self._last_status = mono
            run("writing status.json", self._write_status)
        if self.link is not None and mono - self._last_telemetry >= self.cfg.mqtt.telemetry_seconds:
            self._last_telemetry = mono
            run("publishing telemetry", self._publish_telemetry)

    def _full_changed(self) -> None:
        full, ob = self.outbox.full, self.outbox
        detail = f"{ob.depth} undelivered, {ob.free_mb():.0f} MB free; on_full={self.cfg.outbox.on_full}"
        if full:
            self._denied_at_full = self.denied
        else:
            denied, dropped = self.denied - self._denied_at_full, ob.end_drop_episode()
            detail += f"; while full {denied} entries were denied unrecorded and {dropped} oldest events dropped"
        log.critical("outbox %s: %s", "full" if full else "no longer full", detail)
        self._full_alarm = full  # set first: if the disk is too full to record the alarm, it is not retried
        self.recorder.alarm(Alarm("outbox_full", full, detail))

    def _write_status(self) -> None:
        state = self.state()
        self.publish_snapshot(state)
        doc = {**state, "stats": self.stats.snapshot(), "last": list(self.stats.last)}
        write_json_atomic(self.cfg.gate.state_dir / "status.json", doc)

    def publish_snapshot(self, state: dict[str, Any] | None = None) -> None:
        """On the lane thread: a new LaneSnapshot for the metrics endpoint, replacing the last one whole."""
        stats = self.stats
        self.snapshot = LaneSnapshot(
            state=dict(state if state is not None else self.snapshot.state),
            decisions=dict(stats.decisions),
            passages=dict(stats.passages),
            decode_buckets=tuple(stats.decode_buckets),
            decode_seconds_sum=stats.decode_seconds_sum,
            outbox_depth=self.outbox.depth,
            dead_letters=self.outbox.dead_letters,
            alarms_active=frozenset(self.recorder.active_alarms),
            broker_connected=bool(self.link and self.link.connected.is_set()),
            broker_connects=self.link.connects if self.link else 0,
            loop_at=self.loop_at,
            relay_known=self.actuator.relay_known(),
        )

    def _publish_telemetry(self) -> None:
        assert self.link is not None
        self.publish_state()
        tel = {
            "schema": "gate.telemetry/1",
            "gate_id": self.cfg.gate.id,
            "time": time.time(),
            "outbox_depth": self.outbox.depth,
            **dict(zip(("offline_s_total", "offline_s_current"), self.link.offline_seconds(), strict=True)),
            "denied_while_full": self.denied,
            "faults": self.faults.snapshot(),
            **self.source_counters(),
            **self.stats.snapshot(),
        }
        self.link.publish(self.topics.telemetry, json.dumps(tel).encode(), qos=0)

    def _check_stale(self) -> None:
        """A stale cache is raised as an alarm, not hidden."""
        info, now = self.cache.info(), self.clock.read()
        stale = info.synced_at is None or now.wall - info.synced_at > self.policy().cache_stale_after_seconds
        if stale != self._stale_alarm:
            self._stale_alarm = stale
            age = "never synced" if info.synced_at is None else f"{now.wall - info.synced_at:.0f}s old"
            self.recorder.alarm(Alarm("cache_stale", stale, f"pass cache version {info.version}.{info.seq}, {age}"))

    def _watch_link(self, mono: float) -> None:
        """Show `offline` on the idle indicator after OFFLINE_AFTER s without the broker; keep deciding."""
        if self.link is None:
            return
        if self.link.connected.is_set():
            self._link_seen = mono
        offline = mono - self._link_seen > OFFLINE_AFTER
        if offline != self.actuator.mode_state.offline:
            if offline:
                log.warning(
                    "broker unreachable for %.0fs: indicator shows offline; check-ins wait in the outbox",
                    mono - self._link_seen,
                )
            self.actuator.link_offline(offline)
