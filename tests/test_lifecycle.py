"""The gate's lifecycle: build() opens and starts nothing, start() and run() belong to the lane thread, close()
stops every thread in reverse; a thread that dies is restarted under supervision with an alarm."""

from __future__ import annotations

import queue
import sys
import threading
import time
import types
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from conftest import free_port, make_config, wait_until
from gate.contracts import Alarm
from gate.core.clock import SystemClock
from gate.core.errors import DeviceError
from gate.core.sqlite import WrongThread
from gate.core.supervisor import Supervisor
from gate.decide.codes import Status, issue
from gate.lane.wiring import build
from gate.scanner import Observation


class Presenter:
    """A code source fed by the test: each payload is one presentation."""

    name = "test"

    def __init__(self) -> None:
        self.codes: queue.Queue[bytes] = queue.Queue()

    def read(self, timeout: float) -> Observation | None:
        try:
            return Observation((self.codes.get(timeout=timeout),))
        except queue.Empty:
            return None

    def close(self) -> None:
        pass


def gate_on(tmp_path: Path, keys: Any, **sections: Any) -> tuple[Any, Presenter]:
    src = Presenter()
    cfg = make_config(tmp_path / "state", keys, **sections)
    gate = build(cfg, source=src, pin_factory=MockFactory(), clock=SystemClock("assume_synced"), with_mqtt=False)
    return gate, src


def test_building_opens_no_connection_binds_no_port_and_starts_no_thread(tmp_path, keys) -> None:
    before = {t.ident for t in threading.enumerate()}
    port = free_port()
    gate, _ = gate_on(tmp_path, keys, metrics={"listen": f"127.0.0.1:{port}"})
    try:
        assert {t.ident for t in threading.enumerate()} == before
        owned = (gate.cache._conn, gate.lanestate._conn, gate.outbox._writer, gate.outbox._reader)
        assert [c.is_open for c in owned] == [False] * 4
        assert [c.owner for c in owned] == ["lane", "lane", "lane", "outbox-drain"]
        assert gate.threads.metrics is None  # the endpoint is bound by start()
    finally:
        gate.close()


def test_the_camera_starts_on_the_lane_thread_at_start_not_at_build(tmp_path, keys, monkeypatch) -> None:
    """build() with the camera source touches no camera; start() starts it on the calling (lane) thread, and a
    camera that cannot start stops start-up with a DeviceError naming it (the daemon's "cannot start")."""
    started_on: list[str] = []

    def broken() -> Any:
        started_on.append(threading.current_thread().name)
        raise RuntimeError("Camera __init__ sequence did not complete")

    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=broken))
    cfg = make_config(tmp_path / "state", keys, scanner={"source": "camera"})
    gate = build(cfg, pin_factory=MockFactory(), clock=SystemClock("assume_synced"), with_mqtt=False)
    try:
        assert started_on == []
        raised: list[BaseException] = []

        def start() -> None:
            try:
                gate.start()
            except BaseException as exc:
                raised.append(exc)

        lane = threading.Thread(target=start, name="lane")
        lane.start()
        lane.join(30)
        assert started_on == ["lane"]
        assert len(raised) == 1 and isinstance(raised[0], DeviceError) and "camera: cannot start" in str(raised[0])
        assert gate.lane_thread is None  # nothing started: no thread, no state file claimed
    finally:
        gate.close()


def test_a_gate_built_on_one_thread_runs_on_another_and_closes_from_the_first(tmp_path, keys) -> None:
    gate, src = gate_on(tmp_path, keys)
    decided: list[str] = []
    gate.listeners.append(lambda scan, d, ev: decided.append(d.action.value))
    stop = threading.Event()
    lane = threading.Thread(target=gate.run, args=(stop,), name="lane")
    lane.start()
    try:
        code = issue(keys.private, "tok-life0001", Status.GREEN, int(time.time()) - 5, 3600).encode()
        src.codes.put(code)
        assert wait_until(lambda: decided == ["admit"], 20)
        assert gate.cache._conn.thread is lane and gate.lanestate._conn.thread is lane
        assert "actuator" in {t.name for t in threading.enumerate()}
    finally:
        stop.set()
        lane.join(10)
        gate.close()  # the lane thread has ended: its connections are handed over here explicitly
        gate.close()  # and twice is safe
    assert "actuator" not in {t.name for t in threading.enumerate()}


def test_running_on_another_thread_than_the_one_that_started_it_is_refused(tmp_path, keys) -> None:
    gate, _ = gate_on(tmp_path, keys)
    gate.start()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            gate.run(threading.Event())
        except WrongThread as exc:
            errors.append(exc)

    t = threading.Thread(target=run, name="other")
    t.start()
    t.join(10)
    gate.close()
    assert len(errors) == 1 and "started on 'MainThread'" in str(errors[0])


def test_a_thread_that_raises_is_restarted_and_reported_and_stops_in_reverse(monkeypatch) -> None:
    import gate.core.supervisor as sup_mod

    monkeypatch.setattr(sup_mod, "FIRST_BACKOFF", 0.01)
    reported: list[tuple[str, str]] = []
    sup = Supervisor(on_restart=lambda name, exc: reported.append((name, str(exc))))
    runs: list[int] = []
    stopped: list[str] = []

    def flaky(stop: threading.Event) -> None:
        runs.append(1)
        if len(runs) < 3:
            raise RuntimeError(f"boom {len(runs)}")
        stop.wait()
        stopped.append("flaky")

    def steady(stop: threading.Event) -> None:
        stop.wait()
        stopped.append("steady")

    sup.spawn("flaky", flaky)
    sup.spawn("steady", steady)
    assert wait_until(lambda: len(runs) == 3, 10)
    assert reported == [("flaky", "boom 1"), ("flaky", "boom 2")]
    assert sup.restarts() == {"flaky": 2, "steady": 0}
    sup.stop(5)
    assert stopped == ["steady", "flaky"]  # the last started, first stopped
    assert sup.alive() == []
    sup.stop(5)  # twice is safe
    with pytest.raises(RuntimeError):
        sup.spawn("late", steady)


def test_backoff_doubles_to_a_cap() -> None:
    import gate.core.supervisor as sup_mod

    waits: list[float] = []

    class Recording(threading.Event):
        def wait(self, timeout: float | None = None) -> bool:
            waits.append(timeout or 0)
            return len(waits) >= 8

    sup = Supervisor()
    child = sup_mod._Child("dies", lambda stop: (_ for _ in ()).throw(RuntimeError("always")))
    child.stop = Recording()
    sup._keep(child)
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_a_lane_thread_that_dies_raises_thread_restarted_on_the_gate(tmp_path, keys, monkeypatch) -> None:
    """Against the real gate: the actuator's worker dies once, the supervisor restarts it, and the lane records
    the `thread_restarted` alarm naming the thread and the cause."""
    import gate.core.supervisor as sup_mod

    monkeypatch.setattr(sup_mod, "FIRST_BACKOFF", 0.01)
    gate, _ = gate_on(tmp_path, keys)
    work = gate.actuator.work
    calls: list[int] = []

    def dies_once(stop: threading.Event) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise OSError("gpio chip went away")
        work(stop)

    gate.actuator.work = dies_once  # type: ignore[method-assign]
    seen: list[Alarm] = []
    gate.recorder.alarm = seen.append  # type: ignore[method-assign]
    gate.start()
    try:
        assert wait_until(lambda: len(calls) == 2, 10)
        assert wait_until(lambda: (gate.pump(), seen)[1], 10)
        alarm = seen[0]
        assert alarm.name == "thread_restarted" and alarm.active
        assert "actuator" in alarm.detail and "OSError" in alarm.detail and "gpio chip went away" in alarm.detail
    finally:
        gate.close()


def test_a_restarted_thread_that_lasts_is_reported_recovered(monkeypatch) -> None:
    import gate.core.supervisor as sup_mod

    monkeypatch.setattr(sup_mod, "FIRST_BACKOFF", 0.01)
    monkeypatch.setattr(sup_mod, "HEALTHY_AFTER", 0.2)
    events: list[str] = []
    sup = Supervisor(lambda name, exc: events.append(f"died {name}"), lambda name: events.append(f"lasted {name}"))
    runs: list[int] = []

    def once_then_steady(stop: threading.Event) -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("first run fails")
        stop.wait()

    sup.spawn("worker", once_then_steady)
    try:
        assert wait_until(lambda: events == ["died worker", "lasted worker"], 10)
    finally:
        sup.stop(5)
