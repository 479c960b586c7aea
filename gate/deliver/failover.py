"""Which broker of a cluster to try next, and how long to wait first (backoff with jitter)."""

from __future__ import annotations

import logging
import random
import threading
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

log = logging.getLogger(__name__)

MIN_DELAY = 1.0  # seconds before the next attempt in the first round of hosts
MAX_DELAY = 30.0  # the most a round of failures backs off to


@dataclass(frozen=True)
class Attempt:
    """The next broker to try and the wait before trying it."""

    host: str
    port: int
    delay: float


class BrokerRotation:
    """A gate's `[mqtt] hosts`, tried in turn: each lost connection or failed attempt moves to the next host.
    The wait doubles with each full round of failures, up to MAX_DELAY, and is drawn from [half, all] of it so
    that a fleet that lost the same node does not knock on the next one in step. A CONNACK resets it."""

    def __init__(self, endpoints: tuple[tuple[str, int], ...], rng: random.Random | None = None) -> None:
        if not endpoints:
            raise ValueError("no broker to connect to")
        self.endpoints = endpoints
        self._rng = rng or random.Random()
        self._lock = threading.Lock()  # paho's thread writes; status readers read
        self._index = 0
        self._failures = 0  # consecutive, since the last successful connect
        self._attempted = True  # an attempt at the current host was made since it was aimed at
        self.failovers = 0  # moves to another host since start

    @property
    def several(self) -> bool:
        return len(self.endpoints) > 1

    @property
    def current(self) -> tuple[str, int]:
        with self._lock:
            return self.endpoints[self._index]

    @property
    def label(self) -> str:
        host, port = self.current
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def connected(self) -> None:
        with self._lock:
            self._failures = 0

    def failed(self) -> Attempt:
        """The connection to the current host was lost or refused: the next host, after a jittered wait."""
        with self._lock:
            self._failures += 1
            rounds = min(10, (self._failures - 1) // len(self.endpoints))
            self._index = (self._index + 1) % len(self.endpoints)
            if self.several:
                self.failovers += 1
            host, port = self.endpoints[self._index]
        base = min(MAX_DELAY, MIN_DELAY * 2**rounds)
        return Attempt(host, port, round(base * self._rng.uniform(0.5, 1.0), 3))

    def attempting(self, client: mqtt.Client, userdata: Any) -> None:
        """paho's on_pre_connect: an attempt at the current host begins."""
        self._attempted = True

    def aim_next(self, client: mqtt.Client, keepalive: int, connect_kwargs: dict[str, Any]) -> None:
        """Point paho's own reconnect (on its thread, from a callback) at the next host, after the jittered
        wait. It only sets where and when: paho's loop connects, re-sends what it held in flight. paho may
        report one loss twice (disconnect, then connect failure): only the first moves on."""
        if not self._attempted:
            return
        self._attempted = False
        lost = self.label
        nxt = self.failed()
        client.connect_async(nxt.host, nxt.port, keepalive=keepalive, **connect_kwargs)
        client.reconnect_delay_set(min_delay=nxt.delay, max_delay=nxt.delay)  # type: ignore[arg-type]
        log.info("mqtt: broker %s lost or unreachable; trying %s in %.1fs", lost, self.label, nxt.delay)
