"""Config sections for where a gate is: the venue (a fixed station, or a vehicle) and its GPS receiver."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from pydantic import Field, model_validator

from gate.config.camera import Section

ID_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"  # a venue, vehicle, route, run or stop id


@dataclass(frozen=True)
class Venue:
    id: str
    name: str
    category: str
    vehicle_id: str | None = None  # bus and taxi
    route: str | None = None  # bus: the route and the trip (run) it is on when the check-in is made
    run: str | None = None

    def as_json(self) -> dict[str, Any]:
        """A fixed venue's JSON keeps its three fields; a vehicle adds those it has."""
        return {k: v for k, v in asdict(self).items() if v is not None or k in ("id", "name", "category")}


class VenueCategory(StrEnum):
    RAIL_STATION = "rail_station"
    METRO_STATION = "metro_station"
    BUS_STATION = "bus_station"
    BUS = "bus"
    TAXI = "taxi"
    FERRY_TERMINAL = "ferry_terminal"
    AIRPORT = "airport"
    OTHER = "other"


MOBILE = (VenueCategory.BUS, VenueCategory.TAXI)


class VenueSection(Section):
    id: str = Field(pattern=ID_PATTERN, description="Venue id from the station list (a vehicle: its operator's fleet)")
    name: str = Field("", max_length=120, description="Human-readable venue name")
    category: VenueCategory = VenueCategory.RAIL_STATION
    vehicle_id: str | None = Field(None, pattern=ID_PATTERN, description="bus and taxi: the vehicle (fleet number)")
    route: str | None = Field(None, pattern=ID_PATTERN, description="bus: the route it serves now")
    run: str | None = Field(None, pattern=ID_PATTERN, description="bus: the trip (run) it is on now")

    @model_validator(mode="after")
    def _vehicle(self) -> VenueSection:
        mobile = self.category in MOBILE
        if mobile and self.vehicle_id is None:
            raise ValueError(f"venue.category is {self.category.value!r}: vehicle_id is required")
        if not mobile and (self.vehicle_id, self.route, self.run) != (None, None, None):
            raise ValueError("vehicle_id, route and run are for category 'bus' or 'taxi'")
        if self.category == VenueCategory.TAXI and (self.route, self.run) != (None, None):
            raise ValueError("a taxi has no route or run; give vehicle_id only")
        return self

    def venue(self) -> Venue:
        """The venue as check-ins, the state and `gate verify` carry it."""
        return Venue(self.id, self.name, self.category.value, self.vehicle_id, self.route, self.run)


class GpsSection(Section):
    port: str = Field("", description="NMEA 0183 receiver, e.g. /dev/serial/by-id/...; empty: no GPS")
    baud: int = Field(9600, ge=1200, le=921_600)
    max_fix_age_s: float = Field(10.0, gt=0, le=3600, description="An older fix is recorded as stale, never used")
    silent_after_s: float = Field(5.0, gt=0, le=600, description="No sentence for this long raises gps_silent")
    optional: bool = Field(False, description="A bus without a GPS receiver (check-ins say no_gps)")
