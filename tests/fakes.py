"""Fakes for the seams that have no library-provided double: the Pi camera and serial ports."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


class FakePicamera2:
    """The small surface of picamera2 the camera source uses. Frames are YUV420 arrays padded to
    `stride`; `None` in the script simulates a capture that times out."""


    def __init__(self, script: Iterator[np.ndarray | None], stride: int = 0) -> None:
        self.script, self.stride = script, stride
        self.started = self.closed = False
        self.config: dict[str, Any] = {}
        self.waits: list[float | None] = []

    def create_video_configuration(self, **kw: Any) -> dict[str, Any]:
        return kw

    def configure(self, config: dict[str, Any]) -> None:
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
