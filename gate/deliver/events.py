"""Check-in, alarm and passage events as they are stored in the outbox and published."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from gate.config.venue import Venue

SCHEMA = "gate.checkin/1"
_last_ms = 0
_seq = 0
_lock = threading.Lock()  # events are made on the scan loop, the actuator's thread and the sync worker


def uuid7(now: float | None = None) -> str:
    """A time-ordered UUIDv7 (RFC 9562): 48-bit ms timestamp, 12-bit counter, random tail."""
    global _last_ms, _seq
    ms = int((time.time() if now is None else now) * 1000)
    with _lock:
        if ms <= _last_ms:
            ms, _seq = _last_ms, _seq + 1
            if _seq > 0xFFF:
                ms, _seq = ms + 1, 0
        else:
            _seq = 0
        _last_ms, seq = ms, _seq
    rand = int.from_bytes(os.urandom(8), "big") & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (seq << 64) | (0b10 << 62) | rand
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True)
class CheckIn:
    """One decision (type=decision) or one passage outcome (type=passage). No personal data:
    `token` is the pseudonymous id from the code, never a name, phone or ID number."""

    event_id: str
    type: str  # decision | passage
    gate_id: str
    venue: Venue
    token: str | None
    kind: str | None  # phone | card | staff | staff_assisted
    decision: str  # admit | assist | deny
    reason: str
    companions: int
    companion_index: int | None
    outcome: str | None  # passage only: passed | not_passed | unconfirmed
    decision_id: str | None  # passage only: the decision's event_id
    operator: str | None  # staff token, for staff_assisted
    time: float
    clock_synced: bool
    policy_version: int
    cache_version: int
    position: dict[str, Any] | None = None  # a vehicle with a GPS receiver: its last fix, or why there is none

    def to_json(self) -> bytes:
        body = {"schema": SCHEMA, **asdict(self), "venue": self.venue.as_json()}
        if self.position is None:
            del body["position"]
        body["time_iso"] = datetime.fromtimestamp(self.time, UTC).isoformat(timespec="milliseconds")
        return json.dumps(body, separators=(",", ":")).encode()


def alarm_json(gate_id: str, name: str, active: bool, detail: str, now: float) -> tuple[str, bytes]:
    """(event_id, payload) of an alarm event."""
    event_id = uuid7(now)
    body = {
        "schema": "gate.alarm/1",
        "event_id": event_id,
        "gate_id": gate_id,
        "alarm": name,
        "active": active,
        "detail": detail,
        "time": now,
    }
    return event_id, json.dumps(body, separators=(",", ":")).encode()


def short(token: str | None) -> str:
    """How logs show a token: enough to correlate, never the whole id."""
    return "-" if not token else token[:4] + "…"
