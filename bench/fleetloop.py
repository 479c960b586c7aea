"""One network thread for many paho clients (bench/fleet.py's gate processes): what paho's loop_forever does for
one client — select, read, write, keepalive, reconnect after the client's own delay — done for all of them."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import queue
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.client import _ConnectionState

STOPPED = (_ConnectionState.MQTT_CS_DISCONNECTING, _ConnectionState.MQTT_CS_DISCONNECTED)


def reconnect_delay(client: mqtt.Client) -> float:
    """paho's own backoff (`_reconnect_wait`, without the sleep): the gate's failover sets min = max = its jittered
    wait; plain clients double from 1 s. paho resets it on each CONNACK."""
    with client._reconnect_delay_mutex:
        if client._reconnect_delay is None:
            client._reconnect_delay = client._reconnect_min_delay
        else:
            client._reconnect_delay = min(client._reconnect_delay * 2, client._reconnect_max_delay)
        return float(client._reconnect_delay)


class NetLoop:
    """Select over every client's socket on one thread. First connects go out at a bounded rate and with at most
    `window` not yet up (a fleet starting at once must not storm the broker); a lost connection is
    retried after the client's delay, at the host its failover aimed it at. The TCP connect itself (blocking in
    paho) runs on a connector thread, so a broker slow to accept holds up no other client. Other threads (the
    crews publishing, acking) only ask for write interest."""

    def __init__(self, connect_rate: float, window: int = 20, misc_every: float = 1.0, connectors: int = 2) -> None:
        self.connect_rate = connect_rate
        self.window = window
        self.misc_every = misc_every
        self.sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._asks: deque[Callable[[], None]] = deque()  # from other threads, run on the loop's
        self._first: deque[mqtt.Client] = deque()  # waiting for their first connect (rate-bounded)
        self._due: list[tuple[float, int, mqtt.Client]] = []  # reconnects: (when, tie, client)
        self._tie = itertools.count()
        self._live: set[mqtt.Client] = set()  # with a socket registered
        self._gone: set[mqtt.Client] = set()  # loop_stop()ped: never reconnected
        self._pending: dict[mqtt.Client, float] = {}  # attempt begun, not up yet: since when
        self._up: dict[mqtt.Client, Callable[[], bool]] = {}
        self.up_s: list[float] = []  # attempt begun -> up, each successful connect
        self.attempts = self.refused = 0
        self._stop = threading.Event()
        self._dial: queue.SimpleQueue[mqtt.Client | None] = queue.SimpleQueue()
        self._connectors = [
            threading.Thread(target=self._connector, name=f"fleet-dial-{i}", daemon=True) for i in range(connectors)
        ]
        self._thread = threading.Thread(target=self._run, name="fleet-net", daemon=True)
        self._thread.start()
        for t in self._connectors:
            t.start()

    # -- any thread -------------------------------------------------------------------------------------
    def add(self, client: mqtt.Client, up: Callable[[], bool] | None = None) -> None:
        """In place of client.loop_start() (after connect_async): this loop connects it and keeps it connected.
        `up`: when it counts as up (default: CONNACK); a gate is up once its subscriptions are acknowledged, which
        on RabbitMQ is when its session's quorum queue exists: the connect window waits for that."""
        self._up[client] = up or client.is_connected
        client.on_socket_open = lambda c, u, s: self._on_loop(lambda: self._open(c, s))
        client.on_socket_close = lambda c, u, s: self._on_loop(lambda: self._close(c, s))
        client.on_socket_register_write = lambda c, u, s: self._on_loop(lambda: self._interest(c, s, True))
        client.on_socket_unregister_write = lambda c, u, s: self._on_loop(lambda: self._interest(c, s, False))
        self._on_loop(lambda: self._first.append(client))

    def remove(self, client: mqtt.Client) -> None:
        """In place of client.loop_stop(): what it still has to write (its DISCONNECT) is written, then no more."""
        self._on_loop(lambda: self._gone.add(client))

    def stop(self) -> None:
        self._stop.set()
        self._poke()
        for _ in self._connectors:
            self._dial.put(None)
        for t in self._connectors:
            t.join(10)
        self._thread.join(10)

    def _on_loop(self, fn: Callable[[], None]) -> None:
        if threading.current_thread() is self._thread:
            fn()
        else:
            self._asks.append(fn)
            self._poke()

    def _poke(self) -> None:
        with contextlib.suppress(OSError):  # already woken (the pipe is full), or closing
            self._wake_w.send(b"x")

    # -- the loop's thread ------------------------------------------------------------------------------
    def _open(self, client: mqtt.Client, sock: Any) -> None:
        self._live.add(client)
        self.sel.register(sock, selectors.EVENT_READ, client)

    def _close(self, client: mqtt.Client, sock: Any) -> None:
        self._live.discard(client)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(sock)

    def _interest(self, client: mqtt.Client, sock: Any, write: bool) -> None:
        if not write and client.want_write():
            # paho cleared its flag before calling us: a packet another thread queued meanwhile found it still set
            # and asked for nothing, so ask here (or it would wait for the next packet, a keepalive away).
            client._registered_write = write = True
        if client in self._live and client.socket() is sock:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if write else 0)
            with contextlib.suppress(KeyError, ValueError):
                self.sel.modify(sock, events, client)

    def _connect(self, client: mqtt.Client) -> None:
        if client not in self._gone and client not in self._pending:
            self._pending[client] = time.monotonic()
            self.attempts += 1
            self._dial.put(client)

    def _connector(self) -> None:
        """paho's loop_forever step, on a connector thread: reconnect (TCP, then CONNECT queued), or on a refusal
        tell the gate (its failover aims at the next host) and try again after its delay."""
        while (client := self._dial.get()) is not None:
            try:
                client.reconnect()
            except OSError:
                client._handle_on_connect_fail()
                self._on_loop(lambda c=client: self._failed(c))

    def _failed(self, client: mqtt.Client) -> None:
        self.refused += 1
        self._pending.pop(client, None)
        self._later(client)

    def _check(self, client: mqtt.Client) -> None:
        """After a read/write/keepalive: note a client now up; a client whose socket went away is reconnected unless it
        was stopping."""
        if client in self._pending and self._up[client]():
            self.up_s.append(time.monotonic() - self._pending.pop(client))
        gone = client.socket() is not None or client in self._live or client in self._gone
        if not gone and client._state not in STOPPED:
            self._pending.pop(client, None)
            self._later(client)

    def _later(self, client: mqtt.Client) -> None:
        heapq.heappush(self._due, (time.monotonic() + reconnect_delay(client), next(self._tie), client))

    def _run(self) -> None:
        next_misc = next_first = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            timeout = min(next_misc, self._due[0][0] if self._due else next_misc) - now
            if self._first:
                timeout = min(timeout, next_first - now)
            for key, mask in self.sel.select(max(0.0, min(timeout, 0.5))):
                client = key.data
                if client is None:
                    while True:
                        try:
                            if not self._wake_r.recv(4096):
                                break
                        except BlockingIOError:
                            break
                    continue
                if mask & selectors.EVENT_READ:
                    client.loop_read()
                if mask & selectors.EVENT_WRITE and client.socket() is not None:
                    client.loop_write()
                self._check(client)
            while self._asks:
                self._asks.popleft()()
            now = time.monotonic()
            while self._first and now >= next_first and len(self._pending) < self.window:  # paced, windowed
                self._connect(self._first.popleft())
                next_first = max(next_first + 1.0 / self.connect_rate, now - 0.5)
            while self._due and self._due[0][0] <= now:
                client = heapq.heappop(self._due)[2]
                if client.socket() is None:
                    self._connect(client)
            if now >= next_misc:  # keepalive pings, and noticing a broker that stopped answering
                next_misc = now + self.misc_every
                for client in list(self._live):
                    client.loop_misc()
                    self._check(client)
        self.sel.close()
        self._wake_r.close()
        self._wake_w.close()

    @property
    def connected(self) -> int:
        return len(self._live)
