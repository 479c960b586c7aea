"""Serial QR-module source (pyserial): terminated lines only, clean reconnect after unplug."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from gate.config.model import SerialSection
from gate.contracts import CODE_PREFIX
from gate.scanner import Observation

log = logging.getLogger(__name__)
CODE_START = CODE_PREFIX.encode()
MAX_BACKOFF = 2.0  # a re-plugged module is back within about this long
PARTIAL_LINE_SECONDS = 1.0  # bytes with no terminator for this long are a broken read, not a code


def open_port(cfg: SerialSection) -> Any:
    import serial

    return serial.serial_for_url(cfg.port, baudrate=cfg.baud, timeout=0.05)


def _unescape(term: str) -> bytes:
    return term.encode("utf-8").decode("unicode_escape").encode("latin-1")


class SerialScanner:
    """Emits one observation per complete line. Never emits a partial or over-long line."""

    name = "serial"

    def __init__(
        self,
        cfg: SerialSection,
        opener: Callable[[SerialSection], Any] = open_port,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self._opener = opener
        self._mono = mono
        self._term = _unescape(cfg.terminator)
        self._port: Any = None
        self._buf = bytearray()
        self._last_byte = 0.0
        self._discarding = False  # inside a line already dropped (over-long, or cut by a gap): skip to its end
        self._backoff = 0.0
        self._retry_at = 0.0
        self.reconnects = 0
        self.dropped_lines = 0

    def _ensure_open(self) -> bool:
        if self._port is not None:
            return True
        if self._mono() < self._retry_at:
            return False
        try:
            self._port = self._opener(self.cfg)
        except Exception as exc:
            self._backoff = min(max(self._backoff * 2, 0.25), MAX_BACKOFF)
            self._retry_at = self._mono() + self._backoff
            log.warning("serial %s: cannot open (%s); retry in %.1fs", self.cfg.port, exc, self._backoff)
            return False
        if self._backoff:
            self.reconnects += 1
            log.info("serial %s: reconnected", self.cfg.port)
        self._backoff = 0.0
        self._buf.clear()
        return True

    def _lost(self, exc: Exception) -> None:
        log.error("serial %s: lost the port (%s); reconnecting", self.cfg.port, exc)
        with contextlib.suppress(Exception):
            self._port.close()
        self._port = None
        self._backoff = 0.5
        self._retry_at = self._mono() + self._backoff
        self._buf.clear()

    def _take_line(self) -> bytes | None:
        idx = self._buf.find(self._term)
        if idx < 0:
            if len(self._buf) > self.cfg.max_line_bytes:
                self._buf.clear()
                if not self._discarding:
                    self.dropped_lines += 1
                    log.warning("serial: dropped an over-long line")
                self._discarding = True
            return None
        line = bytes(self._buf[:idx]).strip(b"\r\n")
        del self._buf[: idx + len(self._term)]
        if self._discarding:  # the rest of a line already counted as dropped, unless a whole code came instead
            self._discarding = False
            if not line.startswith(CODE_START):
                return None
        if len(line) > self.cfg.max_line_bytes:
            self.dropped_lines += 1
            log.warning("serial: dropped an over-long line")
            return None
        return line or None

    def read(self, timeout: float) -> Observation | None:
        deadline = self._mono() + timeout
        while True:
            line = self._take_line()
            if line is not None:
                return Observation((line,))
            if self._mono() >= deadline:
                return None
            if not self._ensure_open():
                time.sleep(min(0.05, timeout))
                continue
            try:
                chunk = self._port.read(max(1, self._port.in_waiting))
            except Exception as exc:  # SerialException, OSError on unplug
                self._lost(exc)
                continue
            now = self._mono()
            if self._buf and now - self._last_byte > PARTIAL_LINE_SECONDS:
                self._drop_cut_line()  # its tail, when it comes, is dropped too: never decide half a code
            if chunk:
                self._buf += chunk
                self._last_byte = now

    def _drop_cut_line(self) -> None:
        if not self._discarding:
            self.dropped_lines += 1
            log.warning("serial: dropped a line cut by a pause of over %.1fs", PARTIAL_LINE_SECONDS)
        self._buf.clear()
        self._discarding = True

    def close(self) -> None:
        if self._port is not None:
            self._port.close()
            self._port = None
