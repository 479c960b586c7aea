"""The lane's passage logic as a pure state machine: events in (with the time), effects out. No pins, no threads."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Pulse:
    """Release the lock for `seconds` (the pin driver ends it on its own, even if this process stalls)."""

    seconds: float


@dataclass(frozen=True)
class Lock:
    """Relay inactive: locked behind a person, or back to locked from free-pass."""


@dataclass(frozen=True)
class Hold:
    """Relay held active: free-pass, the one deliberate open-on-emergency."""


@dataclass(frozen=True)
class Idle:
    """The indicator's pattern between decisions."""

    colour: str
    blink: float | None = None


@dataclass(frozen=True)
class Buzz:
    """The buzzer's sustained pattern: `alarm`, or None for quiet."""

    pattern: str | None


@dataclass(frozen=True)
class Outcome:
    ref: str
    index: int  # 0 = the holder, 1.. = companions
    outcome: str  # passed | not_passed | unconfirmed


@dataclass(frozen=True)
class Raise:
    """An alarm raised (active) or cleared."""

    name: str
    active: bool
    detail: str


Effect = Pulse | Lock | Hold | Idle | Buzz | Outcome | Raise
IDLE = {
    "normal": Idle("off"),
    "out_of_service": Idle("red"),
    "offline": Idle("amber", 2.0),
    "free_pass": Idle("green", 0.5),
}
MODES = tuple(IDLE)


@dataclass
class _Release:
    ref: str
    passages: int
    index: int = 0
    deadline: float = 0.0


class LaneMachine:
    """Releases run one at a time, one pulse per person; with a passage sensor each person is confirmed
    (`passed`) or the lane locks again at the timeout (`not_passed`, and so are the companions after them);
    without one each pulse is `unconfirmed`. Modes: normal, out_of_service, offline, free_pass; the fire
    input holds free-pass whatever else is asked."""

    def __init__(self, pulse_seconds: float, passage_timeout: float | None) -> None:
        self.pulse_seconds, self.passage_timeout = pulse_seconds, passage_timeout
        self.mode = "normal"
        self.fire = False
        self.held = False
        self._current: _Release | None = None
        self._queue: deque[_Release] = deque()

    @property
    def busy(self) -> bool:
        return self._current is not None or bool(self._queue)

    @property
    def deadline(self) -> float | None:
        """When `tick` next has something to do."""
        return None if self._current is None else self._current.deadline

    # -- releases and passages ----------------------------------------------------------------------
    def release(self, ref: str, passages: int, now: float) -> list[Effect]:
        if self.mode == "free_pass":
            return []  # already held released
        self._queue.append(_Release(ref, passages))
        return self._next(now) if self._current is None else []

    def _next(self, now: float) -> list[Effect]:
        if not self._queue:
            return []
        self._current = self._queue.popleft()
        return self._pulse(now)

    def _pulse(self, now: float) -> list[Effect]:
        assert self._current is not None
        wait = self.passage_timeout if self.passage_timeout is not None else self.pulse_seconds + 0.2
        self._current.deadline = now + wait
        return [Pulse(self.pulse_seconds)]

    def _done_one(self, outcome: str, now: float) -> list[Effect]:
        """The current person's outcome; then the next person, the next release, or idle."""
        r = self._current
        assert r is not None
        out: list[Effect] = []
        if outcome == "passed" and self.mode != "free_pass":
            out.append(Lock())  # lock behind this person; the next one gets a pulse of their own
        out.append(Outcome(r.ref, r.index, outcome))
        if outcome == "not_passed":
            out += [Lock(), *(Outcome(r.ref, i, "not_passed") for i in range(r.index + 1, r.passages))]
        elif r.index + 1 < r.passages:
            r.index += 1
            return out + self._pulse(now)
        self._current = None
        return out + self._next(now)

    def passage_entered(self, now: float) -> list[Effect]:
        if self._current is None and self.mode != "free_pass":
            return [Raise("forced_passage", True, "passage with no release")]
        return []

    def passage_held(self, now: float) -> list[Effect]:
        self.held = True
        return [Raise("held_open", True, "passage blocked too long")]

    def passage_cleared(self, now: float) -> list[Effect]:
        out: list[Effect] = []
        if self.held:
            self.held = False
            out.append(Raise("held_open", False, "passage clear"))
        if self._current is not None and self.passage_timeout is not None:
            out += self._done_one("passed", now)
        return out

    def tick(self, now: float) -> list[Effect]:
        """Time passed: a release whose person did not come through locks again."""
        r = self._current
        if r is None or now < r.deadline:
            return []
        return self._done_one("not_passed" if self.passage_timeout is not None else "unconfirmed", now)

    def abort(self) -> list[Effect]:
        """Stopping: the person being let through is unconfirmed, everyone after them did not pass."""
        out: list[Effect] = []
        pending = ([self._current] if self._current else []) + list(self._queue)
        for n, r in enumerate(pending):
            first = 0 if n else r.index
            out += [
                Outcome(r.ref, i, "unconfirmed" if n == 0 and i == r.index else "not_passed")
                for i in range(first, r.passages)
            ]
        self._current, self._queue = None, deque()
        return out

    # -- modes ----------------------------------------------------------------------------------------
    def set_mode(self, mode: str) -> list[Effect]:
        """normal | out_of_service | offline | free_pass. The fire input overrides all."""
        if mode not in MODES:
            raise ValueError(f"unknown lane mode {mode!r}")
        if self.fire or mode == self.mode:
            return []
        if mode == "free_pass":
            return self._free_pass(True, "free-pass requested")
        out = self._free_pass(False, "free-pass ended") if self.mode == "free_pass" else []
        if mode == "out_of_service":
            out.append(Lock())
        self.mode = mode
        return [*out, IDLE[mode]]

    def fire_input(self, active: bool, why: str) -> list[Effect]:
        if active == self.fire:
            return []
        self.fire = active
        return self._free_pass(active, why)

    def _free_pass(self, on: bool, why: str) -> list[Effect]:
        self.mode = "free_pass" if on else "normal"
        return [Hold() if on else Lock(), IDLE[self.mode], Buzz("alarm" if on else None), Raise("fire", on, why)]
