"""Config sections for a station's monitoring: Home Assistant discovery and the Prometheus endpoint."""

from __future__ import annotations

from argparse import ArgumentTypeError

from pydantic import Field, field_validator

from gate.config.camera import Section
from gate.core.address import broker_address


class HomeAssistantSection(Section):
    discovery: bool = Field(False, description="Announce this gate as a Home Assistant device (MQTT discovery)")
    prefix: str = Field(
        "homeassistant", pattern=r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$", description="Home Assistant's discovery prefix"
    )
    control: bool = Field(
        False, description="Also a select for the requested mode, served by `gate central ha-bridge` (signed commands)"
    )
    free_pass_control: bool = Field(False, description="The select also offers free_pass (the bridge must allow it)")


class MetricsSection(Section):
    listen: str = Field(
        "", description='HOST:PORT for /metrics (Prometheus) and /healthz, e.g. "127.0.0.1:9108"; empty: off'
    )

    @field_validator("listen")
    @classmethod
    def _address(cls, v: str) -> str:
        if v:
            try:
                broker_address(v)  # HOST:PORT, port in range: the same rules as a broker's address
            except ArgumentTypeError as exc:
                raise ValueError(str(exc)) from None
        return v
