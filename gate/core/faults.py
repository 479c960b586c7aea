"""Failures of work that must never stop the daemon: logged once per episode, counted, retried, and alarmed."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable

from gate.core.sqlite import WrongThread

log = logging.getLogger(__name__)
Episode = Callable[[str, bool, str], object]  # (what, started, detail)


class Faults:
    """`run(what, fn)` runs `fn`; a failure is logged when an episode starts and when it ends (never once
        per attempt), counted by `what`, and swallowed, so the caller simply tries again next time. A `WrongThread`
    is not a failure of the work but a bug in the program: it is raised, never swallowed or counted.

        `on_episode` hears each episode start (`started` True, detail naming what failed and why) and, once no
        episode is left, the end (`started` False): the gate raises and clears its `fault` alarm with it. It must
        only queue (it may run on any thread that calls `run`). One `Faults` may serve several threads."""

    def __init__(self, on_episode: Episode | None = None) -> None:
        self.counts: Counter[str] = Counter()
        self._failing: dict[str, int] = {}  # what -> failures in the current episode
        self._lock = threading.Lock()
        self._on_episode = on_episode

    def run(self, what: str, fn: Callable[[], object]) -> bool:
        try:
            fn()
        except WrongThread:  # a design bug, never a fault episode: it fails loudly where it happened
            raise
        except Exception as exc:
            with self._lock:
                self.counts[what] += 1
                started = what not in self._failing
                self._failing[what] = self._failing.get(what, 0) + 1
            if started:
                log.error("%s failed: %s: %s (logged once; retrying until it recovers)", what, type(exc).__name__, exc)
                log.debug("%s failure", what, exc_info=True)
                self._tell(what, True, f"{what} failed: {type(exc).__name__}: {exc}"[:300])
            return False
        if what not in self._failing:  # the common case, without the lock
            return True
        with self._lock:
            n = self._failing.pop(what, 0)
            left = sorted(self._failing)
        if n:
            log.warning("%s recovered after %d failed attempt(s)", what, n)
            if not left:
                self._tell(what, False, f"{what} recovered after {n} failed attempt(s)")
        return True

    def _tell(self, what: str, started: bool, detail: str) -> None:
        if self._on_episode is None:
            return
        try:
            self._on_episode(what, started, detail)
        except Exception:  # the alarm is a report; the work it reports on goes on
            log.exception("faults: reporting the episode of %s failed", what)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)
