"""Indicator lights and buzzer: what a passenger and staff see and hear for each decision and mode."""

from __future__ import annotations

import threading
from contextlib import suppress
from typing import Any, ClassVar

from gate.config.model import IndicatorSection, PinSection


class Indicator:
    """Green/red/amber as separate LEDs or one RGB LED, plus an optional buzzer. Absent parts are no-ops."""

    def __init__(self, cfg: IndicatorSection | None, buzzer: PinSection | None, factory: Any) -> None:
        from gpiozero import LED, RGBLED, Buzzer

        self._leds: dict[str, Any] = {}
        self._rgb: Any = None
        self._buzzer: Any = None
        self._lock = threading.Lock()
        self._idle: tuple[str, float | None] = ("off", None)
        self._timer: threading.Timer | None = None
        try:
            if cfg is not None and cfg.kind == "rgb":
                self._rgb = RGBLED(cfg.red, cfg.green, cfg.blue, active_high=cfg.active_high, pin_factory=factory)
            elif cfg is not None:
                for colour in ("green", "red", "amber"):
                    pin = getattr(cfg, colour)
                    if pin is not None:
                        self._leds[colour] = LED(pin, active_high=cfg.active_high, pin_factory=factory)
            if buzzer is not None:
                self._buzzer = Buzzer(buzzer.pin, active_high=buzzer.active_high, pin_factory=factory)
        except BaseException:
            self.close()
            raise

    _RGB: ClassVar[dict[str, tuple[float, float, float]]] = {
        "green": (0, 1, 0),
        "red": (1, 0, 0),
        "amber": (1, 0.5, 0),
        "off": (0, 0, 0),
    }

    def _all_off(self) -> None:
        for led in self._leds.values():
            led.off()
        if self._rgb is not None:
            self._rgb.off()

    def _light(self, colour: str, blink: float | None) -> None:
        self._all_off()
        if colour == "off":
            return
        if self._rgb is not None:
            if blink:
                self._rgb.blink(on_time=blink / 2, off_time=blink / 2, on_color=self._RGB[colour])
            else:
                self._rgb.color = self._RGB[colour]
            return
        led = self._leds.get(colour) or (self._leds.get("red") if colour == "amber" else None)
        if led is None:
            return
        if blink:
            led.blink(on_time=blink / 2, off_time=blink / 2)
        else:
            led.on()

    def idle(self, colour: str, blink: float | None = None) -> None:
        """The pattern shown between decisions: off, or the mode (out of service, offline, free-pass)."""
        with self._lock:
            self._idle = (colour, blink)
            if self._timer is None:
                self._light(colour, blink)

    def flash(self, colour: str, blink: float | None = None, seconds: float = 2.0) -> None:
        """Show a decision for `seconds`, then return to the idle pattern."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            self._light(colour, blink)
            self._timer = threading.Timer(seconds, self._restore)
            self._timer.daemon = True
            self._timer.start()

    def _restore(self) -> None:
        with self._lock:
            self._timer = None
            with suppress(Exception):  # closed meanwhile
                self._light(*self._idle)

    def beep(self, pattern: str) -> None:
        """admit: one short; deny: three short; assist: two long; alarm: continuous until idle."""
        if self._buzzer is None:
            return
        on, off, n = {
            "admit": (0.1, 0.1, 1),
            "deny": (0.08, 0.08, 3),
            "assist": (0.4, 0.2, 2),
            "alarm": (0.5, 0.5, None),
        }[pattern]
        self._buzzer.beep(on_time=on, off_time=off, n=n)

    def quiet(self) -> None:
        if self._buzzer is not None:
            self._buzzer.off()

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        for dev in [*self._leds.values(), self._rgb, self._buzzer]:
            if dev is not None:
                with suppress(Exception):
                    dev.close()
        self._leds.clear()
        self._rgb = self._buzzer = None
