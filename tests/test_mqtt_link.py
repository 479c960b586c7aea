"""The paho link: MQTT 5 → 3.1.1 fallback, guarded callbacks."""

from __future__ import annotations

import socket
import threading
import time

import paho.mqtt.client as mqtt
import pytest

from conftest import wait_until
from gate.config.model import MqttSection
from gate.mqtt_link import MqttLink

pytestmark = pytest.mark.slow  # starts a broker, a daemon, a database or a browser


class OldBroker:
    """A broker that only speaks MQTT 3.1.1: refuses a v5 CONNECT with return code 1, accepts v3.1.1."""

    def __init__(self, close_on_v5: bool = False, down: bool = False) -> None:
        self.close_on_v5 = close_on_v5  # like RabbitMQ: drop the connection instead of answering
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))  # bound but not listening: connections are refused, as while it boots
        self.port = self.sock.getsockname()[1]
        self.levels: list[int] = []
        self.times: list[float] = []  # monotonic time of each CONNECT
        self._stop = threading.Event()
        if not down:
            self.up()

    def up(self) -> None:
        self.sock.listen(5)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            try:
                data = conn.recv(4096)
            except OSError:
                return
            if not data or data[0] >> 4 != 1:
                return
            i = 1
            mult = 1
            length = 0
            while True:  # variable-length "remaining length"
                length += (data[i] & 0x7F) * mult
                mult *= 128
                i += 1
                if not data[i - 1] & 0x80:
                    break
            level = data[i + 6]  # after the 2-byte length and "MQTT"
            self.levels.append(level)
            self.times.append(time.monotonic())
            if level == 5:
                if not self.close_on_v5:
                    conn.sendall(b"\x20\x02\x00\x01")  # CONNACK: unacceptable protocol version
                return
            conn.sendall(b"\x20\x02\x00\x00")
            while not self._stop.is_set():
                try:
                    if not conn.recv(4096):
                        return
                except TimeoutError:
                    continue
                except OSError:
                    return

    def close(self) -> None:
        self._stop.set()
        self.sock.close()


def test_falls_back_to_mqtt_311_when_the_broker_closes_the_connection_on_v5(caplog) -> None:
    old = OldBroker(close_on_v5=True)
    link = MqttLink(MqttSection(host="127.0.0.1", port=old.port), "lane-r")
    try:
        link.start()
        assert link.connected.wait(20)
        assert link.protocol == mqtt.MQTTv311 and old.levels[:2] == [5, 5] and old.levels[-1] == 4
        assert "closed the connection on an MQTT 5 CONNECT" in caplog.text
        assert link.refusals_visible is False
    finally:
        link.stop()
        old.close()


def test_a_backoff_built_up_while_the_broker_was_down_does_not_delay_the_fall_back() -> None:
    """The fall-back needs two dropped MQTT 5 CONNECTs. A gate that was offline a while has a long reconnect
    backoff; the second attempt must not wait it out, since the broker has just answered."""
    old = OldBroker(close_on_v5=True, down=True)
    link = MqttLink(MqttSection(host="127.0.0.1", port=old.port), "lane-b")
    refused: list[float] = []
    link.client.on_connect_fail = lambda *_: refused.append(time.monotonic())
    try:
        link.start()
        assert wait_until(lambda: len(refused) >= 3, 20)  # refused at 0, 1 and 3 s: the next wait is 4 s, then 8
        old.up()
        assert link.connected.wait(30)
        assert link.protocol == mqtt.MQTTv311 and old.levels[:2] == [5, 5]
        assert old.times[1] - old.times[0] < 4  # 1 s, where the built-up backoff would have waited 8
    finally:
        link.stop()
        old.close()


def test_falls_back_to_mqtt_311_when_the_broker_refuses_v5() -> None:
    old = OldBroker()
    link = MqttLink(MqttSection(host="127.0.0.1", port=old.port), "lane-f", lambda mid, ok: None)
    try:
        link.start()
        assert link.connected.wait(15)
        assert link.protocol == mqtt.MQTTv311 and old.levels[:1] == [5] and old.levels[-1] == 4
    finally:
        link.stop()
        old.close()


def test_an_exception_in_a_callback_does_not_kill_the_network_thread(broker) -> None:
    calls: list[int] = []

    def flaky(mid: int, refused: str | None) -> None:
        calls.append(mid)
        if len(calls) == 1:
            raise RuntimeError("bug in a handler")

    link = MqttLink(MqttSection(host=broker.host, port=broker.port), "lane-g", flaky)
    try:
        link.start()
        assert link.connected.wait(10)
        infos = [link.publish("gate/lane-g/x", b"1", qos=1) for _ in range(3)]
        assert wait_until(lambda: all(i.is_published() for i in infos) and len(calls) >= 3, 10)
        assert link.client._thread is not None and link.client._thread.is_alive()
    finally:
        link.stop()


def test_time_offline_is_counted_across_outages(tmp_path) -> None:
    """A bus's link comes and goes: the gate says how long it has been without the broker."""
    from conftest import Broker

    broker = Broker(tmp_path)
    link = MqttLink(MqttSection(host=broker.host, port=broker.port), "lane-bus")
    try:
        link.start()  # nobody listens yet: offline from the start
        assert wait_until(lambda: link.offline_seconds()[1] >= 0.3, 10)
        broker.start()
        assert link.connected.wait(40)
        total, current = link.offline_seconds()
        assert current == 0.0 and total >= 0.3
        broker.stop()  # an outage
        assert wait_until(lambda: not link.connected.is_set(), 10)
        assert wait_until(lambda: link.offline_seconds()[1] >= 0.3, 10)
        assert link.offline_seconds()[0] >= total + 0.3
    finally:
        link.stop()
        broker.stop()
