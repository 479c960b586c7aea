"""The lane's passage logic as a pure state machine: events in (with the time), effects out. No pins, no threads."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

from gate.actuate.mode import LaneMode
from gate.actuate.sensor import EdgeFilter, SensorLimits
from gate.contracts import Mode, Requested


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
    Mode.NORMAL: Idle("off"),
    Mode.OFFLINE: Idle("amber", 2.0),
    Mode.OUT_OF_SERVICE: Idle("red"),
    Mode.FREE_PASS: Idle("green"),
    Mode.FIRE: Idle("green", 0.5),
}


@dataclass
class _Release:
    ref: str
    passages: int
    index: int = 0
    deadline: float = 0.0


class LaneMachine:
    """Releases run one at a time, one pulse per person; with a passage sensor each person is confirmed
    (`passed`) or the lane locks again at the timeout (`not_passed`, and so are the companions after them);
    without one each pulse is `unconfirmed`.

    The mode is one `LaneMode` value held here and nowhere else; the effective mode follows from it
    (gate/actuate/mode.py). A hold (fire, free-pass) ends every release, drives the relay open and keeps it open:
    while it lasts no timer, outcome or sensor event locks the relay. Out of service ends every release and
    keeps the relay locked."""

    def __init__(
        self,
        pulse_seconds: float,
        passage_timeout: float | None,
        mode: LaneMode | None = None,
        sensor: SensorLimits | None = None,
        held_open: float | None = None,
    ) -> None:
        """`held_open`: seconds the passage sensor may stay blocked before `held_open` is raised (None: never)."""
        self.pulse_seconds, self.passage_timeout = pulse_seconds, passage_timeout
        self.sensor = EdgeFilter(sensor)  # the passage sensor's edges come through here first
        self.state = mode or LaneMode()
        self.held = False
        self.held_open = held_open
        self._held_due: float | None = None  # when a sensor blocked since its last entry counts as held open
        self._current: _Release | None = None
        self._queue: deque[_Release] = deque()

    @property
    def mode(self) -> Mode:
        return self.state.effective

    @property
    def busy(self) -> bool:
        return self._current is not None or bool(self._queue)

    @property
    def releases(self) -> int:
        """Releases in progress or queued."""
        return len(self._queue) + (self._current is not None)

    @property
    def refs(self) -> list[str]:
        """The refs of the releases in progress or queued, in the order they run (the lane's ledger holds the
        same once the lane has carried out what the actuator reported)."""
        return ([self._current.ref] if self._current is not None else []) + [r.ref for r in self._queue]

    @property
    def deadline(self) -> float | None:
        """When `tick` next has something to do."""
        due = [d for d in (self.sensor.deadline, self._held_due) if d is not None]
        if self._current is not None:
            due.append(self._current.deadline)
        return min(due) if due else None

    # -- releases and passages ----------------------------------------------------------------------
    def release(self, ref: str, passages: int, now: float) -> list[Effect]:
        mode = self.mode
        if mode.holds:  # the lane already stands open: each person's passage cannot be told apart
            return [Outcome(ref, i, "unconfirmed") for i in range(passages)]
        if mode is Mode.OUT_OF_SERVICE:  # locked: nobody is let through
            return [Outcome(ref, i, "not_passed") for i in range(passages)]
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
        """The current person's outcome; then the next person, the next release, or idle. Never during a hold:
        a hold has no release in progress."""
        r = self._current
        assert r is not None and not self.mode.holds
        out: list[Effect] = []
        if outcome == "passed":
            out.append(Lock())  # lock behind this person; the next one gets a pulse of their own
        out.append(Outcome(r.ref, r.index, outcome))
        if outcome == "not_passed":
            out += [Lock(), *(Outcome(r.ref, i, "not_passed") for i in range(r.index + 1, r.passages))]
        elif r.index + 1 < r.passages:
            r.index += 1
            return out + self._pulse(now)
        self._current = None
        return out + self._next(now)

    def _edge(self, now: float) -> tuple[bool, list[Effect]]:
        """Debounce and flapping first (gate/actuate/sensor.py): whether to act on this edge."""
        act, flapping = self.sensor.edge(now)
        return act, [] if flapping is None else [Raise("sensor_flapping", True, flapping)]

    def passage_entered(self, now: float) -> list[Effect]:
        if self.held_open is not None:  # the sensor's level as it is, bounces and all: blocked from now on
            self._held_due = now + self.held_open
        act, out = self._edge(now)
        if act and self._current is None and not self.mode.holds and (detail := self.sensor.forced(now)):
            out.append(Raise("forced_passage", True, detail))
        return out

    def passage_held(self, now: float) -> list[Effect]:
        if self.sensor.flapping:  # not an edge (the level has not changed for a while): only flapping hides it
            return []
        self.held = True
        return [Raise("held_open", True, "passage blocked too long")]

    def passage_cleared(self, now: float) -> list[Effect]:
        self._held_due = None
        act, out = self._edge(now)
        if not act:
            return out
        if self.held:
            self.held = False
            out.append(Raise("held_open", False, "passage clear"))
        if self._current is not None and self.passage_timeout is not None:
            out += self._done_one("passed", now)
        return out

    def tick(self, now: float) -> list[Effect]:
        """Time passed: a release whose person did not come through locks again; a sensor blocked for
        `held_open` seconds raises `held_open`; a flapping sensor that has been quiet long enough is believed
        again."""
        quiet = self.sensor.settle(now)
        out: list[Effect] = [] if quiet is None else [Raise("sensor_flapping", False, quiet)]
        if self._held_due is not None and now >= self._held_due:  # once per blocking, like a held button
            self._held_due = None
            out += self.passage_held(now)
        r = self._current
        if r is None or now < r.deadline:
            return out
        return out + self._done_one("not_passed" if self.passage_timeout is not None else "unconfirmed", now)

    def abort(self) -> list[Effect]:
        """Stopping: the person being let through is unconfirmed, everyone after them did not pass."""
        return self._end_releases("not_passed")

    def _end_releases(self, rest: str) -> list[Effect]:
        """Every release ends now: the person being let through is unconfirmed, everyone after them `rest`."""
        out: list[Effect] = []
        pending = ([self._current] if self._current else []) + list(self._queue)
        for n, r in enumerate(pending):
            first = 0 if n else r.index
            out += [
                Outcome(r.ref, i, "unconfirmed" if n == 0 and i == r.index else rest) for i in range(first, r.passages)
            ]
        self._current, self._queue = None, deque()
        return out

    # -- the mode -------------------------------------------------------------------------------------
    def request(self, requested: Requested, by: str | None = None, at: float | None = None) -> list[Effect]:
        """Central's (or start-up's) mode. Under the fire input it is remembered and applies when the fire clears."""
        return self._become(self.state.request(Requested(requested), by, at), "")

    def fire_input(self, active: bool, why: str) -> list[Effect]:
        return self._become(replace(self.state, fire=active), why)

    def link_offline(self, offline: bool) -> list[Effect]:
        return self._become(replace(self.state, offline=offline), "")

    def _become(self, new: LaneMode, why: str) -> list[Effect]:
        old, self.state = self.state, new
        before, after = old.effective, new.effective
        out: list[Effect] = []
        if after.holds and not before.holds:  # everyone may pass now: no release waits for its person
            out += self._end_releases("unconfirmed")
            out.append(Hold())
        elif after is Mode.OUT_OF_SERVICE and before is not Mode.OUT_OF_SERVICE:
            out += self._end_releases("not_passed")
            out.append(Lock())
        elif before.holds and not after.holds:
            out.append(Lock())
        if after is not before:
            out.append(IDLE[after])
        if new.fire != old.fire:
            out += [Buzz("alarm" if new.fire else None), Raise("fire", new.fire, why)]
        free_pass = Requested.FREE_PASS
        if (new.requested is free_pass) != (old.requested is free_pass):
            on = new.requested is free_pass
            out.append(Raise("free_pass", on, f"free-pass requested by {new.set_by}" if on else "free-pass ended"))
        return out
