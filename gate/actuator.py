"""The lane's pins on gpiozero: the relay, indicator, buzzer and inputs, driven by the lane machine."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from gate.config import GpioSection, InputSection
from gate.errors import DeviceError
from gate.indicator import Indicator
from gate.lane import Buzz, Effect, Hold, Idle, LaneMachine, Lock, Outcome, Pulse, Raise

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
    """Owns every GPIO device and the lane machine. A release pulses the relay before `release()` returns
    (on the lane thread); gpiozero's callbacks only queue what they saw, and one worker thread feeds those
    events and the timeouts to the machine. The machine sits behind a lock because of that first pulse:
    it is the one piece of state two threads touch, each for microseconds."""

    def __init__(
        self,
        cfg: GpioSection,
        factory: Any = None,
        on_outcome: Callable[[PassageOutcome], None] = lambda o: None,
        on_alarm: Callable[[Alarm], None] = lambda a: None,
    ) -> None:
        from gpiozero import DigitalOutputDevice

        self.cfg, self._on_outcome, self._on_alarm = cfg, on_outcome, on_alarm
        timeout = cfg.passage.timeout_seconds if cfg.passage is not None else None
        self.machine = m = LaneMachine(cfg.relay.pulse_seconds, timeout)
        self._lock = threading.Lock()
        self._events: queue.SimpleQueue[Step | None] = queue.SimpleQueue()
        self._stop = threading.Event()
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
                self.passage.when_pressed = lambda: self._events.put(m.passage_entered)
                self.passage.when_held = lambda: self._events.put(m.passage_held)
                self.passage.when_released = lambda: self._events.put(m.passage_cleared)
            if cfg.exit_button is not None:
                self.exit_button = _button(cfg.exit_button, factory)
                self.exit_button.when_pressed = lambda: self._events.put(lambda now: m.release("exit", 1, now))
            if cfg.fire is not None:
                self.fire = _button(cfg.fire, factory)
                self.fire.when_pressed = lambda: self._events.put(lambda now: m.fire_input(True, "fire input"))
                self.fire.when_released = lambda: self._events.put(
                    lambda now: m.fire_input(False, "fire input cleared")
                )
            self._devices += [d for d in (self.passage, self.exit_button, self.fire) if d is not None]
        except Exception as exc:
            self.close()
            raise DeviceError(f"gpio: cannot open devices: {exc.__class__.__name__}: {exc}") from exc
        if self.fire is not None and self.fire.is_active:
            self._step(lambda now: m.fire_input(True, "fire input active at start"))
        self._worker = threading.Thread(target=self._work, name="actuator", daemon=True)
        self._worker.start()

    @property
    def mode(self) -> str:
        return self.machine.mode

    # -- the lane thread ---------------------------------------------------------------------------
    def signal(self, action: str) -> None:
        """Indicator and buzzer for a decision: admit, assist or deny."""
        colour = {"admit": "green", "assist": "amber", "deny": "red"}[action]
        self.indicator.flash(colour, blink=0.5 if action == "assist" else None, seconds=2.0)
        self.indicator.beep(action)

    def release(self, job: Release) -> None:
        """Let `job.passages` people through; when the lane is idle the first pulse starts before this returns."""
        self._step(lambda now: self.machine.release(job.ref, job.passages, now))
        self._events.put(_nothing)  # wake the worker: it has a deadline to watch now

    def set_mode(self, mode: str) -> None:
        """normal | out_of_service | offline | free_pass (remote). The fire input overrides all."""
        self._step(lambda now: self.machine.set_mode(mode))

    def wait_idle(self, timeout: float) -> bool:
        """Block until every queued release has finished, or the timeout passes."""
        deadline = time.monotonic() + timeout
        while self.machine.busy and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self.machine.busy

    # -- the worker ----------------------------------------------------------------------------------
    def _work(self) -> None:
        while not self._stop.is_set():
            due = self.machine.deadline
            wait = 0.5 if due is None else min(0.5, max(0.0, due - time.monotonic()))
            try:
                event = self._events.get(timeout=wait)
            except queue.Empty:
                event = self.machine.tick
            if event is None:
                break
            self._step(event)
            self._step(self.machine.tick)

    def _step(self, event: Step) -> None:
        try:
            with self._lock:
                for effect in event(time.monotonic()):
                    self._apply(effect)
        except Exception:
            log.exception("actuator: lane step failed; locking")
            self.safe()

    def _apply(self, e: Effect) -> None:
        match e:
            case Pulse():
                self.relay.on()  # at once, in the calling thread
                # gpiozero's own thread ends the pulse even if this process's main loop stalls.
                self.relay.blink(on_time=e.seconds, off_time=0, n=1, background=True)
                for listener in self.pulse_listeners:
                    listener()
            case Lock():
                self.relay.off()
            case Hold():
                self.relay.on()
            case Idle():
                self.indicator.idle(e.colour, e.blink)
            case Buzz():
                if e.pattern is None:
                    self.indicator.quiet()
                else:
                    self.indicator.beep(e.pattern)
            case Outcome():
                if e.ref != "exit":
                    _report(self._on_outcome, PassageOutcome(e.ref, e.index, e.outcome))
            case Raise():
                (log.warning if e.active else log.info)(
                    "alarm %s %s: %s", e.name, "raised" if e.active else "cleared", e.detail
                )
                _report(self._on_alarm, Alarm(e.name, e.active, e.detail))

    # -- safe states -----------------------------------------------------------------------------------
    def safe(self) -> None:
        """Fail-secure: locked (relay inactive). Fail-safe lanes: held released."""
        with suppress(Exception):
            if self.cfg.relay.lock_mode == "fail_safe":
                self.relay.on()
            else:
                self.relay.off()

    def relay_known(self) -> bool:
        """The relay's pin is open and reads back a definite level (for /healthz)."""
        relay = getattr(self, "relay", None)
        try:
            return relay is not None and not relay.closed and relay.value in (0, 1)
        except Exception:  # a pin that cannot be read is not a known state
            return False

    def close(self) -> None:
        """Safe state, then release every device; a release in progress ends unconfirmed. Safe to call twice."""
        self._stop.set()
        worker = getattr(self, "_worker", None)
        if worker is not None:
            self._events.put(None)
            if worker is not threading.current_thread():
                worker.join(timeout=2.0)
            self._step(lambda now: self.machine.abort())
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


Step = Callable[[float], list[Effect]]


def _nothing(now: float) -> list[Effect]:
    return []


def _report(handler: Callable[[Any], None], what: PassageOutcome | Alarm) -> None:
    try:
        handler(what)
    except Exception:
        log.exception("actuator: %s handler failed", type(what).__name__)
