"""A bounded FIFO between threads: ordinary items are refused (counted, logged) when full; essential ones never."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


class Mailbox(Generic[T]):
    """`put` queues an item and returns at once. When `limit` ordinary items wait, the next ordinary one is
    refused: counted in `refused` and logged once per episode. An essential item (a mode change, the fire
    input, a passage outcome: what keeps the lane safe or a record whole) is always taken; those are bounded
    by what causes them, not by this queue."""

    def __init__(self, name: str, limit: int) -> None:
        self.name, self.limit = name, limit
        self.refused = 0
        self._items: deque[tuple[bool, T]] = deque()
        self._ordinary = 0
        self._cond = threading.Condition(threading.Lock())
        self._refusing = False

    def put(self, item: T, essential: bool = False) -> bool:
        with self._cond:
            if not essential and self._ordinary >= self.limit:
                self.refused += 1
                first, self._refusing = not self._refusing, True
            else:
                self._items.append((essential, item))
                self._ordinary += not essential
                self._cond.notify()
                return True
        if first:
            log.error(
                "%s is full (%d waiting): refusing %s until it drains", self.name, self.limit, type(item).__name__
            )
        return False

    def get(self, timeout: float | None = None) -> T:
        """The oldest item; queue.Empty when none came within `timeout` (None: wait for ever)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._items:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise queue.Empty
                self._cond.wait(left)
            essential, item = self._items.popleft()
            self._ordinary -= not essential
            drained = self._refusing and self._ordinary < self.limit // 2
            if drained:
                self._refusing = False
        if drained:  # logged outside the lock: no I/O while another thread may wait for it
            log.warning("%s drained: taking requests again (%d refused so far)", self.name, self.refused)
        return item

    def get_nowait(self) -> T:
        return self.get(0)

    def __len__(self) -> int:
        return len(self._items)
