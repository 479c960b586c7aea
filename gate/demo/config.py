"""The demo lane's configuration (`gate demo`)."""

from __future__ import annotations

from pathlib import Path

from gate.config.model import Config, parse_config
from gate.demo.bus import bus_sections

RELAY, PASSAGE = 17, 5


def demo_config(state: Path, broker: tuple[str, int] | None, metrics: str = "", gps_port: str = "") -> Config:
    """The demo lane: mock pins, a simulated camera, Home Assistant discovery on, /metrics where asked."""
    host, port = broker or ("localhost", 1883)
    return parse_config(
        {
            "gate": {"id": "demo-lane-1", "state_dir": str(state)},
            "venue": {"id": "rail-central", "name": "Central Station (demo)", "category": "rail_station"},
            "scanner": {"source": "camera", "rearm_seconds": 5.0, "absent_seconds": 0.4},
            "clock": {"sync_source": "assume_synced"},
            "gpio": {
                "pin_factory": "mock",
                "relay": {"pin": RELAY, "pulse_seconds": 0.3},
                "indicator": {"green": 22, "red": 27, "amber": 23},
                "buzzer": {"pin": 24},
                "passage": {"pin": PASSAGE, "timeout_seconds": 1.5},
            },
            "mqtt": {"host": host, "port": port, "telemetry_seconds": 5},
            "homeassistant": {"discovery": True},
            "metrics": {"listen": metrics},
        }
        | (bus_sections(gps_port) if gps_port else {}),
        "demo",
    )
