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
from gate.contracts import ALARMS, Topics
from gate.core.threads import background
from gate.mqtt_link import MqttLink
from gate.ops.reporting import write_json_atomic

log = logging.getLogger(__name__)


def entities(cfg: Config) -> dict[str, dict[str, Any]]:
    """`<component>/<object>` → its discovery config, without the device and availability parts."""
    t = Topics(cfg.mqtt.topic_prefix, cfg.gate.id)
    state, tel = t.state, t.telemetry
    out: dict[str, dict[str, Any]] = {
        "sensor/mode": {"name": "Mode", "state_topic": state, "value_template": "{{ value_json.mode }}",
                        "icon": "mdi:turnstile"},
        "binary_sensor/broker": {"name": "Broker link", "state_topic": state, "device_class": "connectivity",
                                 "value_template": "{{ 'ON' if value_json.broker_connected else 'OFF' }}",
                                 "entity_category": "diagnostic"},
        "sensor/broker": {"name": "Broker", "state_topic": state, "value_template": "{{ value_json.broker }}",
                          "icon": "mdi:server-network", "entity_category": "diagnostic"},
        "sensor/outbox_depth": {"name": "Outbox depth", "state_topic": state, "state_class": "measurement",
                                "unit_of_measurement": "check-ins", "value_template": "{{ value_json.outbox_depth }}",
                                "icon": "mdi:tray-full"},
        "sensor/cache_age": {"name": "Pass cache age", "state_topic": state, "device_class": "duration",
                             "unit_of_measurement": "s", "state_class": "measurement",
                             "value_template": "{{ value_json.cache_age_s }}", "entity_category": "diagnostic"},
        # From the retained state, so that a Home Assistant that restarts shows them at once
        "sensor/last_decision": {"name": "Last decision", "state_topic": state,
                                 "value_template": "{{ value_json.last_decision }}", "icon": "mdi:account-check"},
        "sensor/last_reason": {"name": "Last reason", "state_topic": state,
                               "value_template": "{{ value_json.last_reason }}", "icon": "mdi:information"},
        "sensor/passages_per_minute": {"name": "Passages per minute", "state_topic": tel,
                                       "state_class": "measurement", "unit_of_measurement": "passages/min",
                                       "value_template": "{{ value_json.passages_per_minute }}",
                                       "icon": "mdi:walk"},
    }  # fmt: skip
    for name in ALARMS:
        out[f"binary_sensor/alarm_{name}"] = {
            "name": f"Alarm {name.replace('_', ' ')}",
            "state_topic": state,
            "device_class": "problem",
            "value_template": f"{{{{ 'ON' if '{name}' in (value_json.alarms_active or []) else 'OFF' }}}}",
        }
    return out


def messages(cfg: Config) -> dict[str, bytes]:
    """Discovery topic → retained payload, for every entity of this gate."""
    gid, prefix, t = cfg.gate.id, cfg.homeassistant.prefix, Topics(cfg.mqtt.topic_prefix, cfg.gate.id)
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
        background()
        while True:
            self._wake.wait()
            if self._stopping.is_set():
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
