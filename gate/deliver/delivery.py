"""Drains the outbox to the broker in order, within an in-flight window, deleting only on PUBACK."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from gate.core.faults import Faults
from gate.core.threads import LaneFirst, background
from gate.deliver.outbox import Outbox
from gate.deliver.sealing import Sealer
from gate.mqtt_link import MqttLink

log = logging.getLogger(__name__)
_QUEUED = (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)
LATENCY_FACTOR = 3.0  # a stall is this many times the slowest recent acknowledgement (or `stall_after`)
LATENCY_DECAY = 0.98  # per acknowledged batch: the slowest recent acknowledgement is forgotten slowly
MAX_BACKOFF = 8.0  # each stall in a row doubles the wait for the next, up to this many times `stall_after`


def acknowledged(info: mqtt.MQTTMessageInfo) -> bool:
    """Whether the PUBACK came (for QoS 0: whether paho is done with it). paho's public `is_published()` where it
    can answer. It cannot for a message first handed to paho while the link was down: paho keeps that one and
    sends it after the reconnect, but never updates its `rc`, which stays MQTT_ERR_NO_CONN, so `is_published()`
    and `wait_for_publish()` raise RuntimeError for ever, even once the broker has acked it (paho 2.2 has no
    public API that tells; likewise a QoS 0 message paho gave up on at a disconnect, rc CONN_LOST). For those
    only, the flag paho sets on completion is read under its own lock; tests/test_delivery_paho.py shows both
    and fails if paho changes. Matching PUBACKs by mid ourselves would not do: a late ack from a client the link
    has since replaced could carry the mid of a message in flight on the new one, deleting its row unacked."""
    if info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_AGAIN):
        return info.is_published()
    with info._condition:  # no public API: see above
        return bool(info._published)


class Drainer:
    """One thread. paho keeps and re-sends what is in flight across reconnects; after a restart the
    outbox still holds every unacknowledged row, which is simply published again (at least once).
    Completion is read from each message's MQTTMessageInfo rather than matched by mid inside paho's
    callback, which runs under paho's own lock."""

    def __init__(
        self,
        outbox: Outbox,
        link: MqttLink,
        window: int,
        max_refusals: int = 5,
        on_dead_letter: Callable[[int, str], object] = lambda n, detail: None,
        sealer: Sealer | None = None,
        lane_first: LaneFirst | None = None,
        faults: Faults | None = None,
        stall_after: float = 30.0,
        on_stall: Callable[[bool, str], object] = lambda active, detail: None,
    ) -> None:
        """`stall_after`: seconds without a PUBACK, with messages in flight on a connected link, before the
        drainer calls it a stall (`on_stall`, the `delivery_stalled` alarm), reconnects and re-sends."""
        self.lane_first = lane_first or LaneFirst()
        # Signing happens here, as each event leaves, not on the lane thread: it costs the relay nothing.
        self.sealer = sealer
        self.outbox = outbox
        self.link = link
        self.window = window
        self.max_refusals = max_refusals
        self.on_dead_letter = on_dead_letter
        self.retry_delay = 5.0  # before re-sending what the broker refused
        self._inflight: deque[tuple[int, str, mqtt.MQTTMessageInfo, float]] = deque()  # ..., (re)sent at
        self._refused: dict[int, str] = {}  # mid -> the failure reason the broker answered (paho's thread adds)
        self._refusals: Counter[int] = Counter()  # seq -> times refused so far
        self._generation = link.generation
        self.faults = faults or Faults()
        self._last_seq = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.delivered = 0
        self.stall_after = stall_after
        self.on_stall = on_stall
        self.stalled = False
        self.stalls = 0  # times a stall was declared (a reconnect each)
        self.latency = 0.0  # the slowest recent acknowledgement, in seconds (decaying)
        self._backoff = 1.0
        self._progress_at = time.monotonic()
        self.listeners: list[Callable[[list[str]], None]] = []  # event_ids just acknowledged
        self._thread = threading.Thread(target=self._run, name="outbox-drain", daemon=True)
        link.ack_listeners.append(self.on_publish)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def on_publish(self, mid: int, refused: str | None) -> None:
        """paho's thread: a PUBACK arrived (`refused`: the broker's failure reason, MQTT 5 only)."""
        if refused is not None:
            self._refused[mid] = refused
        self._wake.set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def _run(self) -> None:
        self.run(self._stop)

    def run(self, stop: threading.Event) -> None:
        """The drainer's loop, on its own thread (`start`) or the gate's supervisor's: until `stop` or `stop()`."""
        background()
        while not stop.is_set() and not self._stop.is_set():
            if not self.faults.run("delivering the outbox", self._step):
                self._stop.wait(1.0)
            self._wake.wait(0.2)
            self._wake.clear()

    def _collect(self) -> None:
        acked: list[int] = []
        ids: list[str] = []
        retry: list[int] = []
        dead: list[int] = []
        reasons: set[str] = set()
        now = time.monotonic()
        slowest = 0.0
        while self._inflight and acknowledged(self._inflight[0][2]):
            seq, event_id, info, sent_at = self._inflight.popleft()
            slowest = max(slowest, now - sent_at)
            reason = self._refused.pop(info.mid, None)
            if reason is None:
                acked.append(seq)
                ids.append(event_id)
                continue
            reasons.add(reason)
            self._refusals[seq] += 1
            (dead if self._refusals[seq] >= self.max_refusals else retry).append(seq)
        if acked or retry or dead:
            self.latency = max(slowest, self.latency * LATENCY_DECAY)
            self._progress()
        if acked:
            for seq in acked if self._refusals else ():  # refused before, delivered now: nothing to count
                del self._refusals[seq]
            try:
                self.delivered += self.outbox.ack(acked)
            except Exception:  # a full disk cannot delete: the rows stay, and are sent again from the first
                self._inflight.clear()
                self._last_seq = min(acked) - 1
                raise
            self.outbox.check_space()  # room came back: the lane may return to service at once
            for listener in self.listeners:
                listener(ids)
        if dead:
            why = ", ".join(sorted(reasons))
            n = self.outbox.dead_letter(dead, why)
            for seq in dead:
                del self._refusals[seq]
            detail = f"{n} event(s) refused {self.max_refusals} times by the broker ({why}) set aside as dead letters"
            log.error("%s; the events after them flow on", detail)
            self.on_dead_letter(n, detail)
        if retry or dead:
            if retry:
                log.error(
                    "broker refused %d event(s) (%s); they stay in the outbox and are retried",
                    len(retry),
                    ", ".join(sorted(reasons)),
                )
            self._inflight.clear()  # re-send from the first refused row, in order
            self._last_seq = min(retry + dead) - 1
            if retry:
                self._stop.wait(self.retry_delay)

    def _step(self) -> None:
        if self.link.generation != self._generation:  # the link rebuilt its client: re-send what the old one held
            self._generation = self.link.generation
            if self._inflight:
                self._last_seq = self._inflight[0][0] - 1
                self._inflight.clear()
            self._refused.clear()
        self._collect()
        if not self.link.connected.is_set():
            self._progress_at = time.monotonic()  # waiting for the link is not a stall
            return
        if self._stalled_for() > self.stall_threshold:
            self._unstall()
            return
        room = self.window - len(self._inflight)
        while room > 0 and not self._stop.is_set():
            rows = self.outbox.fetch(self._last_seq, min(room, 500))
            if not rows:
                if not self._inflight and self._last_seq and self.outbox.depth:
                    self._last_seq = 0  # rows left behind (a failed step): read the outbox from its start
                return
            for seq, event_id, topic, qos, payload in rows:
                self.lane_first.yield_to_lane()
                info = self.link.publish(topic, self.sealer.seal(payload) if self.sealer else payload, qos=qos)
                if info.rc not in _QUEUED:  # paho did not keep it: fetch it again on the next step
                    return
                self._inflight.append((seq, event_id, info, time.monotonic()))
                self._last_seq = seq
            room -= len(rows)

    # -- a connected link whose broker stopped answering -----------------------------------------------
    @property
    def stall_threshold(self) -> float:
        """Seconds without any acknowledgement before a stall: `stall_after`, or three times the slowest recent
        acknowledgement if the broker is that slow (slow is not stalled); doubled for each stall in a row."""
        return max(self.stall_after * self._backoff, LATENCY_FACTOR * self.latency)

    def _progress(self) -> None:
        self._progress_at = time.monotonic()
        self._backoff = 1.0
        if self.stalled:
            self.stalled = False
            log.warning("delivery: the broker acknowledges again")
            self.on_stall(False, "the broker acknowledges again")

    def _stalled_for(self) -> float:
        if not self._inflight:
            self._progress_at = time.monotonic()
            return 0.0
        return time.monotonic() - self._progress_at

    def _unstall(self) -> None:
        """No acknowledgement for `stall_threshold` on a connected link (a broker that accepts and then drops
        everything): reconnect. paho re-sends what it holds in flight (and only that: nothing is published again
        here, so a slow broker gets no storm of copies); the next stall is waited for twice as long."""
        waited = self.stall_threshold
        detail = (
            f"no acknowledgement for {waited:.0f}s on a connected link; reconnecting and re-sending what is in flight"
        )
        if not self.stalled:
            self.stalled = True
            log.error("delivery: %s (%d in flight)", detail, len(self._inflight))
            self.on_stall(True, detail)
        self.stalls += 1
        now = self._progress_at = time.monotonic()
        self._inflight = deque((seq, event_id, info, now) for seq, event_id, info, _ in self._inflight)
        self._backoff = min(self._backoff * 2, MAX_BACKOFF)
        self.link.force_reconnect("no acknowledgement")

    def wait_empty(self, timeout: float) -> bool:
        """Block until every outbox row is acknowledged, or the timeout passes."""
        deadline = time.monotonic() + timeout
        while self.outbox.depth and time.monotonic() < deadline:
            self.wake()
            time.sleep(0.05)
        return self.outbox.depth == 0

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2.0)
