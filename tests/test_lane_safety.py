"""Lane safety as invariants: hypothesis's stateful testing drives the lane machine, and the real Actuator on
gpiozero mock pins with a manual clock, through admits, passages, timeouts, fire, remote modes and restarts."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory, MockPin
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from conftest import Broker, examples, wait_until
from fakes import daemon_config
from gate.actuate.machine import Effect, Hold, LaneMachine, Lock, Outcome, Pulse, Raise
from gate.actuate.sensor import SensorLimits
from gate.actuator import Actuator
from gate.config.model import GpioSection, load_config
from gate.contracts import Alarm, Mode, PassageOutcome, Release, Requested
from gate.decide.codes import Status, issue
from gate.lane.wiring import build
from gate.scan.decoders import make_decoder
from gate.scanner import DecodingSource
from gate.testing import FixedClock, ScriptedFrames

PULSE, TIMEOUT = 0.2, 1.5
STATEFUL = settings(
    max_examples=examples(150), stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck)
)
RELAY = 17
PASSAGE = 5
FIRE = 13


def expected(requested: Requested, fire: bool, offline: bool) -> set[Mode]:
    """What the effective mode may be, said plainly (not by the function under test)."""
    if fire:
        return {Mode.FIRE}
    return {
        Requested.FREE_PASS: {Mode.FREE_PASS},
        Requested.OUT_OF_SERVICE: {Mode.OUT_OF_SERVICE},
        Requested.NORMAL: {Mode.OFFLINE if offline else Mode.NORMAL},
    }[requested]


class Ledger:
    """Every release and its outcomes, and the recorder's memory of releases awaiting their passages (as
    gate.deliver.recorder keeps it: an entry until the last passage's outcome)."""

    def __init__(self) -> None:
        self.passages: dict[str, int] = {}
        self.outcomes: Counter[tuple[str, int]] = Counter()
        self.waiting: dict[str, int] = {}  # ref -> outcomes still to come

    def released(self, ref: str, passages: int) -> None:
        self.passages[ref] = self.waiting[ref] = passages

    def outcome(self, ref: str, index: int) -> None:
        assert ref in self.passages and 0 <= index < self.passages[ref], (ref, index)
        self.outcomes[(ref, index)] += 1
        assert self.outcomes[(ref, index)] == 1, f"two outcomes for {ref}/{index}"
        self.waiting[ref] -= 1
        if self.waiting[ref] == 0:
            del self.waiting[ref]

    def all_ended(self) -> None:
        assert self.waiting == {}
        assert all(self.outcomes[(r, i)] == 1 for r, n in self.passages.items() for i in range(n))


class LaneModel(RuleBasedStateMachine):
    """The rules' names are what happens at a lane; the invariants are the safety rules."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.requested = Requested.NORMAL
        self.fire = False
        self.offline = False
        self.ledger = Ledger()
        self.n = 0

    # -- what the subclasses drive --------------------------------------------------------------------
    def relay_open(self) -> bool:
        raise NotImplementedError

    def effective(self) -> Mode:
        raise NotImplementedError

    def releases_in_progress(self) -> int:
        raise NotImplementedError

    # -- the safety rules -----------------------------------------------------------------------------
    @invariant()
    def a_hold_keeps_the_relay_open(self) -> None:
        if self.fire or self.requested is Requested.FREE_PASS:
            assert self.effective().holds and self.relay_open()

    @invariant()
    def out_of_service_keeps_the_relay_locked(self) -> None:
        if not self.fire and self.requested is Requested.OUT_OF_SERVICE:
            assert self.effective() is Mode.OUT_OF_SERVICE and not self.relay_open()
            assert self.releases_in_progress() == 0

    @invariant()
    def the_effective_mode_is_the_requested_one_after_the_overrides(self) -> None:
        assert self.effective() in expected(self.requested, self.fire, self.offline)

    @invariant()
    def nothing_per_release_outlives_its_release(self) -> None:
        assert len(self.ledger.waiting) == self.releases_in_progress()


class MachineSafety(LaneModel):
    """The pure machine; the relay follows its effects, and gpiozero's own thread ends a pulse."""

    @initialize(sensor=st.booleans())
    def start(self, sensor: bool) -> None:
        self.timeout = TIMEOUT if sensor else None
        self.m = LaneMachine(PULSE, self.timeout)
        self.relay, self.pulse_end = "locked", 0.0

    def relay_open(self) -> bool:
        return self.relay == "held" or (self.relay == "pulse" and self.now < self.pulse_end)

    def effective(self) -> Mode:
        return self.m.mode

    def releases_in_progress(self) -> int:
        return self.m.releases

    def apply(self, effects: list[Effect]) -> list[Effect]:
        for e in effects:
            if isinstance(e, Pulse):
                self.relay, self.pulse_end = "pulse", self.now + e.seconds
            elif isinstance(e, Lock):
                self.relay = "locked"
            elif isinstance(e, Hold):
                self.relay = "held"
            elif isinstance(e, Outcome):
                self.ledger.outcome(e.ref, e.index)
        return effects

    @rule(passages=st.integers(1, 4))
    def admit(self, passages: int) -> None:
        self.n += 1
        ref = f"d{self.n}"
        self.ledger.released(ref, passages)
        effects = self.apply(self.m.release(ref, passages, self.now))
        if self.requested is Requested.OUT_OF_SERVICE and not self.fire:
            assert not any(isinstance(e, Pulse) for e in effects)

    @rule()
    def someone_steps_in(self) -> None:
        self.apply(self.m.passage_entered(self.now))

    @rule()
    def someone_stands_too_long(self) -> None:
        self.apply(self.m.passage_held(self.now))

    @rule()
    def someone_walks_through(self) -> None:
        self.apply(self.m.passage_cleared(self.now))

    @rule(seconds=st.sampled_from([0.01, 0.1, PULSE, 0.5, TIMEOUT, 3.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self.apply(self.m.tick(self.now))

    @rule(active=st.booleans())
    def fire_input(self, active: bool) -> None:
        self.fire = active
        self.apply(self.m.fire_input(active, "fire input"))

    @rule(mode=st.sampled_from(Requested))
    def central_requests(self, mode: Requested) -> None:
        self.requested = mode
        self.apply(self.m.request(mode, "central", self.now))

    @rule(offline=st.booleans())
    def broker_away(self, offline: bool) -> None:
        self.offline = offline
        self.apply(self.m.link_offline(offline))

    @rule()
    def restart(self) -> None:
        """The daemon stops (every release ends) and starts again: lane.db gives the requested mode back,
        the fire input is read afresh, and the relay starts held if it is active."""
        self.apply(self.m.abort())
        self.m = LaneMachine(PULSE, self.timeout)
        self.relay = "held" if self.fire else "locked"
        self.apply(self.m.request(self.requested, "start-up", self.now))
        self.apply(self.m.fire_input(self.fire, "fire input active at start") if self.fire else [])
        self.offline = False

    def teardown(self) -> None:
        if hasattr(self, "m"):
            self.apply(self.m.abort())
            self.ledger.all_ended()


class WiredPin(MockPin):  # type: ignore[misc]
    """An input wired to something outside the gate: the level it is held at survives the pull-up that
    re-opening the pin sets, as a real line's does (a MockPin would go back to its pull)."""

    held_low = False

    def _set_pull(self, value: str) -> None:
        super()._set_pull(value)
        if self.held_low:
            self.drive_low()

    def hold_low(self, low: bool) -> None:
        self.held_low = low
        (self.drive_low if low else self.drive_high)()


class ActuatorSafety(LaneModel):
    """The real Actuator: gpiozero's MockFactory pins, a passage sensor and a fire input, a manual clock and
    no worker thread (each step carries out what the pins queued). The relay is read off its pin."""

    def __init__(self) -> None:
        super().__init__()
        self.factory = MockFactory(pin_class=WiredPin)
        self.clock = FixedClock(mono=0.0)
        self.cfg = GpioSection.model_validate(
            {
                "relay": {"pin": RELAY, "pulse_seconds": PULSE},
                "passage": {"pin": PASSAGE, "timeout_seconds": TIMEOUT, "held_open_seconds": 30},
                "fire": {"pin": FIRE},
            }
        )
        self.alarms: list[Alarm] = []
        self.act = self._open()

    def _open(self) -> Actuator:
        return Actuator(self.cfg, self.factory, self._outcome, self.alarms.append, clock=self.clock, worker=False)

    def _outcome(self, o: PassageOutcome) -> None:
        self.ledger.outcome(o.ref, o.index)

    def relay_open(self) -> bool:
        return bool(self.factory.pin(RELAY).state)

    def effective(self) -> Mode:
        return self.act.mode

    def releases_in_progress(self) -> int:
        return self.act.machine.releases

    def step(self) -> None:
        self.act.process_events()

    @rule(passages=st.integers(1, 3))
    def admit(self, passages: int) -> None:
        self.n += 1
        ref = f"d{self.n}"
        self.ledger.released(ref, passages)
        self.act.release(Release(ref, passages))
        self.step()

    @rule()
    def someone_walks_through(self) -> None:
        sensor = self.factory.pin(PASSAGE)
        sensor.drive_low()
        self.step()
        sensor.drive_high()
        self.step()

    @rule(seconds=st.sampled_from([0.01, PULSE, TIMEOUT, 3.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.mono += seconds
        self.step()

    @precondition(lambda self: not self.fire)
    @rule()
    def fire_starts(self) -> None:
        self.fire = True
        self.factory.pin(FIRE).hold_low(True)
        self.step()

    @precondition(lambda self: self.fire)
    @rule()
    def fire_clears(self) -> None:
        self.fire = False
        self.factory.pin(FIRE).hold_low(False)
        self.step()

    @rule(mode=st.sampled_from(Requested))
    def central_requests(self, mode: Requested) -> None:
        self.requested = mode
        self.act.request(mode, "central", None)

    @rule(offline=st.booleans())
    def broker_away(self, offline: bool) -> None:
        self.offline = offline
        self.act.link_offline(offline)

    def check_alarms(self) -> None:
        """Within one run of the daemon the fire alarm is raised and cleared in turn (a new run announces a
        fire that is still active afresh)."""
        fire = [a.active for a in self.alarms if a.name == "fire"]
        assert fire == [i % 2 == 0 for i in range(len(fire))], fire
        self.alarms.clear()

    @rule()
    def restart(self) -> None:
        self.act.close()
        self.check_alarms()
        self.act = self._open()
        self.act.request(self.requested, "start-up", None)
        self.offline = False

    def teardown(self) -> None:
        self.act.close()
        self.ledger.all_ended()
        self.check_alarms()


TestLaneMachineSafety = STATEFUL(MachineSafety).TestCase
TestActuatorSafety = settings(STATEFUL, max_examples=examples(60))(ActuatorSafety).TestCase


def test_the_model_would_see_a_lock_during_a_fire() -> None:
    """The invariants are not vacuous: a machine that locks behind a person during a fire breaks the first."""

    class Broken(LaneMachine):
        def fire_input(self, active: bool, why: str) -> list[Any]:
            return [*super().fire_input(active, why), Lock()]

    model = MachineSafety()
    model.start(sensor=True)
    model.m = Broken(PULSE, TIMEOUT)
    model.fire_input(True)
    try:
        model.a_hold_keeps_the_relay_open()
    except AssertionError:
        return
    raise AssertionError("the invariant did not catch a locked relay during a fire")


# -- the real gate: build() and start() with mock pins, as a station would run it -----------------------------------
GATE_GPIO = f"""
[gpio.passage]
pin = {PASSAGE}
timeout_seconds = 0.3
[gpio.fire]
pin = {FIRE}
"""


@pytest.fixture
def lane(tmp_path: Path, keys: Any) -> Iterator[Any]:
    """A gate built as `gate run` builds it (no broker): passage sensor with a 0.3 s timeout, a fire input."""
    cfg = daemon_config(tmp_path, keys, Broker(tmp_path), "/dev/null", extra=GATE_GPIO, passback=60)
    factory = MockFactory(pin_class=WiredPin)
    src = DecodingSource(ScriptedFrames([]), make_decoder("zxing"))
    g = build(load_config(cfg), source=src, pin_factory=factory, with_mqtt=False).start()
    g.cache.apply_delta([], [], 0)
    g.relay, g.fire = factory.pin(RELAY), factory.pin(FIRE)
    g.code = lambda i: issue(keys.private, f"tok-ls{i:06d}", Status.GREEN, int(time.time()) - 5, 3600).encode()
    try:
        yield g
    finally:
        g.close()


def alarms(g: Any) -> list[tuple[str, bool]]:
    g.pump()
    rows = g.outbox.fetch(0, 100_000)
    return [(a["alarm"], a["active"]) for a in (json.loads(r[4]) for r in rows if r[2].endswith("/alarm"))]


def stays_open(g: Any, seconds: float) -> bool:
    """The relay is open at every look for `seconds` (longer than the passage timeout it must outlast)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not g.relay.state:
            return False
        time.sleep(0.01)
    return True


def test_a_fire_during_a_release_keeps_the_lane_open_past_the_passage_timeout(lane: Any) -> None:
    assert lane.handle(lane.code(1))[0].admits and lane.relay.state
    time.sleep(0.05)
    lane.fire.hold_low(True)
    assert wait_until(lambda: lane.actuator.mode is Mode.FIRE, 5)
    assert stays_open(lane, 0.6)  # twice the passage timeout
    lane.pump()
    assert lane.actuator.machine.releases == 0 and len(lane.ledger) == 0  # ended, unconfirmed
    lane.fire.hold_low(False)
    assert wait_until(lambda: lane.actuator.mode is Mode.NORMAL and not lane.relay.state, 5)
    assert alarms(lane) == [("fire", True), ("fire", False)]


def test_the_state_counts_a_release_until_its_passage_outcome_is_in(lane: Any) -> None:
    assert lane.handle(lane.code(1))[0].admits
    assert lane.state()["releases_open"] == 1  # the outcome, when it comes, waits in the inbox for the lane
    assert wait_until(lambda: lane.pump() or lane.state()["releases_open"] == 0, 5)  # timed out: not_passed
    assert lane.handle(lane.code(1))[0].admits  # nobody went through: the code may be shown again at once


def test_a_central_free_pass_during_a_release_keeps_the_lane_open_and_raises_free_pass(lane: Any) -> None:
    assert lane.handle(lane.code(1))[0].admits
    lane.set_mode(Requested.FREE_PASS, "central")
    assert lane.actuator.mode is Mode.FREE_PASS
    assert stays_open(lane, 0.6)
    lane.set_mode(Requested.NORMAL, "central")
    assert wait_until(lambda: not lane.relay.state, 5)
    assert alarms(lane) == [("free_pass", True), ("free_pass", False)]  # not `fire`


def test_a_fire_that_clears_returns_to_out_of_service(lane: Any) -> None:
    lane.set_mode(Requested.OUT_OF_SERVICE, "central")
    lane.fire.hold_low(True)
    assert wait_until(lambda: lane.actuator.mode is Mode.FIRE and lane.relay.state, 5)
    lane.fire.hold_low(False)
    assert wait_until(lambda: lane.actuator.mode is Mode.OUT_OF_SERVICE and not lane.relay.state, 5)
    decision, _ = lane.handle(lane.code(1))
    assert decision.reason.value == "out_of_service" and not lane.relay.state
    assert lane.state()["mode"] == "out_of_service" and lane.state()["requested_mode"] == "out_of_service"


def test_free_pass_admits_leave_nothing_behind(lane: Any) -> None:
    lane.set_mode(Requested.FREE_PASS, "central")
    for i in range(200):
        assert lane.handle(lane.code(i))[0].admits
    lane.pump(limit=10_000)  # every outcome the 200 releases queued, not one bounded batch
    assert len(lane.ledger) == 0 and lane.ledger.letting_through("tok-ls000000") is None
    assert lane.actuator.machine.releases == 0 and lane.relay.state


# -- the passage sensor's edges: debounced, rate-limited ------------------------------------------------------
def test_contact_bounce_in_one_passage_confirms_one_person() -> None:
    m = LaneMachine(0.2, 2.0, sensor=SensorLimits(debounce=0.01))
    m.release("d1", 2, 0.0)
    out = [*m.passage_entered(0.3), *m.passage_cleared(0.302), *m.passage_entered(0.304), *m.passage_cleared(0.6)]
    assert [e for e in out if isinstance(e, Outcome)] == [Outcome("d1", 0, "passed")]  # not both companions


def test_a_sensor_flapping_at_200hz_for_10s_raises_one_counted_alarm_not_thousands() -> None:
    m = LaneMachine(0.2, 2.0, sensor=SensorLimits(debounce=0.002, flap_edges=40))
    effects: list[Effect] = []
    now = 0.0
    for i in range(2000):  # 200 edges a second for 10 s, and no release: each entry would be a forced passage
        effects += m.passage_entered(now) if i % 2 == 0 else m.passage_cleared(now)
        effects += m.tick(now)
        now += 0.005
    raised = [(e.name, e.active) for e in effects if isinstance(e, Raise)]
    assert raised.count(("sensor_flapping", True)) == 1 and len(raised) <= 3, raised
    quiet = m.tick(now + 2.5)
    assert [(e.name, e.active) for e in quiet if isinstance(e, Raise)] == [("sensor_flapping", False)]
    assert "edges were ignored" in quiet[0].detail and m.sensor.ignored > 1900
    assert m.passage_entered(now + 3.0)[0].name == "forced_passage"  # believed again once quiet


def test_forced_passages_are_alarmed_at_most_once_in_ten_seconds_and_counted() -> None:
    m = LaneMachine(0.2, 2.0)
    names = [e.detail for t in range(0, 20) for e in m.passage_entered(t * 1.0) if isinstance(e, Raise)]
    assert names == ["passage with no release", "passage with no release (9 more since the last alarm)"]


def test_a_sensor_flapping_at_1khz_does_not_stall_the_lane(rig_factory_passage) -> None:
    act, outcomes, alarms, factory = rig_factory_passage
    sensor, stop = factory.pin(PASSAGE), threading.Event()

    def flap() -> None:
        while not stop.is_set():
            sensor.drive_low()
            time.sleep(0.0005)
            sensor.drive_high()
            time.sleep(0.0005)

    flapper = threading.Thread(target=flap)
    flapper.start()
    try:
        assert wait_until(lambda: ("sensor_flapping", True) in [(a.name, a.active) for a in alarms], 10)
        act.release(Release("d1"))  # while it flaps the release still ends, at its timeout, as nobody passed
        assert wait_until(lambda: [o.outcome for o in outcomes] == ["not_passed"], 10)
    finally:
        stop.set()
        flapper.join(5)
    assert wait_until(lambda: ("sensor_flapping", False) in [(a.name, a.active) for a in alarms], 10)
    assert sum(a.name == "forced_passage" for a in alarms) <= 1


@pytest.fixture
def rig_factory_passage() -> Iterator[tuple[Actuator, list[PassageOutcome], list[Alarm], MockFactory]]:
    factory = MockFactory()
    outcomes = []
    alarms = []
    cfg = GpioSection.model_validate(
        {"relay": {"pin": RELAY, "pulse_seconds": PULSE}, "passage": {"pin": PASSAGE, "timeout_seconds": 0.3}}
    )
    act = Actuator(cfg, factory, outcomes.append, alarms.append).start()
    yield act, outcomes, alarms, factory
    act.close()
