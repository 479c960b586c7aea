"""Drains the outbox to the broker in order, within an in-flight window, deleting only on PUBACK."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode

from gate.mqtt_link import MqttLink
from gate.outbox import Outbox

log = logging.getLogger(__name__)
_QUEUED = (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)


def acknowledged(info: mqtt.MQTTMessageInfo) -> bool:
    """Whether the PUBACK came. Not info.is_published(): that raises for ever for a message first handed
    to paho while the link was down (rc NO_CONN), even after paho re-sent it and the broker acked it."""
    with info._condition:
        return bool(info._published)


class Drainer:
    """One thread. paho keeps and re-sends what is in flight across reconnects; after a restart the
    outbox still holds every unacknowledged row, which is simply published again (at least once).
    Completion is read from each message's MQTTMessageInfo rather than matched by mid inside paho's
    callback, which runs under paho's own lock."""

    def __init__(self, outbox: Outbox, link: MqttLink, window: int) -> None:
        self.outbox, self.link, self.window = outbox, link, window
        self._inflight: deque[tuple[int, str, mqtt.MQTTMessageInfo]] = deque()
        self._refused: set[int] = set()  # mids the broker answered with a failure reason
        self._last_seq = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.delivered = 0
        self.listeners: list[Callable[[list[str]], None]] = []  # event_ids just acknowledged
        self._thread = threading.Thread(target=self._run, name="outbox-drain", daemon=True)
        link.ack_listeners.append(self.on_publish)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def on_publish(self, mid: int, ok: bool) -> None:
        """paho's thread: a PUBACK arrived."""
        if not ok:
            self._refused.add(mid)
        self._wake.set()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except Exception:
                log.exception("outbox drain step failed; retrying")
                self._stop.wait(1.0)
            self._wake.wait(0.2)
            self._wake.clear()

    def _collect(self) -> None:
        acked, ids, retry = [], [], []
        while self._inflight and acknowledged(self._inflight[0][2]):
            seq, event_id, info = self._inflight.popleft()
            if info.mid in self._refused:
                self._refused.discard(info.mid)
                retry.append(seq)
            else:
                acked.append(seq)
                ids.append(event_id)
        if acked:
            self.delivered += self.outbox.ack(acked)
            self.outbox.check_space()  # room came back: the lane may return to service at once
            for listener in self.listeners:
                listener(ids)
        if retry:
            log.error("broker refused %d check-in(s); they stay in the outbox and are retried", len(retry))
            self._inflight.clear()  # re-send from the first refused row, in order
            self._last_seq = min(retry) - 1
            self._stop.wait(5.0)

    def _step(self) -> None:
        self._collect()
        if not self.link.connected.is_set():
            return
        room = self.window - len(self._inflight)
        while room > 0 and not self._stop.is_set():
            rows = self.outbox.fetch(self._last_seq, min(room, 500))
            if not rows:
                return
            for seq, event_id, topic, qos, payload in rows:
                info = self.link.publish(topic, payload, qos=qos)
                if info.rc not in _QUEUED:  # paho did not keep it: fetch it again on the next step
                    return
                self._inflight.append((seq, event_id, info))
                self._last_seq = seq
            room -= len(rows)

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
