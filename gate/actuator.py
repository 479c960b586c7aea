"""Turnstile actuation on gpiozero: relay pulses, passage counting, alarms, free-pass and safe states."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, ClassVar

from gate.config import GpioSection, InputSection
from gate.errors import DeviceError
from gate.indicator import Indicator

log = logging.getLogger(__name__)


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


_FACTORIES = {
    "lgpio": ("lgpio", "LGPIOFactory"),
    "rpigpio": ("rpigpio", "RPiGPIOFactory"),
    "pigpio": ("pigpio", "PiGPIOFactory"),
    "native": ("native", "NativeFactory"),
    "mock": ("mock", "MockFactory"),
}


def make_pin_factory(name: str) -> Any:
    """None means gpiozero's default (lgpio on a Pi 5); `mock` is gpiozero's own MockFactory."""
    if name == "default":
        return None
    module, cls = _FACTORIES[name]
    try:
        mod = __import__(f"gpiozero.pins.{module}", fromlist=[cls])
        return getattr(mod, cls)()
    except Exception as exc:
        raise DeviceError(f"gpio.pin_factory: cannot load {name!r}: {exc.__class__.__name__}: {exc}") from None


def _button(cfg: InputSection, factory: Any, **kw: Any) -> Any:
    from gpiozero import Button

    return Button(cfg.pin, pull_up=not cfg.active_high, bounce_time=None, pin_factory=factory, **kw)


class Actuator:
    """Owns every GPIO device. The relay is inactive at start; close() and safe() restore the safe state."""

    def __init__(
        self,
        cfg: GpioSection,
        factory: Any = None,
        on_outcome: Callable[[PassageOutcome], None] = lambda o: None,
        on_alarm: Callable[[Alarm], None] = lambda a: None,
    ) -> None:
        from gpiozero import DigitalOutputDevice

        self.cfg, self._on_outcome, self._on_alarm = cfg, on_outcome, on_alarm
        self._jobs: queue.Queue[tuple[Release, bool] | None] = queue.Queue()
        self._lock = threading.Lock()
        self._held = False
        self._passage = threading.Event()
        self._busy = threading.Event()  # a release is in progress: passages are expected
        self._stop = threading.Event()
        self.mode = "normal"
        self.pulse_listeners: list[Callable[[], None]] = []
        self._devices: list[Any] = []
        try:
            self.relay = DigitalOutputDevice(
                cfg.relay.pin, active_high=cfg.relay.active_high, initial_value=False, pin_factory=factory
            )
            self._devices.append(self.relay)
            self.indicator = Indicator(cfg.indicator, cfg.buzzer, factory)
            self.passage = self.exit_button = self.fire = None
            if cfg.passage is not None:
                self.passage = _button(cfg.passage, factory, hold_time=cfg.passage.held_open_seconds)
                # A passage counts when the person has cleared the sensor, not when they reach it.
                self.passage.when_pressed = self._passage_entered
                self.passage.when_held = self._passage_held
                self.passage.when_released = self._passage_cleared
            if cfg.exit_button is not None:
                self.exit_button = _button(cfg.exit_button, factory)
                self.exit_button.when_pressed = lambda: self.release(Release("exit"))
            if cfg.fire is not None:
                self.fire = _button(cfg.fire, factory)
                self.fire.when_pressed = lambda: self._free_pass(True, "fire input")
                self.fire.when_released = lambda: self._free_pass(False, "fire input cleared")
            self._devices += [d for d in (self.passage, self.exit_button, self.fire) if d is not None]
        except Exception as exc:
            self.close()
            raise DeviceError(f"gpio: cannot open devices: {exc.__class__.__name__}: {exc}") from exc
        self._worker = threading.Thread(target=self._work, name="actuator", daemon=True)
        self._worker.start()
        if self.fire is not None and self.fire.is_active:
            self._free_pass(True, "fire input active at start")

    # -- decisions -------------------------------------------------------------------------------
    def signal(self, action: str) -> None:
        """Indicator and buzzer for a decision: admit, assist or deny."""
        colour = {"admit": "green", "assist": "amber", "deny": "red"}[action]
        self.indicator.flash(colour, blink=0.5 if action == "assist" else None, seconds=2.0)
        self.indicator.beep(action)

    def release(self, job: Release) -> None:
        """Queue a release; when the lane is idle the first pulse starts before this returns."""
        if self.mode == "free_pass":
            return  # already held released
        with self._lock:
            first = not self._busy.is_set()
            self._busy.set()
            if first:
                self._pulse()
            self._jobs.put((job, first))

    def _pulse(self) -> None:
        self._passage.clear()
        self.relay.on()  # immediately, in the caller's thread
        # gpiozero's own thread ends the pulse even if this process's main loop stalls.
        self.relay.blink(on_time=self.cfg.relay.pulse_seconds, off_time=0, n=1, background=True)
        for listener in self.pulse_listeners:
            listener()

    def wait_idle(self, timeout: float) -> bool:
        """Block until every queued release has finished, or the timeout passes."""
        deadline = time.monotonic() + timeout
        while (self._busy.is_set() or not self._jobs.empty()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self._busy.is_set()

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._jobs.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is None:
                break
            try:
                self._run(*item)
            except Exception:
                log.exception("actuator: release failed; locking")
                self.safe()
            finally:
                with self._lock:
                    if self._jobs.empty():
                        self._busy.clear()

    def _run(self, job: Release, first_started: bool) -> None:
        self._busy.set()
        for index in range(job.passages):
            if not (first_started and index == 0):
                self._pulse()
            outcome = self._await_passage()
            if outcome == "passed" and self.mode != "free_pass":
                self.relay.off()  # lock behind this person; the next one gets a pulse of their own
            if job.ref != "exit":
                self._on_outcome(PassageOutcome(job.ref, index, outcome))
            if outcome == "not_passed" or self._stop.is_set():
                self.relay.off()
                for rest in range(index + 1, job.passages):
                    if job.ref != "exit":
                        self._on_outcome(PassageOutcome(job.ref, rest, "not_passed"))
                return

    def _await_passage(self) -> str:
        if self.passage is None:
            self._stop.wait(self.cfg.relay.pulse_seconds + 0.2)
            return "unconfirmed"
        timeout = self.cfg.passage.timeout_seconds if self.cfg.passage else 0
        return "passed" if self._passage.wait(timeout) else "not_passed"

    # -- inputs ----------------------------------------------------------------------------------
    def _passage_entered(self) -> None:
        if not (self._busy.is_set() or self.mode == "free_pass"):
            self._alarm("forced_passage", True, "passage with no release")

    def _passage_held(self) -> None:
        self._held = True
        self._alarm("held_open", True, "passage blocked too long")

    def _passage_cleared(self) -> None:
        self._passage.set()
        if self._held:
            self._held = False
            self._alarm("held_open", False, "passage clear")

    def _alarm(self, name: str, active: bool, detail: str) -> None:
        (log.warning if active else log.info)("alarm %s %s: %s", name, "raised" if active else "cleared", detail)
        try:
            self._on_alarm(Alarm(name, active, detail))
        except Exception:
            log.exception("alarm handler failed")

    def _free_pass(self, on: bool, why: str) -> None:
        if on:
            self.mode = "free_pass"
            self.relay.on()  # held released: the one deliberate open-on-emergency
            self.indicator.idle("green", blink=0.5)
            self.indicator.beep("alarm")
        else:
            self.mode = "normal"
            self.relay.off()
            self.indicator.quiet()
            self.indicator.idle("off")
        self._alarm("fire", on, why)

    # -- modes and safe states -------------------------------------------------------------------
    _IDLE: ClassVar[dict[str, tuple[str, float | None]]] = {
        "normal": ("off", None),
        "out_of_service": ("red", None),
        "offline": ("amber", 2.0),
    }

    def set_mode(self, mode: str) -> None:
        """normal | out_of_service | offline | free_pass (remote). The fire input overrides all."""
        if self.fire is not None and self.fire.is_active and mode != "free_pass":
            return
        if mode == "free_pass":
            self._free_pass(True, "free-pass requested")
            return
        if self.mode == "free_pass":
            self._free_pass(False, "free-pass ended")
        if mode == "out_of_service":
            self.relay.off()
        self.mode = mode
        self.indicator.idle(*self._IDLE[mode])

    def safe(self) -> None:
        """Fail-secure: locked (relay inactive). Fail-safe lanes: held released."""
        with suppress(Exception):
            if self.cfg.relay.lock_mode == "fail_safe":
                self.relay.on()
            else:
                self.relay.off()

    def close(self) -> None:
        """Safe state, then release every device. Safe to call twice."""
        self._stop.set()
        with suppress(Exception):
            self._jobs.put(None)
        worker = getattr(self, "_worker", None)
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=2.0)
        relay = getattr(self, "relay", None)
        if relay is not None:
            self.safe()
        indicator = getattr(self, "indicator", None)
        if indicator is not None:
            indicator.close()
        for dev in self._devices[::-1]:
            with suppress(Exception):
                dev.close()
        self._devices.clear()

    def __enter__(self) -> Actuator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
