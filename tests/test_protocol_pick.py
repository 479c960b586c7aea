"""On RabbitMQ 3 (MQTT 3.1.1 only) the central tools pick 3.1.1 as soon as the broker drops the MQTT 5
CONNECT, not after a CONNACK timeout; a gate pinned to protocol = "5" says why it never connects."""

from __future__ import annotations

import logging
import threading

import paho.mqtt.client as mqtt
import pytest

from conftest import wait_until
from gate.central import mqtt as central_mqtt
from gate.config.model import MqttSection
from gate.mqtt_link import MqttLink

pytestmark = pytest.mark.slow


def test_central_tools_fall_back_to_311_when_rabbitmq_drops_the_v5_connect(rabbitmq, monkeypatch) -> None:
    monkeypatch.setattr(central_mqtt, "CONNACK_TIMEOUT", 600.0)  # only the dropped connection can end the wait
    got: list[central_mqtt.Connack] = []

    def connect() -> None:
        client, connack = central_mqtt.connect_session(MqttSection(host=rabbitmq.host, port=rabbitmq.port))
        got.append(connack)
        client.disconnect()
        client.loop_stop()

    t = threading.Thread(target=connect, daemon=True)
    t.start()
    t.join(120)
    assert got and got[0].protocol == mqtt.MQTTv311


def test_a_gate_pinned_to_mqtt_5_on_rabbitmq_says_so(rabbitmq, caplog) -> None:
    with caplog.at_level(logging.WARNING):
        link = MqttLink(MqttSection(host=rabbitmq.host, port=rabbitmq.port, protocol="5"), "lane-p5")
        link.start()
        try:
            assert wait_until(lambda: link.failures.reason == "protocol_refused", 60)
        finally:
            link.stop()
    assert 'RabbitMQ 3 speaks MQTT 3.1.1 only: set mqtt.protocol = "auto"' in caplog.text
