"""`gate demo --venue bus`: the demo lane on a bus on route R7, its GPS receiver a pty replaying a recorded NMEA
track (RMC and GGA, a no-fix start and one corrupted line) along three stops."""

from __future__ import annotations

import contextlib
import os
import threading
import tty
from pathlib import Path
from typing import Any

TRACK = Path(__file__).with_name("tracks") / "r7.nmea"
LINES_PER_SECOND = 10.0  # the track's seconds pass five times faster than real ones: the demo is short
STOPS = [
    {"id": "S1", "name": "Marienplatz", "lat": 48.13743, "lon": 11.57549, "radius_m": 40.0},
    {"id": "S2", "name": "Odeonsplatz", "lat": 48.14103, "lon": 11.57549, "radius_m": 40.0},
    {"id": "S3", "name": "Universitaet", "lat": 48.14463, "lon": 11.57549, "radius_m": 40.0},
]


def bus_sections(gps_port: str) -> dict[str, Any]:
    return {
        "venue": {"id": "city-bus", "name": "City bus (demo)", "category": "bus", "vehicle_id": "bus-1042"}
        | {"route": "R7", "run": "R7-0815"},
        "gps": {"port": gps_port, "max_fix_age_s": 5.0},
        "policy": {"stops": {"R7": STOPS}},
    }


class TrackPlayer:
    """Writes the track into a pty's master, line by line, round and round, until closed."""

    def __init__(self, track: Path = TRACK) -> None:
        self.lines = [line + b"\r\n" for line in track.read_bytes().splitlines() if line]
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._play, name="nmea-track", daemon=True)
        self._thread.start()

    def _play(self) -> None:
        i = 0
        while not self._stop.wait(1 / LINES_PER_SECOND):
            with contextlib.suppress(OSError):
                os.write(self._master, self.lines[i % len(self.lines)])
            i += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
