"""Space that safety always has: a preallocated file in the state directory, given back when the disk fills."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")
NAME = ".reserve"
DEFAULT_BYTES = 4 << 20
RETAKE_SECONDS = 5.0  # how often a released reserve looks for room to be taken again
FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def disk_full(exc: BaseException | None) -> bool:
    """ENOSPC/EDQUOT, or SQLite's SQLITE_FULL, here or in what caused it."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in FULL_ERRNOS:
            return True
        if isinstance(exc, sqlite3.OperationalError) and (
            getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc)
        ):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


class Reserve:
    """`size` bytes held in `<directory>/.reserve`. A write that fails because the disk is full (`write`) gives
    the space back and is tried once more, so the writes that carry safety and control (the requested mode,
    command nonces, anti-passback, passages, alarms, the denied counter, a revocation, the outbox's deletes)
    go on succeeding on a full disk. Once at least twice its size is free again, the space is taken back.
    Any thread may call it."""

    def __init__(self, directory: Path, size: int = DEFAULT_BYTES) -> None:
        self.path, self.size = directory / NAME, size
        self._lock = threading.Lock()
        self._next_try = 0.0
        self.released = 0  # times the reserve was given back (a count for telemetry and tests)
        self.take()

    @property
    def held(self) -> bool:
        try:
            return self.size > 0 and self.path.stat().st_blocks * 512 >= self.size
        except OSError:
            return False

    @property
    def given_back(self) -> bool:
        """Released and not yet taken again: the disk was full, and what is left is for safety writes."""
        return self.size > 0 and not self.path.exists()

    def take(self) -> bool:
        """Allocate the reserve if it is not held and the disk has twice its size free; True if held after."""
        with self._lock:
            if self.size <= 0 or self.held:
                return self.size > 0
            st = os.statvfs(self.path.parent)
            if st.f_bavail * st.f_frsize < 2 * self.size:
                return False
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600)
                try:
                    os.posix_fallocate(fd, 0, self.size)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                self.path.unlink(missing_ok=True)
                log.warning("reserve: cannot take %d bytes in %s: %s", self.size, self.path.parent, exc)
                return False
            log.info("reserve: %d bytes held in %s for safety writes on a full disk", self.size, self.path)
            return True

    def release(self) -> bool:
        """Give the space back; True if there was any to give."""
        with self._lock:
            if not self.path.exists():
                return False
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.released += 1
            self._next_try = time.monotonic() + RETAKE_SECONDS
        log.critical("reserve: the disk is full; %d reserved bytes given back for safety writes", self.size)
        return True

    def write(self, fn: Callable[[], T]) -> T:
        """Run a write; if it fails because the disk is full, release the reserve and run it once more."""
        try:
            return fn()
        except Exception as exc:
            if not disk_full(exc) or not self.release():
                raise
        return fn()

    def retake(self, now: float | None = None) -> None:
        """At most every RETAKE_SECONDS while released (cheap to call each turn): take the space back."""
        now = time.monotonic() if now is None else now
        if now < self._next_try or self.size <= 0:
            return
        self._next_try = now + RETAKE_SECONDS
        if not self.path.exists():
            self.take()


_reserves: dict[Path, Reserve] = {}
_registry = threading.Lock()


def install(directory: Path, size: int = DEFAULT_BYTES) -> Reserve:
    """The state directory's one reserve, made (and taken) once at start-up."""
    key = directory.resolve()
    with _registry:
        have = _reserves.get(key)
        if have is None or have.size != size:
            have = _reserves[key] = Reserve(directory, size)
        else:
            have.take()
        return have


_directories: dict[Path, Path] = {}  # a writer's path -> its directory, resolved once (the lane asks each frame)


def of(path: Path) -> Reserve | None:
    """The reserve of the directory holding `path`, if one was installed: every writer of a state directory
    draws on the same space without being handed it through the wiring."""
    key = _directories.get(path)
    if key is None:  # resolve() walks the path with a syscall per part: once per path, not once per frame
        key = _directories[path] = path.parent.resolve()
    with _registry:
        return _reserves.get(key)


def write(path: Path, fn: Callable[[], T]) -> T:
    """`fn` under the reserve of `path`'s directory, or plainly when it has none."""
    reserve = of(path)
    return fn() if reserve is None else reserve.write(fn)
