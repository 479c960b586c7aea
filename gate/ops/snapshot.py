"""What monitoring reads of the lane: one immutable value the lane thread publishes and any thread may read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LaneSnapshot:
    """The lane as the metrics endpoint sees it. The reporter (on the lane thread) makes a new one every
    STATUS_SECONDS and when the scan loop starts or stops, and replaces the old one whole; a reader never sees
    half of one and never touches the lane's databases or waits for the lane."""

    state: Mapping[str, Any] = field(default_factory=dict)  # the state document (gate.state/1) as last computed
    decisions: Mapping[str, int] = field(default_factory=dict)  # since start, by reason
    passages: Mapping[str, int] = field(default_factory=dict)  # since start, by outcome
    decode_buckets: tuple[int, ...] = ()  # per bound of gate.ops.telemetry.DECODE_BUCKETS_S, then +Inf
    decode_seconds_sum: float = 0.0
    outbox_depth: int = 0
    dead_letters: int = 0
    alarms_active: frozenset[str] = field(default_factory=frozenset)
    broker_connected: bool = False
    broker_connects: int = 0
    loop_at: float = 0.0  # monotonic time of the scan loop's last turn (0: not running)
    relay_known: bool = False  # the relay's pin is open and reads back a definite level
