"""systemd's notify protocol over $NOTIFY_SOCKET (stdlib only): READY, WATCHDOG, RELOADING, STOPPING."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Notifier:
    """A no-op outside systemd. Watchdog pings are rate-limited to a third of WatchdogSec."""

    def __init__(self, env: Mapping[str, str] | None = None, mono: object = time.monotonic) -> None:
        env = os.environ if env is None else env
        self._addr = env.get("NOTIFY_SOCKET") or None
        if self._addr and self._addr.startswith("@"):
            self._addr = "\0" + self._addr[1:]  # abstract socket namespace
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 1e6 if usec.isdigit() and mine else None
        self._mono = mono if callable(mono) else time.monotonic
        self._last_ping = float("-inf")

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def notify(self, *lines: str) -> bool:
        if self._addr is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.settimeout(1.0)
                s.sendto("\n".join(lines).encode(), self._addr)
            return True
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self._addr.lstrip("\0"), exc)
            return False

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def heartbeat(self) -> None:
        """Called by the scan loop each time it makes progress; a hung loop stops the pings."""
        if self.watchdog_interval is None:
            return
        now = self._mono()
        if now - self._last_ping >= self.watchdog_interval / 3:
            self._last_ping = now
            self.notify("WATCHDOG=1")
