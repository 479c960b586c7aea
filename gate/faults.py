"""Failures of work that must never stop the daemon: logged once per episode, counted, retried."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

log = logging.getLogger(__name__)


class Faults:
    """`run(what, fn)` runs `fn`; a failure is logged when an episode starts and when it ends (never once
    per attempt), counted by `what`, and swallowed, so the caller simply tries again next time."""

    def __init__(self, on_episode: Callable[[str, bool, str], object] | None = None) -> None:
        self.counts: Counter[str] = Counter()
        self._failing: dict[str, int] = {}  # what -> failures in the current episode
        self.on_episode = on_episode  # (what, started, detail): raise or clear an alarm, where one can be recorded

    def run(self, what: str, fn: Callable[[], object]) -> bool:
        try:
            fn()
        except Exception as exc:
            self.counts[what] += 1
            if what not in self._failing:
                log.error("%s failed: %s: %s (logged once; retrying until it recovers)", what, type(exc).__name__, exc)
                log.debug("%s failure", what, exc_info=True)
            self._failing[what] = self._failing.get(what, 0) + 1
            return False
        n = self._failing.pop(what, 0)
        if n:
            log.warning("%s recovered after %d failed attempt(s)", what, n)
        return True

    @property
    def failing(self) -> list[str]:
        return sorted(self._failing)

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)
