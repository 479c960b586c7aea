"""Fakes for the seams that have no library-provided double: the Pi camera and serial ports."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gate.codes import Status, issue


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


# -- a real `gate run` process fed by a fake serial QR module on a pty ----------------------------------

def daemon_config(tmp_path: Path, keys, broker: Any, port: str) -> Path:
    cfg = tmp_path / "gate.toml"
    cfg.write_text(f"""
[gate]
id = "lane-k"
state_dir = "{tmp_path / 'state'}"
[venue]
id = "rail-test"
[scanner]
source = "serial"
[scanner.serial]
port = "{port}"
[trust]
keys = ["{keys.public_path}"]
[clock]
sync_source = "assume_synced"
[policy]
passback_seconds = 0
[gpio]
pin_factory = "mock"
[gpio.relay]
pin = 17
pulse_seconds = 0.05
[mqtt]
host = "{broker.host}"
port = {broker.port}
keepalive = 5
""")
    return cfg


class Feeder:
    """Types a fresh code into the serial module's pty every 20 ms while `on` is set."""

    def __init__(self, keys) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)
        self.on = threading.Event()
        self.stop = threading.Event()
        self.sent = 0
        now = int(time.time())
        self._codes = (issue(keys.private, f"tok-k{i:06d}", Status.RED, now, 3600) for i in range(10**6))
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            if self.on.wait(0.1):
                os.write(self.master, next(self._codes).encode() + b"\r")
                self.sent += 1
                time.sleep(0.02)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        os.close(self.master)
        os.close(self.slave)


def start(cfg: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "gate", "run", "--config", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=log.open("ab"))  # fmt: skip


def wait_log(log: Path, text: str, since: int = 0, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace")[since:]:
            return True
        time.sleep(0.05)
    return False


