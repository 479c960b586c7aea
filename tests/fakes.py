"""Helpers for tests that run a real `gate run` process fed by a serial QR module on a pty."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from gate.decide.codes import Status, issue
from gate.testing import SerialModule


def daemon_config(tmp_path: Path, keys, broker: Any, port: str, extra: str = "", passback: int = 0) -> Path:
    """A `gate run` config: serial source on `port`, mock pins, the test broker; `extra` is appended TOML."""
    cfg = tmp_path / "gate.toml"
    cfg.write_text(f"""
[gate]
id = "lane-k"
state_dir = "{tmp_path / "state"}"
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
passback_seconds = {passback}
[gpio]
pin_factory = "mock"
[gpio.relay]
pin = 17
pulse_seconds = 0.05
[mqtt]
host = "{broker.host}"
port = {broker.port}
keepalive = 5
{extra}
""")
    return cfg


class Feeder:
    """Types a fresh code into a serial module's pty every 20 ms while `on` is set."""

    def __init__(self, keys) -> None:
        self.module = SerialModule()
        self.port = self.module.port
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
                self.module.send(next(self._codes))
                self.sent += 1
                time.sleep(0.02)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.module.close()


def start(cfg: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "GPIOZERO_PIN_FACTORY": "mock", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "gate", "run", "--config", str(cfg)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("ab"),
    )


def wait_log(log: Path, text: str, since: int = 0, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace")[since:]:
            return True
        time.sleep(0.05)
    return False


def started_gate(cfg: Any) -> Any:
    """A whole gate built in this process on mock pins and an empty scripted camera, started on this thread, and
    connected and subscribed to its broker (the gate of the sync, versions and edge tests)."""
    from gpiozero.pins.mock import MockFactory

    from gate.core.clock import SystemClock
    from gate.lane.wiring import build
    from gate.scan.decoders import make_decoder
    from gate.scanner import DecodingSource
    from gate.testing import ScriptedFrames

    source = DecodingSource(ScriptedFrames([]), make_decoder("zxing"))
    g = build(cfg, source=source, pin_factory=MockFactory(), clock=SystemClock("assume_synced")).start()
    assert g.link.connected.wait(10) and g.link.subscribed.wait(10)
    return g


class ListOutbox:
    """An outbox that keeps its rows in a list, for tests of the recorder's logic alone (no SQLite, no fsync)."""

    def __init__(self, path: Path = Path("/nonexistent/outbox.db")) -> None:
        self.path = path
        self.rows: list[tuple[str, str, bytes]] = []

    def append(self, event_id: str, topic: str, payload: bytes, reserved: bool = False) -> None:
        self.rows.append((event_id, topic, payload))
