"""Thread scheduling: the lane comes first; delivery and sync are background work."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)
BACKGROUND_NICE = 10
_lowered: set[int] = set()
ACTIVE_SECONDS = 2.0  # a decision this recent means passengers are passing
STEPS, PAUSE = 20, 0.005  # meanwhile, background threads rest 5 ms after every 20 steps


def background() -> None:
    """Lower the calling thread's CPU priority (Linux schedules threads on their own nice value), so that
    draining a backlog or applying a snapshot takes the CPU the lane leaves, not the lane's. Idempotent."""
    tid = threading.get_native_id()
    if tid in _lowered:
        return
    _lowered.add(tid)
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, max(current, BACKGROUND_NICE)))
    except (OSError, AttributeError) as exc:  # not Linux, or a sandbox that forbids it: run as we are
        log.debug("cannot lower the priority of thread %s: %s", threading.current_thread().name, exc)


SWITCH_INTERVAL = 0.001  # seconds a thread may hold the GIL while another waits (CPython's default: 5 ms)


def lane_switching() -> None:
    """Process-wide: the lane takes and gives up the GIL many times a decision (every sqlite, zxing, fsync and
    GPIO call releases it). At CPython's 5 ms switch interval each hand-back can wait 5 ms behind a busy paho
    or sync thread, which adds up to tens of milliseconds; at 1 ms the wait is short and the cost is a few more
    switches for background threads."""
    import sys

    sys.setswitchinterval(SWITCH_INTERVAL)


def freeze_heap() -> None:
    """Once everything is loaded: move every object alive now out of the cyclic collector's reach. A full
    collection walks every tracked object while holding the GIL; with the daemon's modules, keys and config
    in that walk it took 40-65 ms, long enough to hold a passenger's first frame, whenever a snapshot's chunks
    (thousands of lists each) triggered one. Frozen, it walks only what was made since."""
    import gc

    gc.collect()
    gc.freeze()


class LaneFirst:
    """The lane says when it is deciding. Background threads wait at their next step while it decides (at
    most `max_wait`), and while passengers are passing they rest now and then, so that the next passenger's
    first frame finds the CPU and the GIL free: a backlog drains more slowly at a busy lane, not the lane."""

    def __init__(self) -> None:
        self._idle = threading.Event()
        self._idle.set()
        self._last = -1e9
        self._steps = 0

    @contextmanager
    def deciding(self) -> Iterator[None]:
        self._idle.clear()
        try:
            yield
        finally:
            self._last = time.monotonic()
            self._idle.set()

    def yield_to_lane(self, max_wait: float = 0.05) -> None:
        """Background threads, between small steps: at once when the lane is quiet."""
        self._idle.wait(max_wait)
        if time.monotonic() - self._last < ACTIVE_SECONDS:
            self._steps += 1
            if self._steps % STEPS == 0:
                time.sleep(PAUSE)
