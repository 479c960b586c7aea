"""Delivery heals itself without a restart: after a full disk, and on a connected link to a broker that accepts
and then drops every message (a TCP proxy between the gate and a real mosquitto that lets the keepalive through
but eats each PUBLISH). The stall raises `delivery_stalled`, the gate reconnects and re-sends, and once the
broker answers again every stored check-in arrives and the alarm clears."""

from __future__ import annotations

import contextlib
import json
import random
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory

from conftest import Broker, free_port, make_config, wait_until
from gate.decide.codes import Status, issue
from gate.lane.wiring import build
from gate.scan.decoders import make_decoder
from gate.scanner import DecodingSource
from gate.testing import ScriptedFrames

pytestmark = pytest.mark.slow  # starts a broker, a daemon, a database or a browser

PUBLISH = 3
PUBACK = 4


def packets(buf: bytearray) -> list[bytes]:
    """Whole MQTT packets off the front of `buf` (fixed header: type and flags, then a varint length)."""
    out = []
    while len(buf) >= 2:
        length = 0
        mult = 1
        i = 1
        while True:
            if i >= len(buf):
                return out
            byte = buf[i]
            length += (byte & 0x7F) * mult
            mult *= 128
            i += 1
            if not byte & 0x80:
                break
        if len(buf) < i + length:
            return out
        out.append(bytes(buf[: i + length]))
        del buf[: i + length]
    return out


class EatingProxy:
    """Forwards MQTT between the gate and the broker; while `eating` is set, every PUBLISH from the gate is
    dropped (so no PUBACK comes), while PINGREQ/PINGRESP and everything else pass: the link stays up."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.eating = threading.Event()
        self.eaten = 0
        self.connections = 0
        self.server = socket.create_server(("127.0.0.1", free_port()))
        self.port = self.server.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection((self.broker.host, self.broker.port))
            self.connections += 1
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_gate: bool) -> None:
        buf = bytearray()
        try:
            while data := src.recv(65536):
                buf += data
                for packet in packets(buf):
                    if from_gate and self.eating.is_set() and packet[0] >> 4 == PUBLISH:
                        self.eaten += 1
                        continue
                    dst.sendall(packet)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self._stop.set()
        self.server.close()


def test_a_broker_that_eats_every_message_is_left_and_everything_arrives_after(
    tmp_path: Path, keys: Any, broker: Broker, subscriber_factory: Any
) -> None:
    proxy = EatingProxy(broker)
    cfg = make_config(tmp_path / "state", keys, mqtt={"host": "127.0.0.1", "port": proxy.port, "keepalive": 5})
    src = DecodingSource(ScriptedFrames([]), make_decoder("zxing"))
    g = build(cfg, source=src, pin_factory=MockFactory(), with_mqtt=True).start()
    sub = subscriber_factory(broker, "gate/+/checkin")
    try:
        g.cache.apply_delta([], [], 0)
        assert wait_until(g.link.connected.is_set, 20)
        proxy.eating.set()
        ids = set()
        for i in range(30):
            code = issue(keys.private, f"tok-heal{i:04d}", Status.GREEN, int(time.time()) - 5, 3600).encode()
            ids.add(g.handle(code)[1].event_id)
        assert wait_until(lambda: proxy.eaten > 0, 20)

        def alarm_active() -> bool:
            g.pump()
            return "delivery_stalled" in g.recorder.active_alarms

        assert wait_until(alarm_active, 40), "no delivery_stalled alarm"  # stall_after = 2 x keepalive
        assert wait_until(lambda: proxy.connections >= 2, 20)  # it left the silent connection
        assert sub.event_ids("/checkin") & ids == set()  # nothing got through meanwhile
        proxy.eating.clear()
        assert wait_until(lambda: ids <= sub.event_ids("/checkin"), 60), "not every check-in arrived"
        assert wait_until(lambda: (g.pump(), "delivery_stalled" not in g.recorder.active_alarms)[1], 30)
    finally:
        g.close()
        proxy.close()


def test_rows_whose_delete_failed_on_a_full_disk_are_sent_again_and_removed_without_a_restart(
    tmp_path: Path, keys: Any, broker: Broker, subscriber_factory: Any, monkeypatch: Any
) -> None:
    """The broker acknowledged, but the outbox could not delete (a full disk needs room to delete too): the rows
    stay, the drainer reads them again once the outbox has room, and nothing waits for a restart."""
    from gate.core.errors import OutboxFull

    cfg = make_config(tmp_path / "state", keys, mqtt={"host": broker.host, "port": broker.port})
    src = DecodingSource(ScriptedFrames([]), make_decoder("zxing"))
    g = build(cfg, source=src, pin_factory=MockFactory(), with_mqtt=True).start()
    sub = subscriber_factory(broker, "gate/+/checkin")
    full = threading.Event()
    full.set()
    real_ack = g.outbox.ack

    def ack(seqs: list[int]) -> int:
        if full.is_set():
            raise OutboxFull("database or disk is full")
        return real_ack(seqs)

    monkeypatch.setattr(g.outbox, "ack", ack)
    try:
        g.cache.apply_delta([], [], 0)
        assert wait_until(g.link.connected.is_set, 20)
        ids = set()
        for i in range(20):
            code = issue(keys.private, f"tok-full{i:04d}", Status.GREEN, int(time.time()) - 5, 3600).encode()
            ids.add(g.handle(code)[1].event_id)
        assert wait_until(lambda: ids <= sub.event_ids("/checkin"), 20)  # published and acknowledged
        assert g.outbox.depth >= 20  # but not deleted
        full.clear()  # room again
        assert wait_until(lambda: g.outbox.depth == 0, 30), g.outbox.depth
    finally:
        g.close()


class SlowAckProxy(EatingProxy):
    """Forwards MQTT both ways, but holds each PUBACK from the broker `low`..`high` seconds before passing it on:
    a broker that acknowledges slowly, not one that stopped."""

    def __init__(self, broker: Broker, low: float, high: float) -> None:
        self.low, self.high = low, high
        self._locks: dict[int, threading.Lock] = {}
        super().__init__(broker)

    def _send(self, dst: socket.socket, packet: bytes) -> None:
        with self._locks.setdefault(id(dst), threading.Lock()), contextlib.suppress(OSError):
            dst.sendall(packet)

    def _pump(self, src: socket.socket, dst: socket.socket, from_gate: bool) -> None:
        buf = bytearray()
        try:
            while data := src.recv(65536):
                buf += data
                for packet in packets(buf):
                    if not from_gate and packet[0] >> 4 == PUBACK:
                        timer = threading.Timer(random.uniform(self.low, self.high), self._send, (dst, packet))
                        timer.daemon = True
                        timer.start()
                        continue
                    self._send(dst, packet)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()


def test_a_broker_that_acknowledges_12_to_20s_late_gets_no_storm_of_copies(
    tmp_path: Path, keys: Any, broker: Broker, subscriber_factory: Any
) -> None:
    proxy = SlowAckProxy(broker, 12.0, 20.0)
    cfg = make_config(tmp_path / "state", keys, mqtt={"host": "127.0.0.1", "port": proxy.port, "keepalive": 5})
    src = DecodingSource(ScriptedFrames([]), make_decoder("zxing"))
    g = build(cfg, source=src, pin_factory=MockFactory(), with_mqtt=True).start()
    sub = subscriber_factory(broker, "gate/+/checkin")

    def copies() -> list[str]:
        return [json.loads(p)["event_id"] for p in sub.on("/checkin")]

    def check_ins(n: int, tag: str) -> set[str]:
        codes = [issue(keys.private, f"tok-{tag}{i:04d}", Status.GREEN, int(time.time()) - 5, 3600) for i in range(n)]
        return {g.handle(c.encode())[1].event_id for c in codes}

    try:
        g.cache.apply_delta([], [], 0)
        assert wait_until(g.link.connected.is_set, 20)
        first = check_ins(30, "slow")
        assert wait_until(lambda: g.outbox.depth == 0, 120), g.outbox.depth  # every one acknowledged, late
        assert first <= set(copies())
        assert g.drainer is not None and g.drainer.stalls <= 1 and proxy.connections <= 2  # at most one reconnect
        assert max(copies().count(e) for e in first) <= 2  # paho's own re-send once, never a storm
        assert g.drainer.stall_threshold >= 3 * 12.0  # it learned how slow this broker is
        stalls, connections = g.drainer.stalls, proxy.connections
        second = check_ins(30, "later")
        assert wait_until(lambda: g.outbox.depth == 0, 120), g.outbox.depth
        assert g.drainer.stalls == stalls and proxy.connections == connections  # slow is not stalled now
        assert all(copies().count(e) == 1 for e in second)
        assert wait_until(lambda: (g.pump(), "delivery_stalled" not in g.recorder.active_alarms)[1], 30)
    finally:
        g.close()
        proxy.close()
