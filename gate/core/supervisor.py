"""Long-lived threads in one place: started by name, restarted with backoff when they die, stopped in reverse."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)
Target = Callable[[threading.Event], None]
OnRestart = Callable[[str, BaseException], object]
OnRecovered = Callable[[str], object]
FIRST_BACKOFF, MAX_BACKOFF = 1.0, 30.0  # seconds before a restart: doubling from the first up to the cap
HEALTHY_AFTER = 60.0  # a target that ran this long before dying starts the backoff again from the first


@dataclass
class _Child:
    name: str
    target: Target
    stop: threading.Event = field(default_factory=threading.Event)
    wake: Callable[[], object] | None = None  # after `stop` is set: interrupts a target blocked elsewhere
    thread: threading.Thread | None = None
    restarts: int = 0
    healthy: threading.Timer | None = None  # after a restart: reports the recovery once the target has lasted


class Supervisor:
    """`spawn(name, target)` runs `target(stop)` on a daemon thread named `name`. A target that returns is done;
    one that raises is logged once with its traceback, reported to `on_restart(name, exc)` (the gate raises its
    `thread_restarted` alarm; the callback must only queue) and started again after a backoff of 1 s doubling
    to 30 s. A restarted target that then runs HEALTHY_AFTER seconds is reported to `on_recovered(name)` (the
    alarm is cleared). `stop(timeout)` sets every stop event and joins the threads in reverse start order; safe
    to call twice."""

    def __init__(self, on_restart: OnRestart = lambda name, exc: None, on_recovered: OnRecovered | None = None) -> None:
        self._on_restart = on_restart
        self._on_recovered = on_recovered
        self._children: list[_Child] = []
        self._stopping = threading.Event()

    def spawn(self, name: str, target: Target, wake: Callable[[], object] | None = None) -> None:
        """Start `target(stop)` on a thread named `name`; `wake`, if given, is called on stop after the event
        is set (a target waiting on its own queue)."""
        if self._stopping.is_set():
            raise RuntimeError(f"supervisor: cannot start {name!r}: stopping")
        child = _Child(name, target, wake=wake)
        child.thread = threading.Thread(target=self._keep, args=(child,), name=name, daemon=True)
        self._children.append(child)
        child.thread.start()

    def _keep(self, child: _Child) -> None:
        backoff = FIRST_BACKOFF
        while not child.stop.is_set():
            began = time.monotonic()
            if child.restarts and self._on_recovered is not None:
                self._watch_recovery(child)
            try:
                child.target(child.stop)
                return
            except Exception as exc:
                if child.stop.is_set():  # dying while being stopped is no restart
                    log.warning("thread %s ended with %s: %s while stopping", child.name, type(exc).__name__, exc)
                    return
                if time.monotonic() - began > HEALTHY_AFTER:
                    backoff = FIRST_BACKOFF
                if child.healthy is not None:
                    child.healthy.cancel()
                child.restarts += 1
                log.exception("thread %s died; restarting it in %.0f s", child.name, backoff)
                self._report(child.name, exc)
            if child.stop.wait(backoff):
                return
            backoff = min(MAX_BACKOFF, backoff * 2)

    def _watch_recovery(self, child: _Child) -> None:
        recovered = self._on_recovered
        assert recovered is not None

        def lasted() -> None:
            if not child.stop.is_set():
                log.warning("thread %s has run %.0f s since its restart", child.name, HEALTHY_AFTER)
                recovered(child.name)

        child.healthy = threading.Timer(HEALTHY_AFTER, lasted)
        child.healthy.name = f"{child.name}-recovery"
        child.healthy.daemon = True
        child.healthy.start()

    def _report(self, name: str, exc: BaseException) -> None:
        try:
            self._on_restart(name, exc)
        except Exception:  # the alarm is a report; the restart goes on
            log.exception("supervisor: reporting the restart of %s failed", name)

    def restarts(self) -> dict[str, int]:
        """Restarts so far, by thread name."""
        return {c.name: c.restarts for c in self._children}

    def alive(self) -> list[str]:
        return [c.name for c in self._children if c.thread is not None and c.thread.is_alive()]

    def stop(self, timeout: float = 5.0) -> None:
        """Stop and join every thread, the last started first, each within `timeout` seconds."""
        self._stopping.set()
        for child in reversed(self._children):
            child.stop.set()
            if child.healthy is not None:
                child.healthy.cancel()
                child.healthy.join(timeout)
            if child.wake is not None:
                try:
                    child.wake()
                except Exception:
                    log.exception("supervisor: waking %s to stop failed", child.name)
            thread = child.thread
            if thread is None or thread is threading.current_thread():
                continue
            thread.join(timeout)
            if thread.is_alive():
                log.error("thread %s did not stop within %.1f s; leaving it (a daemon thread)", child.name, timeout)
