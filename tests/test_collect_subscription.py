"""collect never runs receiving nothing: it subscribes shared only where the broker says it can, and reads
each SUBACK (real mosquitto; RabbitMQ's side is in test_rabbitmq.py)."""

from __future__ import annotations

import subprocess
import sys

import paho.mqtt.client as mqtt
import pytest

from conftest import Broker
from gate.central.mqtt import Connack
from gate.central.subscribe import check_suback, plan
from gate.core.errors import GateError

pytestmark = pytest.mark.slow  # starts a broker, a daemon, a database or a browser

V5, V311 = Connack(mqtt.MQTTv5), Connack(mqtt.MQTTv311)
NO_SHARED = Connack(mqtt.MQTTv5, shared_subscriptions=False)


def collect(broker: Broker, tmp_path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "gate", "central", "collect", "--broker", f"{broker.host}:{broker.port}"),
            *("--db", str(tmp_path / "c.db"), "--accept-unsigned", "--idle-timeout", "0.5", *extra),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )


def test_shared_only_where_the_broker_says_so() -> None:
    assert plan(V5, "auto", "g").shared
    assert not plan(V311, "auto", "g").shared  # 3.1.1 cannot say: RabbitMQ 3 takes $share literally
    assert plan(V311, "on", "g").shared  # forced
    assert not plan(NO_SHARED, "auto", "g").shared
    assert not plan(V5, "off", "g").shared
    with pytest.raises(GateError, match="Shared Subscription Available = 0"):
        plan(NO_SHARED, "on", "g")


def test_a_refused_or_downgraded_subscription_is_an_error() -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    def rc(v: int) -> ReasonCode:
        return ReasonCode(PacketTypes.SUBACK, identifier=v)

    check_suback(["a", "b"], [rc(1), rc(0)], {"a"})
    with pytest.raises(GateError, match="refused the subscription to a: Not authorized"):
        check_suback(["a"], [rc(0x87)], {"a"})
    with pytest.raises(GateError, match="only QoS 0"):
        check_suback(["a"], [rc(0)], {"a"})
    with pytest.raises(GateError, match="answered 1 of 2"):
        check_suback(["a", "b"], [rc(1)], set())


@pytest.mark.mosquitto_only("RabbitMQ 3 speaks MQTT 3.1.1: collect subscribes plainly there (test_rabbitmq.py)")
def test_the_default_collect_shares_on_mosquitto(broker, tmp_path) -> None:
    p = collect(broker, tmp_path)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert "subscribed to $share/collectors/gate/+/checkin" in err and "the broker offers them" in err


def test_collect_refuses_a_broker_that_grants_only_qos_0(tmp_path) -> None:
    b = Broker(tmp_path, extra="max_qos 0\n")
    b.start()
    try:
        p = collect(b, tmp_path)
        _, err = p.communicate(timeout=60)
    finally:
        b.stop()
    assert p.returncode == 1
    assert "granted $share/collectors/gate/+/checkin only QoS 0" in err and "subscribed" not in err
