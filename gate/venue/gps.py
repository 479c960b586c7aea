"""A GPS receiver on a serial port (NMEA 0183, parsed with pynmea2): the last valid fix, never an invented one.

GGA gives the fix quality, position, satellites and HDOP; RMC the validity and the date. A sentence whose
checksum is wrong, or that is cut short, is dropped and counted. No sentence for `silent_after_s` (unplugged,
dead) raises the `gps_silent` alarm; the port is reopened the way the QR module's is, and the alarm clears with
the first sentence."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pynmea2

from gate.config.model import SerialSection
from gate.config.policy import Stop
from gate.config.venue import GpsSection
from gate.contracts import Alarm
from gate.scan.serial_source import SerialScanner, open_port

log = logging.getLogger(__name__)
TIME_VALID_S = 600.0


@dataclass(frozen=True)
class Fix:
    lat: float
    lon: float
    fix_time: float  # Unix time of the fix, from the receiver's clock (UTC)
    satellites: int | None
    hdop: float | None
    got_at: float  # monotonic time it was read


class Gps:
    def __init__(
        self,
        cfg: GpsSection,
        alarm: Callable[[Alarm], object],
        opener: Callable[[SerialSection], Any] = open_port,
        mono: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self._alarm = alarm
        self._mono = mono
        serial = SerialSection(port=cfg.port, baud=cfg.baud, terminator="\n", max_line_bytes=128)
        self.port = SerialScanner(serial, opener, mono)
        self.fix: Fix | None = None
        self._date: datetime | None = None  # from RMC: GGA carries a time of day only
        self._offset: tuple[float, float] | None = None  # (receiver UTC - system clock, when measured)
        self.bad_sentences = 0
        self._heard = mono()
        self.silent = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gps", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2.0)
        self.port.close()

    def _run(self) -> None:
        self.run(self._stop)

    def run(self, stop: threading.Event) -> None:
        """The receiver's loop (its own thread, or under the gate's supervisor): until `stop` or `stop()`."""
        while not stop.is_set() and not self._stop.is_set():
            try:
                obs = self.port.read(0.5)
                if obs is not None:
                    self.feed(obs.payloads[0])
                self._watch()
            except Exception:  # never let the receiver stop the gate
                log.exception("gps: unexpected error; going on")

    def _watch(self) -> None:
        quiet = self._mono() - self._heard
        if not self.silent and quiet > self.cfg.silent_after_s:
            self.silent = True
            self._alarm(Alarm("gps_silent", True, f"no NMEA sentence from {self.cfg.port} for {quiet:.0f}s"))

    def feed(self, line: bytes) -> None:
        """One line from the receiver."""
        try:
            msg = pynmea2.parse(line.decode("ascii").strip(), check=True)
        except (UnicodeDecodeError, pynmea2.ParseError, pynmea2.ChecksumError, ValueError, AttributeError):
            self.bad_sentences += 1
            return
        self._heard = self._mono()
        if self.silent:
            self.silent = False
            self._alarm(Alarm("gps_silent", False, f"{self.cfg.port} speaks again"))
        if isinstance(msg, pynmea2.types.talker.RMC):
            self._rmc(msg)
        elif isinstance(msg, pynmea2.types.talker.GGA):
            self._gga(msg)

    def _rmc(self, msg: Any) -> None:
        if msg.status != "A" or msg.datestamp is None or msg.timestamp is None:
            return  # V: the receiver says it has no valid fix
        when = datetime.combine(msg.datestamp, msg.timestamp.replace(tzinfo=None), UTC)
        self._date = when
        self._offset = (when.timestamp() - time.time(), self._mono())

    def _gga(self, msg: Any) -> None:
        if not msg.gps_qual or msg.timestamp is None or not msg.lat or not msg.lon:
            return  # quality 0: no fix; a no-fix sentence never replaces the last fix
        day = (self._date or datetime.now(UTC)).date()
        when = datetime.combine(day, msg.timestamp.replace(tzinfo=None), UTC)
        if self._date is not None and when < self._date - timedelta(hours=12):
            when += timedelta(days=1)  # past midnight since the last RMC
        sats = int(msg.num_sats) if msg.num_sats else None
        hdop = float(msg.horizontal_dil) if msg.horizontal_dil else None
        self.fix = Fix(round(msg.latitude, 6), round(msg.longitude, 6), when.timestamp(), sats, hdop, self._mono())

    def clock_offset(self) -> float | None:
        """For `[clock] sync_source = "gps"`: the receiver's valid UTC minus the system clock, measured within
        TIME_VALID_S (a clock drifts little in that time), else None. Good to about half a second: RMC arrives
        a little after the second it names."""
        off = self._offset
        return None if off is None or self._mono() - off[1] > TIME_VALID_S else off[0]

    def position(self) -> dict[str, Any]:
        """What a check-in carries: the last valid fix with its age, or why there is none."""
        fix = self.fix
        if fix is None:
            return {"fix": False, "why": "no_fix"}
        age = round(self._mono() - fix.got_at, 1)
        if age > self.cfg.max_fix_age_s:
            return {"fix": False, "why": "stale", "position_age_s": age}
        return {
            "fix": True,
            "lat": fix.lat,
            "lon": fix.lon,
            "fix_time": fix.fix_time,
            "satellites": fix.satellites,
            "hdop": fix.hdop,
            "position_age_s": age,
        }


def nearest_stop(position: dict[str, Any], stops: Sequence[Stop]) -> dict[str, Any] | None:
    """The stop nearest a valid fix, if the fix is within that stop's radius (great-circle distance)."""
    if not position.get("fix"):
        return None
    best: tuple[float, Stop] | None = None
    for stop in stops:
        d = metres(position["lat"], position["lon"], stop.lat, stop.lon)
        if d <= stop.radius_m and (best is None or d < best[0]):
            best = (d, stop)
    return None if best is None else {"id": best[1].id, "name": best[1].name, "distance_m": round(best[0], 1)}


def metres(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance on a sphere of the Earth's mean radius."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * 6_371_008.8 * math.asin(min(1.0, math.sqrt(a)))
