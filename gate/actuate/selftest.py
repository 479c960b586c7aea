"""`gate selftest`: open every configured device, cycle each output, report each input."""

from __future__ import annotations

import time

from gate.actuate.pins import make_pin_factory
from gate.actuator import Actuator
from gate.config.model import Config
from gate.core.errors import DeviceError


def selftest(cfg: Config, step: float = 0.3) -> int:
    try:
        act = Actuator(cfg.gpio, make_pin_factory(cfg.gpio.pin_factory))  # DeviceError if any device fails
    except DeviceError as exc:
        print(f"FAIL  {exc}")
        return 1
    with act:
        print(f"ok    relay        pin {cfg.gpio.relay.pin}: pulsing {step}s")
        act.relay.blink(on_time=step, off_time=0, n=1, background=False)
        for colour in ("green", "amber", "red"):
            print(f"ok    indicator    {colour}")
            act.indicator.idle(colour)
            time.sleep(step)
        act.indicator.idle("off")
        if cfg.gpio.buzzer is not None:
            print(f"ok    buzzer       pin {cfg.gpio.buzzer.pin}: beep")
            act.indicator.beep("admit")
            time.sleep(step)
        for name in ("passage", "exit_button", "fire"):
            dev, sect = getattr(act, name), getattr(cfg.gpio, name)
            if dev is None:
                print(f"-     {name:<12} not configured")
            else:
                print(f"ok    {name:<12} pin {sect.pin}: {'ACTIVE' if dev.is_active else 'inactive'}")
        print(f"ok    relay        safe state: {'released' if act.relay.value else 'locked'} after test")
    return 0
