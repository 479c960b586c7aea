"""Actuation on gpiozero's MockFactory: pulses, passages, alarms, free-pass, polarity, safe states."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin

from conftest import wait_until
from gate.actuator import Actuator
from gate.config.model import GpioSection
from gate.contracts import Alarm, PassageOutcome, Release, Requested

RELAY = 17
PASSAGE = 5
EXIT = 6
FIRE = 13


def gpio(**kw: Any) -> GpioSection:
    relay = {"pin": RELAY, "pulse_seconds": 0.2, **kw.pop("relay", {})}
    return GpioSection.model_validate(
        {"relay": relay, "indicator": {"green": 22, "red": 27, "amber": 23}, "buzzer": {"pin": 24}, **kw}
    )


class Rig:
    def __init__(self, **kw: Any) -> None:
        self.factory = MockFactory()
        self.outcomes: list[PassageOutcome] = []
        self.alarms: list[Alarm] = []
        self.act = Actuator(gpio(**kw), self.factory, self.outcomes.append, self.alarms.append).start()
        self.relay = self.factory.pin(RELAY)

    def walk(self, delay: float = 0.05, dwell: float = 0.05) -> None:
        sensor = self.factory.pin(PASSAGE)
        time.sleep(delay)
        sensor.drive_low()
        time.sleep(dwell)
        sensor.drive_high()

    def wait_outcomes(self, n: int, timeout: float = 5.0) -> list[PassageOutcome]:
        wait_until(lambda: len(self.outcomes) >= n, timeout)
        return self.outcomes


@pytest.fixture
def rig_factory():
    rigs: list[Rig] = []

    def make(**kw: Any) -> Rig:
        rigs.append(Rig(**kw))
        return rigs[-1]

    yield make
    for r in rigs:
        r.act.close()


PASSAGE_CFG = {"passage": {"pin": PASSAGE, "timeout_seconds": 0.5, "held_open_seconds": 0.3}}


def test_relay_is_inactive_at_start(rig_factory) -> None:
    assert rig_factory().relay.state is False


def test_a_pulse_releases_for_the_configured_length_and_ends_while_the_caller_is_blocked(rig_factory) -> None:
    r = rig_factory()
    r.relay.clear_states()
    r.act.release(Release("d1"))
    assert r.relay.state is True  # on before release() returned
    assert wait_until(lambda: r.relay.state is False, 5)  # the caller is blocked; gpiozero's own thread ends it
    on, off = r.relay.states[1:]
    assert (on.state, off.state) == (True, False)
    assert off.timestamp - on.timestamp >= 0.2  # at least the configured pulse


def test_active_low_relay_idles_high_and_pulses_low(rig_factory) -> None:
    r = rig_factory(relay={"active_high": False})
    assert r.relay.state is True
    r.act.release(Release("d1"))
    assert r.relay.state is False
    assert wait_until(lambda: r.relay.state is True, 5)


def test_holder_and_companions_each_get_a_confirmed_release(rig_factory) -> None:
    r = rig_factory(**PASSAGE_CFG)
    r.relay.clear_states()
    r.act.release(Release("d1", passages=3))
    for _ in range(3):
        r.walk()
    outcomes = r.wait_outcomes(3)
    assert [(o.ref, o.index, o.outcome) for o in outcomes] == [("d1", i, "passed") for i in range(3)]
    assert sum(1 for s in r.relay.states if s.state) == 3  # three separate pulses


def test_a_release_with_no_passage_locks_again_as_not_passed(rig_factory) -> None:
    r = rig_factory(**PASSAGE_CFG)
    r.act.release(Release("d1", passages=2))
    outcomes = r.wait_outcomes(2)
    assert [(o.index, o.outcome) for o in outcomes] == [(0, "not_passed"), (1, "not_passed")]
    assert r.relay.state is False


def test_without_a_passage_sensor_passages_are_unconfirmed(rig_factory) -> None:
    r = rig_factory()
    r.act.release(Release("d1", passages=2))
    assert [o.outcome for o in r.wait_outcomes(2)] == ["unconfirmed", "unconfirmed"]


def test_passage_with_no_release_raises_forced_passage(rig_factory) -> None:
    r = rig_factory(**PASSAGE_CFG)
    r.walk(delay=0)
    assert wait_until(lambda: r.alarms, 5)
    assert [a.name for a in r.alarms] == ["forced_passage"] and r.alarms[0].active


def test_a_blocked_passage_raises_and_clears_held_open(rig_factory) -> None:
    r = rig_factory(**PASSAGE_CFG)
    r.act.release(Release("d1"))
    sensor = r.factory.pin(PASSAGE)
    sensor.drive_low()  # someone stands in the passage
    assert wait_until(lambda: ("held_open", True) in [(a.name, a.active) for a in r.alarms], 5)
    sensor.drive_high()
    assert wait_until(lambda: ("held_open", False) in [(a.name, a.active) for a in r.alarms], 5)


def test_inputs_run_no_gpiozero_hold_thread_so_close_waits_for_none(rig_factory) -> None:
    from gpiozero.mixins import HoldMixin

    r = rig_factory(**PASSAGE_CFG, fire={"pin": FIRE}, exit_button={"pin": EXIT})
    inputs = (r.act.passage, r.act.fire, r.act.exit_button)
    assert all(d is not None and not isinstance(d, HoldMixin) for d in inputs)
    r.factory.pin(PASSAGE).drive_low()  # an input held active while the gate stops
    r.factory.pin(FIRE).drive_low()
    assert wait_until(lambda: ("held_open", True) in [(a.name, a.active) for a in r.alarms], 5)
    r.act.close()
    assert all(d.closed for d in inputs)


def test_fire_input_holds_the_relay_released_and_clears(rig_factory) -> None:
    r = rig_factory(fire={"pin": FIRE})
    fire = r.factory.pin(FIRE)
    fire.drive_low()
    assert wait_until(lambda: r.act.mode == "fire" and r.relay.state is True, 5)
    time.sleep(0.3)  # longer than a pulse: nothing may happen in this window
    assert r.relay.state is True  # held, not pulsed
    r.act.request(Requested.OUT_OF_SERVICE, "central", None)
    assert r.relay.state is True  # the fire input overrides remote modes
    fire.drive_high()
    assert wait_until(lambda: r.act.mode == "out_of_service" and r.relay.state is False, 5)  # back to the request
    assert [(a.name, a.active) for a in r.alarms] == [("fire", True), ("fire", False)]


def test_exit_button_releases_one_passage_without_a_check_in(rig_factory) -> None:
    r = rig_factory(exit_button={"pin": EXIT})
    r.factory.pin(EXIT).drive_low()
    assert wait_until(lambda: r.relay.state is True, 5)
    assert wait_until(lambda: r.relay.state is False and r.act.wait_idle(0), 5)
    assert r.outcomes == []


def test_an_exception_leaves_the_relay_locked(rig_factory) -> None:
    factory = MockFactory()
    with pytest.raises(RuntimeError), Actuator(gpio(), factory) as act:
        act.relay.on()
        raise RuntimeError("boom")
    assert factory.pin(RELAY).state is False


def test_a_failing_outcome_handler_locks_the_relay_and_keeps_working() -> None:
    factory = MockFactory()

    def bad(o: PassageOutcome) -> None:
        raise RuntimeError("handler bug")

    act = Actuator(gpio(), factory, on_outcome=bad).start()
    try:
        act.release(Release("d1"))
        assert act.wait_idle(3)
        assert factory.pin(RELAY).state is False
        act.release(Release("d2"))
        assert factory.pin(RELAY).state is True
    finally:
        act.close()


def test_close_is_safe_twice_and_leaves_the_relay_locked(rig_factory) -> None:
    r = rig_factory()
    r.act.release(Release("d1"))
    r.act.close()
    r.act.close()
    assert r.relay.state is False


def test_fail_safe_lane_is_held_released_in_its_safe_state(rig_factory) -> None:
    r = rig_factory(relay={"lock_mode": "fail_safe"})
    assert r.relay.state is False  # inactive at start
    r.act.safe()
    assert r.relay.state is True


def test_out_of_service_shows_red_and_never_releases_on_its_own(rig_factory) -> None:
    r = rig_factory()
    r.act.request(Requested.OUT_OF_SERVICE, "central", None)
    assert r.factory.pin(27).state is True and r.relay.state is False


def test_busy_lane_queues_the_next_release(rig_factory) -> None:
    r = rig_factory(**PASSAGE_CFG)
    r.act.release(Release("a"))
    r.act.release(Release("b"))
    threading.Thread(target=lambda: (r.walk(), r.walk())).start()
    assert [(o.ref, o.outcome) for o in r.wait_outcomes(2)] == [("a", "passed"), ("b", "passed")]


def test_selftest_cycles_outputs_and_reports_inputs(tmp_path: Path) -> None:
    cfg = tmp_path / "gate.toml"
    cfg.write_text(
        '[gate]\nid="t"\n[venue]\nid="v"\n[gpio.relay]\npin=17\n[gpio.indicator]\ngreen=22\nred=27\n'
        "[gpio.passage]\npin=5\n"
    )
    env = {"GPIOZERO_PIN_FACTORY": "mock", "PATH": "/usr/bin:/bin"}
    r = subprocess.run(
        [sys.executable, "-m", "gate", "selftest", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert "relay" in r.stdout and "passage" in r.stdout and "inactive" in r.stdout and "locked" in r.stdout


def test_selftest_fails_when_a_device_cannot_be_opened(tmp_path: Path) -> None:
    cfg = tmp_path / "gate.toml"
    cfg.write_text('[gate]\nid="t"\n[venue]\nid="v"\n[gpio]\npin_factory="pigpio"\n')
    r = subprocess.run(
        [sys.executable, "-m", "gate", "selftest", "--config", str(cfg)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode != 0 and "FAIL" in r.stdout + r.stderr and "Traceback" not in r.stderr


def test_a_decision_flashes_then_the_idle_pattern_returns(rig_factory) -> None:
    r = rig_factory()
    red = r.factory.pin(27)
    r.act.request(Requested.OUT_OF_SERVICE, "central", None)
    assert red.state is True
    r.act.indicator.flash("green", seconds=0.1)
    assert red.state is False and r.factory.pin(22).state is True
    assert wait_until(lambda: red.state is True and r.factory.pin(22).state is False, 5)


def test_rgb_indicator_mixes_the_colours() -> None:
    factory = MockFactory(pin_class=MockPWMPin)
    cfg = GpioSection.model_validate(
        {"relay": {"pin": RELAY}, "indicator": {"kind": "rgb", "red": 22, "green": 23, "blue": 24}}
    )
    with Actuator(cfg, factory) as act:
        act.request(Requested.OUT_OF_SERVICE, "central", None)
        assert (factory.pin(22).state, factory.pin(23).state, factory.pin(24).state) == (1, 0, 0)
        act.indicator.idle("amber")
        assert factory.pin(22).state == 1 and 0 < factory.pin(23).state < 1
