"""Home Assistant puts a lane out of service through central's signature: the gate announces a select, `gate
central ha-bridge` signs the choice as central's command, and the gate's reply becomes the select's state. The
gate never subscribes to Home Assistant's topic, and the bridge never sends open or (unless allowed) free-pass."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from gpiozero.pins.mock import MockFactory
from paho.mqtt.enums import CallbackAPIVersion

from conftest import make_config, wait_until
from gate.decide.keys import generate_keypair
from gate.lane.wiring import build
from gate.scan.decoders import make_decoder
from gate.scanner import DecodingSource
from gate.testing import ScriptedFrames

pytestmark = pytest.mark.slow
SET = "homeassistant/gate/lane-t/requested_mode/set"
STATE = "homeassistant/gate/lane-t/requested_mode/state"
# Home Assistant's MQTT select (https://www.home-assistant.io/integrations/select.mqtt/): its required keys, and
# every key it takes; discovery's own (device, origin, availability) besides.
SELECT_REQUIRED = {"command_topic", "options"}
SELECT_KEYS = SELECT_REQUIRED | {
    "name",
    "unique_id",
    "default_entity_id",
    "state_topic",
    "value_template",
    "command_template",
    "icon",
    "availability_topic",
    "device",
    "origin",
    "entity_category",
    "qos",
    "retain",
    "optimistic",
    "enabled_by_default",
}


def lane(g, condition) -> bool:
    """Wait for `condition` while this thread, the lane's, carries out the lane's requests (commands)."""
    return bool(wait_until(lambda: (g.pump(), condition())[1], 30, interval=0.01))


def test_a_lane_is_put_out_of_service_from_home_assistant_through_a_signed_command(
    broker, tmp_path, keys, subscriber_factory
) -> None:
    _, central_key, central_pub = generate_keypair(tmp_path / "central")
    mqtt_section = {"host": broker.host, "port": broker.port}
    central = {"keys": [str(central_pub)]}
    homeassistant = {"discovery": True, "control": True}
    cfg = make_config(tmp_path / "state", keys, mqtt=mqtt_section, central=central, homeassistant=homeassistant)
    ha = subscriber_factory(broker, "homeassistant/#")
    source = DecodingSource(ScriptedFrames([]), make_decoder("zxing"))
    g = build(cfg, source=source, pin_factory=MockFactory()).start()
    address = f"{broker.host}:{broker.port}"
    bridge = subprocess.Popen(
        [sys.executable, "-m", "gate", "central", "ha-bridge", "--broker", address, "--key", str(central_key)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert bridge.stdout is not None and "ha-bridge: serving" in bridge.stdout.readline()
        select = json.loads(wait_until(lambda: ha.on("homeassistant/select/gate_lane-t/requested_mode/config"), 20)[-1])
        assert SELECT_REQUIRED <= set(select) <= SELECT_KEYS, set(select) - SELECT_KEYS
        assert select["options"] == ["in_service", "out_of_service"]  # never open; free_pass only if configured
        assert (select["command_topic"], select["state_topic"]) == (SET, STATE)
        assert not [t for t in g.link._subs if "homeassistant" in t]  # the gate takes only signed commands
        assert lane(g, lambda: ha.on(STATE) and ha.on(STATE)[-1] == b"in_service")  # from the gate's state

        home_assistant = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        home_assistant.connect(broker.host, broker.port)
        home_assistant.loop_start()
        home_assistant.publish(SET, b"free_pass", qos=1).wait_for_publish(10)  # not allowed: refused
        home_assistant.publish(SET, b"out_of_service", qos=1).wait_for_publish(10)
        assert lane(g, lambda: ha.on(STATE)[-1] == b"out_of_service"), ha.on(STATE)
        assert g.actuator.mode_state.requested.value == "out_of_service"
        assert g.actuator.mode_state.set_by is not None
        home_assistant.publish(SET, b"in_service", qos=1).wait_for_publish(10)
        assert lane(g, lambda: ha.on(STATE)[-1] == b"in_service"), ha.on(STATE)
        assert g.actuator.mode_state.requested.value == "normal"
        home_assistant.disconnect()
        home_assistant.loop_stop()
    finally:
        bridge.terminate()
        _, err = bridge.communicate(timeout=30)
        g.close()
    assert "free_pass for gate lane-t refused" in err, err


def test_the_select_offers_free_pass_only_when_configured(tmp_path: Path, keys) -> None:
    from gate.ops.homeassistant import entities

    off = make_config(tmp_path, keys, homeassistant={"discovery": True})
    assert "select/requested_mode" not in entities(off)
    on = make_config(tmp_path, keys, homeassistant={"discovery": True, "control": True, "free_pass_control": True})
    assert entities(on)["select/requested_mode"]["options"] == ["in_service", "out_of_service", "free_pass"]


def test_the_bridge_unit_is_hardened_and_valid() -> None:
    import re

    from conftest import require

    unit = Path(__file__).resolve().parent.parent / "systemd/gate-ha-bridge.service"
    r = subprocess.run(
        [require("systemd-analyze"), "security", "--offline=yes", str(unit)], capture_output=True, text=True, timeout=60
    )
    m = re.search(r"Overall exposure level for gate-ha-bridge.service: ([0-9.]+) (\w+)", r.stdout)
    assert m is not None, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.5 and m.group(2) in ("OK", "SAFE"), m.group(0)
    r = subprocess.run([require("systemd-analyze"), "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert "Unknown" not in r.stderr and "Invalid" not in r.stderr, r.stderr
