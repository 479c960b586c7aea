"""The lane's pins on gpiozero: the relay, indicator, buzzer and inputs, driven by the lane machine."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from gate.actuate.indicator import Indicator
from gate.actuate.machine import Buzz, Effect, Hold, Idle, LaneMachine, Lock, Outcome, Pulse, Raise
from gate.actuate.mode import LaneMode
from gate.actuate.pins import button
from gate.actuate.sensor import SensorLimits
from gate.config.model import GpioSection
from gate.contracts import Alarm, Mode, PassageOutcome, Release, Requested
from gate.core.errors import DeviceError
from gate.core.mailbox import Mailbox

log = logging.getLogger(__name__)
EVENTS_LIMIT = 256  # sensor edges waiting for the worker; past this a flapping input's edges are refused


class Actuator:
    """Owns every GPIO device and the lane machine. A release pulses the relay before `release()` returns
    (on the lane thread); gpiozero's callbacks only queue what they saw, and one worker thread feeds those
    events and the timeouts to the machine. The machine sits behind a lock because of that first pulse:
    it is the one piece of state two threads touch, each for microseconds. The machine holds the lane's
    mode (`mode_state`); the lane thread asks for changes, the fire input changes it from the worker."""

    def __init__(
        self,
        cfg: GpioSection,
        factory: Any = None,
        on_outcome: Callable[[PassageOutcome], object] = lambda o: None,
        on_alarm: Callable[[Alarm], object] = lambda a: None,
        clock: Callable[[], float] = time.monotonic,
        worker: bool = True,
    ) -> None:
        """`clock` and `worker=False` are for tests that step the machine by hand (`process_events`)."""
        self.cfg = cfg
        self._on_outcome = on_outcome
        self._on_alarm = on_alarm
        self._clock = clock
        timeout = cfg.passage.timeout_seconds if cfg.passage is not None else None
        p = cfg.passage
        limits = SensorLimits(p.debounce_seconds, p.flap_edges) if p is not None else None
        held_open = p.held_open_seconds if p is not None else None  # timed by the machine: no gpiozero hold thread
        self.machine = m = LaneMachine(cfg.relay.pulse_seconds, timeout, sensor=limits, held_open=held_open)
        self._lock = threading.Lock()
        self.events: Mailbox[Step | None] = Mailbox("actuator events", EVENTS_LIMIT)
        self._stop = threading.Event()
        self.pulse_listeners: list[Callable[[], None]] = []
        self._devices: list[Any] = []
        self.fire: Any = None  # gpiozero input devices, where configured
        self.passage: Any = None
        self.exit_button: Any = None
        try:
            self._open(cfg, factory)
        except Exception as exc:
            self.close()
            raise DeviceError(f"gpio: cannot open devices: {exc.__class__.__name__}: {exc}") from exc
        if self.fire is not None and self.fire.is_active:
            self._step(lambda now: m.fire_input(True, "fire input active at start"))
        self._has_worker = worker
        self._worker: threading.Thread | None = None  # the thread running `work`, once one does

    def _open(self, cfg: GpioSection, factory: Any) -> None:
        """The devices, the fire input first; gpiozero's callbacks only queue what they saw."""
        from gpiozero import DigitalOutputDevice

        m = self.machine
        if cfg.fire is not None:  # first: a gate (re)started during a fire opens with the relay held
            self.fire = button(cfg.fire, factory)
            self._devices.append(self.fire)
        self.relay = DigitalOutputDevice(
            cfg.relay.pin,
            active_high=cfg.relay.active_high,
            initial_value=self.fire is not None and self.fire.is_active,
            pin_factory=factory,
        )
        self._devices.append(self.relay)
        self.indicator = Indicator(cfg.indicator, cfg.buzzer, factory)
        if cfg.passage is not None:
            self.passage = button(cfg.passage, factory)
            # A passage counts when the person has cleared the sensor, not when they reach it.
            self.passage.when_activated = lambda: self.events.put(m.passage_entered)
            self.passage.when_deactivated = lambda: self.events.put(m.passage_cleared)
        if cfg.exit_button is not None:
            self.exit_button = button(cfg.exit_button, factory)
            self.exit_button.when_activated = lambda: self.events.put(lambda now: m.release("exit", 1, now))
        if self.fire is not None:
            # The fire input is never refused, however many sensor events wait.
            self.fire.when_activated = lambda: self.events.put(lambda now: m.fire_input(True, "fire input"), True)
            self.fire.when_deactivated = lambda: self.events.put(
                lambda now: m.fire_input(False, "fire input cleared"), True
            )
        self._devices += [d for d in (self.passage, self.exit_button) if d is not None]

    @property
    def mode(self) -> Mode:
        """The effective mode now."""
        return self.machine.mode

    @property
    def mode_state(self) -> LaneMode:
        """The lane's whole mode: an immutable value, replaced whole on each change (any thread may read it)."""
        return self.machine.state

    # -- the lane thread ---------------------------------------------------------------------------
    def signal(self, action: str) -> None:
        """Indicator and buzzer for a decision: admit, assist or deny."""
        colour = {"admit": "green", "assist": "amber", "deny": "red"}[action]
        self.indicator.flash(colour, blink=0.5 if action == "assist" else None, seconds=2.0)
        self.indicator.beep(action)

    def release(self, job: Release) -> None:
        """Let `job.passages` people through; when the lane is idle the first pulse starts before this returns."""
        self._step(lambda now: self.machine.release(job.ref, job.passages, now))
        self.events.put(_nothing)  # wake the worker: it has a deadline to watch now

    def request(self, mode: Requested, by: str | None, at: float | None) -> None:
        """The requested mode (central's, already on disk). The fire input overrides it while active."""
        self._step(lambda now: self.machine.request(mode, by, at))

    def link_offline(self, offline: bool) -> None:
        """The broker has been away long enough to show it on the idle indicator (decisions go on)."""
        if self.machine.state.offline != offline:
            self._step(lambda now: self.machine.link_offline(offline))

    def wait_idle(self, timeout: float) -> bool:
        """Block until every queued release has finished, or the timeout passes."""
        deadline = time.monotonic() + timeout
        while self.machine.busy and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self.machine.busy

    # -- the worker ----------------------------------------------------------------------------------
    def start(self) -> Actuator:
        """Standalone (tests, `gate selftest`): the worker on a thread of its own. Under `Gate.start()` the
        supervisor runs `work` instead. Construction starts nothing."""
        if self._has_worker and self._worker is None:
            threading.Thread(target=self.work, args=(self._stop,), name="actuator", daemon=True).start()
            while self._worker is None and not self._stop.is_set():
                time.sleep(0.001)  # until the worker has said which thread it is: close() joins it
        return self

    def work(self, stop: threading.Event) -> None:
        """The worker: sensor and timer events into the machine, until `stop` or `close()`."""
        self._worker = threading.current_thread()
        while not stop.is_set() and not self._stop.is_set():
            due = self.machine.deadline
            wait = 0.5 if due is None else min(0.5, max(0.0, due - self._clock()))
            try:
                event = self.events.get(timeout=wait)
            except queue.Empty:
                event = self.machine.tick
            if event is None:
                break
            self._step(event)
            self._step(self.machine.tick)

    def process_events(self) -> None:
        """Without a worker (tests): carry out every queued event, then the timeouts, on the calling thread."""
        while True:
            try:
                event = self.events.get_nowait()
            except queue.Empty:
                break
            if event is not None:
                self._step(event)
        self._step(self.machine.tick)

    def _step(self, event: Step) -> None:
        """One event into the machine. Its effects are carried out under the machine's lock, so pins change and
        outcomes are queued in the machine's order (a hold's Hold can never be overtaken by an earlier step's
        Lock); alarms are logged after the lock is let go."""
        raised: list[Raise] = []
        try:
            with self._lock:
                for effect in event(self._clock()):
                    self._apply(effect)
                    if isinstance(effect, Raise):
                        raised.append(effect)
        except Exception:
            log.exception("actuator: lane step failed; locking unless a hold is in force")
            self.safe()
        for e in raised:
            (log.warning if e.active else log.info)(
                "alarm %s %s: %s", e.name, "raised" if e.active else "cleared", e.detail
            )

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
            case Outcome():  # the handlers only queue (the lane inbox)
                if e.ref != "exit":
                    _report(self._on_outcome, PassageOutcome(e.ref, e.index, e.outcome))
            case Raise():
                _report(self._on_alarm, Alarm(e.name, e.active, e.detail))

    # -- safe states -----------------------------------------------------------------------------------
    def safe(self) -> None:
        """Fail-secure: locked (relay inactive). Fail-safe lanes, and any lane under a hold (fire, free-pass):
        held released, whatever went wrong."""
        with suppress(Exception):
            if self.cfg.relay.lock_mode == "fail_safe" or self.machine.mode.holds:
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
        built = hasattr(self, "_worker")
        worker = self._worker if built else None
        if worker is not None and worker.is_alive():
            self.events.put(None, essential=True)
            if worker is not threading.current_thread():
                worker.join(timeout=2.0)
        if built:
            self._step(lambda now: self.machine.abort())
        relay = getattr(self, "relay", None)
        if relay is not None:
            self.safe()
        indicator = getattr(self, "indicator", None)
        if indicator is not None:
            indicator.close()
        for dev in self._devices[::-1]:  # plain input devices: no gpiozero hold thread to wait out
            with suppress(Exception):
                dev.close()
        self._devices.clear()

    def __enter__(self) -> Actuator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


Step = Callable[[float], list[Effect]]


def _nothing(now: float) -> list[Effect]:
    return []


def _report(handler: Callable[[Any], object], what: PassageOutcome | Alarm) -> None:
    try:
        handler(what)
    except Exception:
        log.exception("actuator: %s handler failed", type(what).__name__)
