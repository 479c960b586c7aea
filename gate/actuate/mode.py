"""The lane's mode: what central requested, the overrides in force, and the effective mode from one pure function."""

from __future__ import annotations

from dataclasses import dataclass, replace

from gate.contracts import Mode, Requested


def effective(requested: Requested, fire: bool, offline: bool) -> Mode:
    """Fire overrides everything; then the requested mode; `offline` only colours a normal lane."""
    if fire:
        return Mode.FIRE
    if requested is Requested.FREE_PASS:
        return Mode.FREE_PASS
    if requested is Requested.OUT_OF_SERVICE:
        return Mode.OUT_OF_SERVICE
    return Mode.OFFLINE if offline else Mode.NORMAL


@dataclass(frozen=True)
class LaneMode:
    """One immutable value: replaced whole on every change, so any thread may read the one it holds."""

    requested: Requested = Requested.NORMAL
    set_by: str | None = None  # who requested it: central, start-up, …; None for the default
    set_at: float | None = None  # wall time of the request
    fire: bool = False  # the fire input is active
    offline: bool = False  # the broker has been away long enough to show it

    @property
    def effective(self) -> Mode:
        return effective(self.requested, self.fire, self.offline)

    def request(self, requested: Requested, by: str | None, at: float | None) -> LaneMode:
        return replace(self, requested=requested, set_by=by, set_at=at)
