"""GPS on buses and taxis: real NMEA 0183 sentences (GGA, RMC) through a pty, bad checksums, cut and no-fix
sentences, silence and unplugging; every check-in carries the vehicle and its last valid fix, never an invented
one."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
import tty
from datetime import UTC, datetime, timedelta
from functools import reduce
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from conftest import make_config, wait_until
from gate.config.policy import Stop
from gate.config.venue import GpsSection
from gate.contracts import Alarm
from gate.core.clock import SystemClock
from gate.core.errors import ConfigError
from gate.decide.codes import Status, issue
from gate.lane.wiring import build
from gate.scan.decoders import make_decoder
from gate.scanner import DecodingSource
from gate.testing import FixedClock, ScriptedFrames
from gate.venue.gps import Gps, nearest_stop


def nmea(body: str) -> bytes:
    return f"${body}*{reduce(lambda a, b: a ^ b, body.encode()):02X}\r\n".encode()


RMC = nmea("GPRMC,123519.00,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W")
GGA = nmea("GPGGA,123519.00,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,")
GGA_NO_FIX = nmea("GPGGA,123520.00,,,,,0,00,99.99,,,,,,")
RMC_VOID = nmea("GPRMC,123520.00,V,,,,,,,230394,,,N")
MARIENPLATZ = {"id": "S1", "name": "Marienplatz", "lat": 48.11732, "lon": 11.51670, "radius_m": 50}
FIX_TIME = datetime(1994, 3, 23, 12, 35, 19, tzinfo=UTC).timestamp()


def test_a_fix_comes_from_valid_sentences_and_bad_ones_change_nothing() -> None:
    mono, alarms = FixedClock(mono=100.0), []
    gps = Gps(GpsSection(port="unused", max_fix_age_s=10), alarms.append, mono=mono)
    assert gps.position() == {"fix": False, "why": "no_fix"}
    gps.feed(RMC)
    gps.feed(GGA)
    pos = gps.position()
    assert pos == {
        "fix": True,
        "lat": 48.1173,
        "lon": 11.516667,
        "fix_time": FIX_TIME,
        "satellites": 8,
        "hdop": 0.9,
        "position_age_s": 0.0,
    }
    mono.mono += 3
    gps.feed(GGA.replace(b"4807.038", b"4907.038"))  # bad checksum: dropped and counted
    gps.feed(b"$GPGGA,1235")  # cut short
    gps.feed(b"\xff\xfe garbage")
    gps.feed(GGA_NO_FIX)  # the receiver lost the fix: the last one stays, ageing
    gps.feed(RMC_VOID)
    assert gps.bad_sentences == 3
    assert gps.position()["lat"] == 48.1173 and gps.position()["position_age_s"] == 3.0
    mono.mono += 8
    assert gps.position() == {"fix": False, "why": "stale", "position_age_s": 11.0}  # never used when old


@pytest.fixture
def pty_gps():
    master, slave = os.openpty()
    tty.setraw(slave)
    path = os.ttyname(slave)
    yield master, path
    for fd in (master, slave):
        with contextlib.suppress(OSError):  # the unplug test closed the master already
            os.close(fd)


def test_a_silent_or_unplugged_receiver_raises_an_alarm_and_reconnects(pty_gps) -> None:
    master, path = pty_gps
    alarms: list[Alarm] = []
    gps = Gps(GpsSection(port=path, silent_after_s=0.5), alarms.append)
    gps.start()
    try:
        assert wait_until(lambda: (os.write(master, RMC + GGA), gps.position()["fix"])[1], timeout=10)
        assert wait_until(lambda: any(a.name == "gps_silent" and a.active for a in alarms), timeout=10)
        os.write(master, GGA)
        assert wait_until(lambda: alarms[-1].name == "gps_silent" and not alarms[-1].active, timeout=10)
        os.close(master)  # unplugged: the read fails, the port is reopened with backoff
        assert wait_until(lambda: alarms[-1].active, timeout=10)  # silent again, and said so once
        assert [a.active for a in alarms] == [True, False, True]
    finally:
        gps.stop()


def test_a_bus_check_in_carries_vehicle_route_run_and_the_fix(tmp_path: Path, keys, pty_gps) -> None:
    master, path = pty_gps
    cfg = make_config(
        tmp_path / "state",
        keys,
        venue={"id": "city-bus", "category": "bus", "vehicle_id": "bus-1042", "route": "R7", "run": "R7-0815"},
        gps={"port": path},
        policy={"passback_seconds": 0, "stops": {"R7": [MARIENPLATZ, {"id": "S2", "lat": 48.2, "lon": 11.6}]}},
    )
    gate = build(
        cfg,
        source=DecodingSource(ScriptedFrames([]), make_decoder("auto")),
        pin_factory=MockFactory(),
        clock=SystemClock("assume_synced"),
        with_mqtt=False,
    ).start()
    try:
        gate.handle(issue(keys.private, "tok-rider001", Status.GREEN, int(time.time()) - 5, 3600).encode())
        assert wait_until(lambda: (os.write(master, RMC + GGA), gate.recorder.position()["fix"])[1], timeout=10)
        gate.handle(issue(keys.private, "tok-rider002", Status.GREEN, int(time.time()) - 5, 3600).encode())
    finally:
        gate.close()
    db = sqlite3.connect(tmp_path / "state" / "outbox.db")
    rows = [json.loads(p) for (p,) in db.execute("SELECT payload FROM outbox WHERE topic LIKE '%/checkin'")]
    first, second = (next(r for r in rows if r["token"] == t) for t in ("tok-rider001", "tok-rider002"))
    venue = {
        "id": "city-bus",
        "name": "Test Station",
        "category": "bus",
        "vehicle_id": "bus-1042",
        "route": "R7",
        "run": "R7-0815",
    }
    assert first["venue"] == second["venue"] == venue
    assert first["position"] == {"fix": False, "why": "no_fix", "stop": None}  # before the first fix: said
    assert second["position"]["fix"] is True and second["position"]["lat"] == 48.1173
    assert second["position"]["stop"] == {"id": "S1", "name": "Marienplatz", "distance_m": 3.3}


def test_the_nearest_stop_within_its_radius_is_named_never_one_further() -> None:
    stops = (Stop(id="A", lat=48.0, lon=11.0, radius_m=100), Stop(id="B", lat=48.0005, lon=11.0, radius_m=100))
    at = {"fix": True, "lat": 48.0004, "lon": 11.0}  # 44 m from A, 11 m from B: both in range, B nearer
    assert nearest_stop(at, stops) == {"id": "B", "name": "", "distance_m": 11.1}
    assert nearest_stop({**at, "lat": 48.01}, stops) is None  # over a kilometre from both
    assert nearest_stop({"fix": False, "why": "stale"}, stops) is None


@pytest.mark.parametrize(
    "venue, gps, words",
    [
        ({"category": "bus"}, {"optional": True}, "vehicle_id is required"),
        ({"category": "bus", "vehicle_id": "b1"}, {}, "gps.port is empty"),
        ({"category": "taxi", "vehicle_id": "t1", "route": "R1"}, {"optional": True}, "a taxi has no route"),
        ({"category": "rail_station", "vehicle_id": "b1"}, {}, "are for category 'bus' or 'taxi'"),
    ],
)
def test_vehicle_settings_are_checked(tmp_path: Path, venue, gps, words) -> None:
    with pytest.raises(ConfigError, match=words):
        make_config(tmp_path, None, venue=venue, gps=gps)


def test_gps_time_serves_as_the_clock_on_a_vehicle_without_network_time() -> None:
    mono, alarms = FixedClock(mono=100.0), []
    gps = Gps(GpsSection(port="unused"), alarms.append, mono=mono)
    clock = SystemClock("gps", recheck=0, gps_offset=gps.clock_offset)
    assert clock.read().synced is False  # no valid time yet: policy.on_clock_unsynced applies
    gps.feed(RMC_VOID)
    assert clock.read().synced is False  # a void RMC's time is not a valid time
    ahead = datetime.now(UTC) + timedelta(seconds=100)  # this machine's clock is 100 s behind the receiver's
    body = f"GPRMC,{ahead:%H%M%S}.00,A,4807.038,N,01131.000,E,0.0,0.0,{ahead:%d%m%y},,,A"
    gps.feed(nmea(body))
    reading = clock.read()
    assert reading.synced is True and abs(reading.wall - time.time() - 100) < 1.5  # corrected, not just trusted
    mono.mono += 601  # no valid time for over ten minutes: no longer synced
    assert clock.read().synced is False


def test_gps_as_clock_source_needs_a_receiver(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"clock\.sync_source is 'gps' but gps\.port is empty"):
        make_config(tmp_path, None, clock={"sync_source": "gps"})
