"""Doubles for the seams that have no library-provided one, shipped with gate the way gpiozero ships
MockFactory: scripted camera frames, a fake Picamera2, a serial QR module on a pty, and a hand-set clock.
Tests and the demo use them; so can anyone who builds on gate."""

from __future__ import annotations

import contextlib
import os
import threading
import time
import tty
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from gate.core.clock import ClockReading
from gate.scan.decoders import Frame


class FixedClock:
    """A clock set by hand: for tests, `gate verify` and the demo. `read()` gives the gate's clock reading;
    calling it gives the monotonic time alone, for the parts that take a `() -> float` (the actuator, the
    scanner, the GPS receiver). `advance` moves both."""

    def __init__(self, wall: float = 0.0, synced: bool = True, mono: float = 1000.0) -> None:
        self.wall = wall
        self.synced = synced
        self.mono = mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    def read(self) -> ClockReading:
        return ClockReading(self.wall, self.mono, self.synced)

    def __call__(self) -> float:
        return self.mono


class ScriptedFrames:
    """Frames handed in ahead of time, each captured once, in order: the one scripted camera of the tests and
    the demo. With `fps`, captures are paced like a camera's; `done` is set once the script has run out."""

    name = "scripted"

    def __init__(self, frames: Iterable[Any] = (), fps: float | None = None) -> None:
        self._frames: Iterator[Any] = iter(frames)
        self._period = 1.0 / fps if fps else 0.0
        self._next_at = time.monotonic()
        self.exhausted = False
        self.done = threading.Event()

    def feed(self, frames: Iterable[Any]) -> None:
        """Hand in the script (the demo draws its own once the gate it shows exists)."""
        self._frames = iter(frames)

    def _take(self, item: Any) -> Frame | None:
        """What one scripted item puts before the camera (subclasses keep what else it carries)."""
        return item  # type: ignore[no-any-return]

    def capture(self, timeout: float) -> Frame | None:
        if self.exhausted:
            time.sleep(min(timeout, 0.05))
            return None
        if self._period:
            delay = self._next_at - time.monotonic()
            if delay > 0:
                time.sleep(min(delay, timeout))
            self._next_at = max(self._next_at + self._period, time.monotonic())
        try:
            return self._take(next(self._frames))
        except StopIteration:
            self.close()
            return None

    def close(self) -> None:
        self.exhausted = True
        self.done.set()


_COMMON = {"ExposureTime": (26, 1_000_000, 20000), "ExposureValue": (-8.0, 8.0, 0.0), "AnalogueGain": (1.0, 16.0, None)}
CAMERA_MODELS: dict[str, dict[str, Any]] = {  # what picamera2 reports for each Raspberry Pi camera module
    "imx708": {  # Camera Module 3: autofocus
        "controls": {
            **_COMMON,
            "AfMode": (0, 2, 0),
            "AfRange": (0, 2, 0),
            "LensPosition": (0.0, 15.0, 1.0),
            "ScalerCrop": ((0, 0, 64, 64), (0, 0, 4608, 2592), (0, 0, 4608, 2592)),
        },
        "properties": {"Model": "imx708", "ScalerCropMaximum": (0, 0, 4608, 2592)},
    },
    "imx219": {  # Camera Module 2: fixed focus
        "controls": {**_COMMON, "ScalerCrop": ((0, 0, 64, 64), (0, 0, 3280, 2464), (0, 0, 3280, 2464))},
        "properties": {"Model": "imx219", "ScalerCropMaximum": (0, 0, 3280, 2464)},
    },
    "imx477": {  # HQ camera: a C/CS lens focused by hand
        "controls": {**_COMMON, "ScalerCrop": ((0, 0, 64, 64), (0, 0, 4056, 3040), (0, 0, 4056, 3040))},
        "properties": {"Model": "imx477", "ScalerCropMaximum": (0, 0, 4056, 3040)},
    },
}


class FakePicamera2:
    """The small surface of picamera2 the camera source uses, as a given camera `model` reports it. Frames are
    YUV420 arrays padded to `stride`; `None` in the script simulates a capture that times out. `config` keeps
    the configuration and `controls_set` every later set_controls() call."""

    def __init__(self, script: Iterator[np.ndarray | None], stride: int = 0, model: str = "imx708") -> None:
        self.script, self.stride = script, stride
        self.started = self.closed = False
        self.config: dict[str, Any] = {}
        self.waits: list[float | None] = []
        self.camera_controls: dict[str, Any] = dict(CAMERA_MODELS[model]["controls"])
        self.camera_properties: dict[str, Any] = dict(CAMERA_MODELS[model]["properties"])
        self.controls_set: list[dict[str, Any]] = []

    def set_controls(self, controls: dict[str, Any]) -> None:
        unknown = set(controls) - set(self.camera_controls)
        if unknown:  # libcamera refuses a control the camera does not have
            raise RuntimeError(f"Control {sorted(unknown)[0]} is not advertised by libcamera")
        self.controls_set.append(dict(controls))

    def create_video_configuration(self, **kw: Any) -> dict[str, Any]:
        return kw

    def configure(self, config: dict[str, Any]) -> None:
        unknown = set(config.get("controls", {})) - set(self.camera_controls) - {"FrameRate"}  # picamera2's own
        if unknown:
            raise RuntimeError(f"Control {sorted(unknown)[0]} is not advertised by libcamera")
        self.config = config

    def start(self) -> None:
        self.started = True

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        self.closed = True

    def capture_array(self, name: str = "main", wait: float | None = None) -> np.ndarray:
        assert name == "lores" and self.started
        self.waits.append(wait)
        y = next(self.script, None)
        if y is None:
            raise TimeoutError("frame wait timed out")
        h, w = y.shape
        stride = max(self.stride, w)
        out = np.full((h * 3 // 2, stride), 77, dtype=np.uint8)  # padding and chroma: not the image
        out[:h, :w] = y
        return out


class FlakyPort:
    """Wraps a pyserial loop:// port; `unplug()` makes the next read raise like a pulled USB cable."""

    def __init__(self, port: Any) -> None:
        self.port = port
        self.unplugged = False

    def unplug(self) -> None:
        self.unplugged = True

    @property
    def in_waiting(self) -> int:
        return int(self.port.in_waiting)

    def read(self, n: int) -> bytes:
        import serial

        if self.unplugged:
            raise serial.SerialException("device reports readiness to read but returned no data")
        return bytes(self.port.read(n))

    def write(self, data: bytes) -> None:
        self.port.write(data)

    def close(self) -> None:
        self.port.close()


class SerialModule:
    """A serial QR module on a pseudo-terminal: `port` is the device path to configure, and each `send`
    arrives at the gate as the module would type it (the code, then its terminator)."""

    def __init__(self, terminator: bytes = b"\r") -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)
        self.terminator = terminator

    def send(self, text: str | bytes, terminated: bool = True) -> None:
        data = text.encode() if isinstance(text, str) else text
        os.write(self.master, data + (self.terminator if terminated else b""))

    def close(self) -> None:
        """Safe to call twice."""
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.master = self.slave = -1
