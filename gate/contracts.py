"""What the stages pass each other: the lane's requests and events, the mode's names, the MQTT topics and the alarm
names. Plain values, importing nothing of the stages (only core and config, below every stage), so that any stage
may use them."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gate.config.policy import Policy
from gate.config.venue import ID_PATTERN
from gate.core.mailbox import Mailbox

CODE_PREFIX = "GT1:"  # every pass code starts so (docs/codes.md); a reader can tell a code's start by it


# -- the lane's mode -----------------------------------------------------------------------------------
class Requested(StrEnum):
    """What central (or start-up) asked for. Persisted in lane.db; outlives restarts and overrides."""

    NORMAL = "normal"
    OUT_OF_SERVICE = "out_of_service"
    FREE_PASS = "free_pass"


class Mode(StrEnum):
    """What the lane does now: the requested mode after the overrides."""

    NORMAL = "normal"
    OFFLINE = "offline"  # normal decisions; the idle indicator says the broker is away
    OUT_OF_SERVICE = "out_of_service"
    FREE_PASS = "free_pass"  # central's hold: the relay stands open
    FIRE = "fire"  # the fire input's hold: the relay stands open, whatever was requested

    @property
    def holds(self) -> bool:
        """The relay stands open and nothing may lock it."""
        return self in (Mode.FIRE, Mode.FREE_PASS)


# -- the actuator's events ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Release:
    """Let `passages` people through, one relay pulse each; `ref` ties outcomes to the decision."""

    ref: str
    passages: int = 1


@dataclass(frozen=True)
class PassageOutcome:
    ref: str
    index: int  # 0 = the holder, 1.. = companions
    outcome: str  # passed | not_passed | unconfirmed (no passage sensor)


@dataclass(frozen=True)
class Alarm:
    name: str  # fire | held_open | forced_passage | ...
    active: bool
    detail: str = ""


# Every alarm name the gate raises (gate.alarm/1): one binary sensor each, on while raised.
ALARMS = (
    "fire",
    "free_pass",
    "held_open",
    "forced_passage",
    "sensor_flapping",
    "outbox_full",
    "cache_stale",
    "state_file_corrupt",
    "state_unproven",
    "outbox_gap",
    "dead_letter",
    "delivery_stalled",
    "fault",
    "gps_silent",
    "thread_restarted",
)


# -- MQTT ------------------------------------------------------------------------------------------------
class Topics:
    def __init__(self, prefix: str, gate_id: str) -> None:
        self.base = base = f"{prefix}/{gate_id}"
        self.availability = f"{base}/availability"
        self.state = f"{base}/state"
        self.checkin = f"{base}/checkin"
        self.alarm = f"{base}/alarm"
        self.telemetry = f"{base}/telemetry"


# Home Assistant's select for a lane's requested mode: HA writes an option to `set`, and `gate central ha-bridge`
# (never the gate) turns it into central's signed command and writes the gate's answer to `state`.
HA_MODES = {"in_service": "normal", "out_of_service": "out_of_service", "free_pass": "free_pass"}  # option: mode


def ha_mode_topics(ha_prefix: str, gate_id: str) -> tuple[str, str]:
    """(command topic Home Assistant writes, state topic the bridge writes, retained) for one gate's select."""
    base = f"{ha_prefix}/gate/{gate_id}/requested_mode"
    return f"{base}/set", f"{base}/state"


# -- requests to the lane from other threads ---------------------------------------------------------------
Reply = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class SetMode:
    mode: Requested
    by: str  # who asked: "central", "start-up", …

    @classmethod
    def command(cls, name: str, args: dict[str, Any]) -> SetMode | None:
        """Central's mode commands (`out-of-service`, `in-service`, `free-pass` with state on|off); None for others."""
        if name == "free-pass":
            state = args.get("state", "on")
            if state not in ("on", "off"):
                raise ValueError(f"free-pass: args.state must be on or off, not {str(state)[:20]!r}")
            return cls(Requested.FREE_PASS if state == "on" else Requested.NORMAL, "central")
        named = {"out-of-service": Requested.OUT_OF_SERVICE, "in-service": Requested.NORMAL}.get(name)
        return None if named is None else cls(named, "central")


@dataclass(frozen=True)
class ApplyPolicy:
    policy: Policy


@dataclass(frozen=True)
class TrustKeys:
    keys: tuple[Ed25519PublicKey, ...]  # the whole set in force: config keys plus central's current ones


@dataclass(frozen=True)
class RemoteOpen:
    operator: str  # the staff token that asked
    reply: Reply | None = None  # called on the lane thread with {"event_id": …}


@dataclass(frozen=True)
class SetTrip:
    """A bus's route and run, from central (a signed command): every check-in from now on carries them."""

    route: str | None
    run: str | None

    @classmethod
    def parse(cls, args: dict[str, Any]) -> SetTrip:
        """`set-trip` args: route and run, each an id (A-Z a-z 0-9 _ . -, max 64) or null."""
        out = []
        for key in ("route", "run"):
            value = args.get(key)
            if value is not None and not (isinstance(value, str) and re.fullmatch(ID_PATTERN, value)):
                raise ValueError(
                    f"set-trip: {key} must be an id of A-Z a-z 0-9 _ . - (max 64), got {str(value)[:70]!r}"
                )
            out.append(value)
        return cls(*out)


@dataclass(frozen=True)
class Report:
    """Publish the retained state now; `reply`, if given, is called with it (on the lane thread)."""

    reply: Reply | None = None


@dataclass(frozen=True)
class DistrustCache:
    """The pass cache is older than the gate once reported (a restored state directory): treat it as stale until
    central's next snapshot."""


Request = SetMode | ApplyPolicy | TrustKeys | RemoteOpen | SetTrip | Report | PassageOutcome | Alarm | DistrustCache
Inbox = Mailbox[Request]
INBOX_LIMIT = 1000  # ordinary requests waiting for the lane; safety requests are never refused
SAFETY_ALARMS = frozenset({"fire", "free_pass"})


def make_inbox() -> Inbox:
    return Mailbox("lane inbox", INBOX_LIMIT)


def essential(r: Request) -> bool:
    """Never refused: a mode change, a passage outcome (its record), and the fire and free-pass alarms."""
    return isinstance(r, SetMode | PassageOutcome) or (isinstance(r, Alarm) and r.name in SAFETY_ALARMS)


class LaneControl:
    """The only way into the lane from another thread. Each call queues a request and returns at once;
    the lane thread carries requests out in order, between scans."""

    def __init__(self, inbox: Inbox, wake: Callable[[], None] = lambda: None) -> None:
        self._inbox, self._wake = inbox, wake

    def post(self, request: Request) -> bool:
        """False when the inbox was full and refused it (counted and logged there); safety requests never are."""
        taken = self._inbox.put(request, essential(request))
        if taken:
            self._wake()
        return taken

    def set_mode(self, mode: Requested, by: str) -> None:
        self.post(SetMode(mode, by))

    def apply_policy(self, policy: Policy) -> None:
        self.post(ApplyPolicy(policy))

    def trust_keys(self, keys: Sequence[Ed25519PublicKey]) -> None:
        self.post(TrustKeys(tuple(keys)))

    def open(self, operator: str, reply: Reply | None = None) -> None:
        self.post(RemoteOpen(operator, reply))

    def report(self, reply: Reply | None = None) -> None:
        self.post(Report(reply))
