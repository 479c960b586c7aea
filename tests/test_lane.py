"""The lane machine alone: no pins, no threads, time passed in by hand."""

from __future__ import annotations

import pytest

from gate.actuate.machine import Buzz, Hold, Idle, LaneMachine, Lock, Outcome, Pulse, Raise
from gate.contracts import Mode, Requested


def lane(sensor: bool = True) -> LaneMachine:
    return LaneMachine(pulse_seconds=0.2, passage_timeout=1.5 if sensor else None)


def test_each_person_of_a_release_gets_a_pulse_and_is_locked_behind() -> None:
    m = lane()
    assert m.release("d1", 3, 0.0) == [Pulse(0.2)]
    assert m.passage_cleared(0.5) == [Lock(), Outcome("d1", 0, "passed"), Pulse(0.2)]
    assert m.passage_cleared(1.0) == [Lock(), Outcome("d1", 1, "passed"), Pulse(0.2)]
    assert m.passage_cleared(1.5) == [Lock(), Outcome("d1", 2, "passed")]
    assert not m.busy


def test_nobody_walking_through_locks_again_and_the_companions_did_not_pass() -> None:
    m = lane()
    m.release("d1", 3, 0.0)
    assert m.tick(1.4) == []
    assert m.tick(1.5) == [
        Outcome("d1", 0, "not_passed"),
        Lock(),
        Outcome("d1", 1, "not_passed"),
        Outcome("d1", 2, "not_passed"),
    ]


def test_without_a_sensor_every_pulse_is_unconfirmed() -> None:
    m = lane(sensor=False)
    m.release("d1", 2, 0.0)
    assert m.tick(0.4) == [Outcome("d1", 0, "unconfirmed"), Pulse(0.2)]
    assert m.tick(0.8) == [Outcome("d1", 1, "unconfirmed")]
    assert m.passage_cleared(1.0) == []


def test_a_busy_lane_queues_the_next_release() -> None:
    m = lane()
    m.release("a", 1, 0.0)
    assert m.release("b", 1, 0.1) == []
    assert m.passage_cleared(0.5) == [Lock(), Outcome("a", 0, "passed"), Pulse(0.2)]
    assert m.passage_cleared(0.9) == [Lock(), Outcome("b", 0, "passed")]


def test_passage_without_release_is_forced_and_a_blocked_one_is_held_open() -> None:
    m = lane()
    assert m.passage_entered(0.0) == [Raise("forced_passage", True, "passage with no release")]
    assert m.passage_held(1.0) == [Raise("held_open", True, "passage blocked too long")]
    assert m.passage_cleared(2.0) == [Raise("held_open", False, "passage clear")]


def test_a_sensor_blocked_for_its_held_open_time_raises_held_open_once_from_the_machines_own_timer() -> None:
    m = LaneMachine(0.2, 2.0, held_open=5.0)
    m.passage_entered(0.0)
    assert m.deadline == 5.0 and m.tick(4.9) == []  # the worker wakes for it: no gpiozero hold thread needed
    assert m.tick(5.0) == [Raise("held_open", True, "passage blocked too long")]
    assert m.tick(9.0) == [] and m.deadline is None  # once per blocking, like gpiozero's when_held
    assert m.passage_cleared(10.0) == [Raise("held_open", False, "passage clear")]


def test_a_sensor_cleared_before_its_held_open_time_raises_nothing() -> None:
    m = LaneMachine(0.2, 2.0, held_open=5.0)
    m.passage_entered(0.0)
    m.passage_cleared(1.0)
    assert m.tick(6.0) == [] and not m.held


def test_fire_holds_the_lane_open_over_any_requested_mode_and_clearing_returns_to_it() -> None:
    m = lane()
    assert m.request(Requested.OUT_OF_SERVICE, "central", 1.0) == [Lock(), Idle("red")]
    assert m.fire_input(True, "fire input") == [
        Hold(),
        Idle("green", 0.5),
        Buzz("alarm"),
        Raise("fire", True, "fire input"),
    ]
    assert m.mode is Mode.FIRE
    assert m.release("d1", 2, 0.0) == [Outcome("d1", 0, "unconfirmed"), Outcome("d1", 1, "unconfirmed")]
    assert m.passage_entered(0.1) == []  # no forced passage while the lane stands open
    assert m.fire_input(False, "cleared") == [Lock(), Idle("red"), Buzz(None), Raise("fire", False, "cleared")]
    assert m.mode is Mode.OUT_OF_SERVICE  # what central asked for, not normal


def test_a_fire_during_a_release_ends_it_and_nothing_locks_the_relay_until_the_fire_clears() -> None:
    m = lane()
    m.release("a", 2, 0.0)
    m.release("b", 1, 0.01)
    effects = m.fire_input(True, "fire input")
    assert effects[:4] == [
        Outcome("a", 0, "unconfirmed"),
        Outcome("a", 1, "unconfirmed"),
        Outcome("b", 0, "unconfirmed"),
        Hold(),
    ]
    assert not m.busy and m.deadline is None
    assert m.tick(10.0) == [] and m.passage_cleared(10.1) == []  # the old timeout locks nothing


def test_remote_free_pass_is_its_own_state_with_its_own_alarm() -> None:
    m = lane()
    m.release("a", 1, 0.0)
    assert m.request(Requested.FREE_PASS, "central", 1.0) == [
        Outcome("a", 0, "unconfirmed"),
        Hold(),
        Idle("green"),
        Raise("free_pass", True, "free-pass requested by central"),
    ]
    assert m.mode is Mode.FREE_PASS
    assert m.fire_input(True, "fire")[-1] == Raise("fire", True, "fire")  # no Lock between the two holds
    assert m.request(Requested.NORMAL, "central", 2.0) == [Raise("free_pass", False, "free-pass ended")]
    assert m.mode is Mode.FIRE
    assert m.fire_input(False, "cleared")[:2] == [Lock(), Idle("off")]


def test_out_of_service_ends_releases_and_refuses_new_ones() -> None:
    m = lane()
    m.release("a", 2, 0.0)
    assert m.request(Requested.OUT_OF_SERVICE) == [
        Outcome("a", 0, "unconfirmed"),
        Outcome("a", 1, "not_passed"),
        Lock(),
        Idle("red"),
    ]
    assert m.release("b", 1, 1.0) == [Outcome("b", 0, "not_passed")]


def test_modes_set_the_idle_pattern_and_offline_only_colours_a_normal_lane() -> None:
    m = lane()
    assert m.link_offline(True) == [Idle("amber", 2.0)] and m.mode is Mode.OFFLINE
    assert m.request(Requested.OUT_OF_SERVICE) == [Lock(), Idle("red")]
    assert m.request(Requested.FREE_PASS)[0] == Hold()
    assert m.request(Requested.NORMAL)[:2] == [Lock(), Idle("amber", 2.0)]
    assert m.link_offline(False) == [Idle("off")]
    with pytest.raises(ValueError, match="is not a valid Requested"):
        m.request("open_sesame")  # type: ignore[arg-type]


def test_stopping_mid_release_leaves_no_decision_without_its_outcomes() -> None:
    m = lane()
    m.release("a", 2, 0.0)
    m.release("b", 1, 0.1)
    assert m.abort() == [Outcome("a", 0, "unconfirmed"), Outcome("a", 1, "not_passed"), Outcome("b", 0, "not_passed")]
    assert not m.busy
