"""Which SUBACKs of the current MQTT connection are still owed: `ready` is set once every one has come."""

from __future__ import annotations

import threading


class SubAcks:
    """A SUBACK can overtake the subscribe call's return: one that comes before its mid is noted is kept as
    early, and the two meet under the lock. No lock is held while paho sends."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self._pending: set[int] = set()
        self._early: set[int] = set()
        self._lock = threading.Lock()

    def reset(self) -> None:
        """A new connection: the last one's SUBACKs will never come."""
        self.ready.clear()
        with self._lock:
            self._pending.clear()
            self._early.clear()

    def sent(self, mid: int) -> None:
        with self._lock:
            if mid in self._early:
                self._early.discard(mid)
            else:
                self._pending.add(mid)

    def acked(self, mid: int) -> None:
        with self._lock:
            if mid in self._pending:
                self._pending.discard(mid)
            else:
                self._early.add(mid)
        self.check()

    def check(self) -> None:
        with self._lock:
            if not self._pending:
                self.ready.set()
