"""Wall and monotonic time, and whether the wall clock can be trusted (a Pi has no RTC)."""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# Before this instant the wall clock is certainly wrong (a Pi boots at 1970 or its last shutdown).
PLAUSIBLE_AFTER = 1_767_225_600  # 2026-01-01T00:00:00Z
TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")
_STA_UNSYNC = 0x0040
_TIME_ERROR = 5


@dataclass(frozen=True)
class ClockReading:
    wall: float
    mono: float
    synced: bool

    @property
    def usable(self) -> bool:
        return self.synced and self.wall >= PLAUSIBLE_AFTER


class Clock(Protocol):
    def read(self) -> ClockReading: ...


class _Timex(ctypes.Structure):
    _fields_ = [
        ("modes", ctypes.c_uint),
        ("offset_freq_maxerr_esterr", ctypes.c_long * 4),
        ("status", ctypes.c_int),
        ("rest", ctypes.c_long * 40),
    ]


def kernel_says_synced() -> bool | None:
    """adjtimex(2): None if it cannot be asked, else whether the kernel's clock is disciplined."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
        tx = _Timex()
        state = libc.adjtimex(ctypes.byref(tx))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != _TIME_ERROR and not tx.status & _STA_UNSYNC


class SystemClock:
    """Reads the system clocks; the sync state is re-checked at most every `recheck` seconds."""

    def __init__(
        self, source: str = "auto", recheck: float = 10.0, gps_offset: Callable[[], float | None] | None = None
    ) -> None:
        # source "gps": a vehicle without network time. The receiver's UTC minus this clock, or None without a
        # recent valid time; wall time is corrected by it (the service may not set the system clock).
        self.gps_offset: Callable[[], float | None] = gps_offset or (lambda: None)
        self._source = source
        self._recheck = recheck
        self._checked_at = float("-inf")
        self._synced = False

    def _probe(self) -> bool:
        if self._source == "assume_synced":
            return True
        if self._source == "gps":
            return self.gps_offset() is not None
        if self._source in ("auto", "timesyncd") and TIMESYNCD_FLAG.exists():
            return True
        if self._source in ("auto", "adjtimex"):
            return bool(kernel_says_synced())
        return False

    def read(self) -> ClockReading:
        mono = time.monotonic()
        if mono - self._checked_at >= self._recheck:
            self._synced = self._probe()
            self._checked_at = mono
        offset = (self.gps_offset() or 0.0) if self._source == "gps" else 0.0
        return ClockReading(wall=time.time() + offset, mono=mono, synced=self._synced)


def unsynced_why(source: str, now: float | None = None) -> str | None:
    """Why decisions will carry clock_unsynced, in one line naming what was asked (None: the clock is usable)."""
    wall = time.time() if now is None else now
    if wall < PLAUSIBLE_AFTER:
        return f"the clock reads {time.strftime('%Y-%m-%d', time.gmtime(wall))}, before 2026: it was never set"
    if source in ("assume_synced", "gps"):  # gps: the receiver's own message says when it has no fix
        return None
    asked = []
    if source in ("auto", "timesyncd"):
        if TIMESYNCD_FLAG.exists():
            return None
        asked.append(f"{TIMESYNCD_FLAG} is absent (systemd-timesyncd has not synchronised)")
    if source in ("auto", "adjtimex"):
        kernel = kernel_says_synced()
        if kernel:
            return None
        asked.append(
            "adjtimex cannot be asked" if kernel is None else "adjtimex says the kernel clock is unsynchronised"
        )
    return f'clock.sync_source = "{source}": ' + " and ".join(asked)
