"""Home Assistant MQTT discovery: one device per gate, its entities read from the retained state and the
telemetry the gate publishes anyway (https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery).

Each entity's config is retained at `<prefix>/<component>/gate_<id>/<object>/config`. The topics announced
are remembered in `<state_dir>/homeassistant.json`, so that turning discovery off (or an entity going away in
a new version) removes them with an empty retained message, as Home Assistant expects."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from gate import __version__
from gate.config.model import Config
from gate.contracts import ALARMS, Topics, ha_mode_topics
from gate.core.threads import background
from gate.mqtt_link import MqttLink
from gate.ops.reporting import write_json_atomic

log = logging.getLogger(__name__)


def sensor(name: str, topic: str, field: str, **extra: str) -> dict[str, Any]:
    """A sensor reading one field of a retained JSON document."""
    return {"name": name, "state_topic": topic, "value_template": f"{{{{ value_json.{field} }}}}", **extra}


def entities(cfg: Config) -> dict[str, dict[str, Any]]:
    """`<component>/<object>` → its discovery config, without the device and availability parts."""
    t = Topics(cfg.mqtt.topic_prefix, cfg.gate.id)
    state, tel = t.state, t.telemetry
    measured = {"state_class": "measurement"}
    diagnostic = {"entity_category": "diagnostic"}
    out: dict[str, dict[str, Any]] = {
        "sensor/mode": sensor("Mode", state, "mode", icon="mdi:turnstile"),
        "binary_sensor/broker": {
            "name": "Broker link",
            "state_topic": state,
            "device_class": "connectivity",
            "value_template": "{{ 'ON' if value_json.broker_connected else 'OFF' }}",
            **diagnostic,
        },
        "sensor/broker": sensor("Broker", state, "broker", icon="mdi:server-network", **diagnostic),
        "sensor/broker_failure": {
            "name": "Broker failure",
            "state_topic": state,
            "value_template": "{{ (value_json.broker_failure or {}).reason or 'none' }}",
            "icon": "mdi:lan-disconnect",
            **diagnostic,
        },
        "sensor/outbox_depth": sensor(
            "Outbox depth", state, "outbox_depth", unit_of_measurement="check-ins", icon="mdi:tray-full", **measured
        ),
        "sensor/cache_age": sensor(
            "Pass cache age",
            state,
            "cache_age_s",
            device_class="duration",
            unit_of_measurement="s",
            **measured,
            **diagnostic,
        ),
        # From the retained state, so that a Home Assistant that restarts shows them at once
        "sensor/last_decision": sensor("Last decision", state, "last_decision", icon="mdi:account-check"),
        "sensor/last_reason": sensor("Last reason", state, "last_reason", icon="mdi:information"),
        "sensor/passages_per_minute": sensor(
            "Passages per minute",
            tel,
            "passages_per_minute",
            unit_of_measurement="passages/min",
            icon="mdi:walk",
            **measured,
        ),
    }
    if cfg.homeassistant.control:  # the gate never subscribes to it: the bridge signs each choice (docs/operations.md)
        out["select/requested_mode"] = mode_select(cfg)
    for name in ALARMS:
        out[f"binary_sensor/alarm_{name}"] = {
            "name": f"Alarm {name.replace('_', ' ')}",
            "state_topic": state,
            "device_class": "problem",
            "value_template": f"{{{{ 'ON' if '{name}' in (value_json.alarms_active or []) else 'OFF' }}}}",
        }
    return out


def mode_select(cfg: Config) -> dict[str, Any]:
    """The lane's requested mode, as Home Assistant's select: never open; free-pass only when configured."""
    command, current = ha_mode_topics(cfg.homeassistant.prefix, cfg.gate.id)
    options = ["in_service", "out_of_service", *(["free_pass"] if cfg.homeassistant.free_pass_control else [])]
    return {
        "name": "Requested mode",
        "command_topic": command,
        "state_topic": current,
        "options": options,
        "icon": "mdi:boom-gate",
    }


def messages(cfg: Config) -> dict[str, bytes]:
    """Discovery topic → retained payload, for every entity of this gate."""
    gid = cfg.gate.id
    prefix = cfg.homeassistant.prefix
    t = Topics(cfg.mqtt.topic_prefix, cfg.gate.id)
    node = f"gate_{gid}"
    device = {
        "identifiers": [node],
        "name": f"Gate {gid}",
        "manufacturer": "gate",
        "model": "unattended turnstile lane",
        "sw_version": __version__,
        "suggested_area": cfg.venue.name or cfg.venue.id,
    }
    out = {}
    for key, conf in entities(cfg).items():
        component, obj = key.split("/")
        body = {
            **conf,
            "unique_id": f"{node}_{obj}",
            # the entity id Home Assistant gives it (`object_id` is deprecated since 2025.10, ignored from 2026.4)
            "default_entity_id": f"{component}.{node}_{obj}".replace("-", "_"),
            "availability_topic": t.availability,  # payloads online/offline: Home Assistant's defaults
            "device": device,
            "origin": {"name": "gate", "sw_version": __version__},
        }
        out[f"{prefix}/{component}/{node}/{obj}/config"] = json.dumps(body, separators=(",", ":")).encode()
    return out


class Discovery:
    """On every connection: announce (discovery on), or withdraw what was announced before (off). The work (a
    file read and write, a publish per entity) runs on a thread of its own, "discovery": paho's up-listener
    only wakes it, as every paho callback only queues."""

    def __init__(self, cfg: Config, link: MqttLink) -> None:
        self.cfg, self.link = cfg, link
        self.record = cfg.gate.state_dir / "homeassistant.json"
        self._wake, self._stopping = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._run, name="discovery", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def connected(self) -> None:
        """On paho's thread, after each CONNACK: wake the discovery thread, nothing more."""
        self._wake.set()

    def _run(self) -> None:
        self.run(self._stopping)

    def run(self, stop: threading.Event) -> None:
        """The discovery thread (its own, or under the gate's supervisor, woken by `stop()`)."""
        background()
        while True:
            self._wake.wait()
            if stop.is_set() or self._stopping.is_set():
                return
            self._wake.clear()
            try:
                self.announce()
            except Exception:  # never the end of the thread: the next connection tries again
                log.exception("homeassistant: announcing failed")

    def announced(self) -> list[str]:
        try:
            return [str(t) for t in json.loads(self.record.read_text())["topics"]]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("homeassistant: %s unreadable (%s); announcing again", self.record, exc)
            return []

    def announce(self) -> None:
        """On the discovery thread: retained, so a Home Assistant that starts later sees them."""
        before = self.announced()
        now = messages(self.cfg) if self.cfg.homeassistant.discovery else {}
        for topic in before:
            if topic not in now:
                self.link.publish(topic, b"", qos=1, retain=True)  # an empty retained config removes it
        for topic, payload in now.items():
            self.link.publish(topic, payload, qos=1, retain=True)
        if now:
            write_json_atomic(self.record, {"topics": sorted(now)})
            log.info("homeassistant: announced %d entities under %s", len(now), self.cfg.homeassistant.prefix)
        elif before:
            self.record.unlink(missing_ok=True)
            log.info("homeassistant: discovery off; removed %d entities", len(before))
