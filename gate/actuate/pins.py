"""gpiozero's pin factories by name, and the lane's inputs (imported only by the GPIO adapter)."""

from __future__ import annotations

from typing import Any

from gate.config.model import InputSection
from gate.core.errors import DeviceError

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


def button(cfg: InputSection, factory: Any) -> Any:
    """An input as a plain DigitalInputDevice, not a Button: a Button runs a hold thread of its own that close()
    must wait out (up to its hold time while the input is active). The lane machine times `held_open` itself."""
    from gpiozero import DigitalInputDevice

    return DigitalInputDevice(cfg.pin, pull_up=not cfg.active_high, bounce_time=None, pin_factory=factory)
