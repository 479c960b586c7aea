"""The lane machine alone: no pins, no threads, time passed in by hand."""

from __future__ import annotations

import pytest

from gate.lane import Buzz, Hold, Idle, LaneMachine, Lock, Outcome, Pulse, Raise


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


def test_fire_holds_free_pass_over_any_remote_mode() -> None:
    m = lane()
    assert m.fire_input(True, "fire input") == [
        Hold(),
        Idle("green", 0.5),
        Buzz("alarm"),
        Raise("fire", True, "fire input"),
    ]
    assert m.set_mode("out_of_service") == [] and m.mode == "free_pass"
    assert m.release("d1", 1, 0.0) == [] and m.passage_entered(0.1) == []  # no forced passage in free-pass
    assert m.fire_input(False, "cleared") == [Lock(), Idle("off"), Buzz(None), Raise("fire", False, "cleared")]
    assert m.mode == "normal"


def test_modes_set_the_idle_pattern_and_out_of_service_locks() -> None:
    m = lane()
    assert m.set_mode("out_of_service") == [Lock(), Idle("red")]
    assert m.set_mode("offline") == [Idle("amber", 2.0)]
    assert m.set_mode("free_pass")[0] == Hold()
    assert m.set_mode("normal")[:2] == [Lock(), Idle("off")]
    with pytest.raises(ValueError, match="unknown lane mode"):
        m.set_mode("open_sesame")


def test_stopping_mid_release_leaves_no_decision_without_its_outcomes() -> None:
    m = lane()
    m.release("a", 2, 0.0)
    m.release("b", 1, 0.1)
    assert m.abort() == [Outcome("a", 0, "unconfirmed"), Outcome("a", 1, "not_passed"), Outcome("b", 0, "not_passed")]
    assert not m.busy
