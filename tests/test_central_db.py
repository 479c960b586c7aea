"""Central at city scale: the same store behaviour on SQLite and a real PostgreSQL, contact tracing, audit,
retention by whole days, and the fleet view."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from gate.central.db import open_store
from gate.central.store import Store, row_of
from gate.central.tracing import find_contacts, fleet_report

T0 = 1_780_000_000.0  # a fixed instant (2026-05-28): tests never depend on today's date


def checkin(token: str | None, venue: str, t: float, gate: str = "lane-1", **extra: Any) -> tuple[Any, ...]:
    ev = {
        "event_id": extra.pop("event_id", uuid.uuid4().hex),
        "type": extra.pop("type", "decision"),
        "gate_id": gate,
        "venue": {"id": venue, "name": venue.title()},
        "token": token,
        "kind": "phone",
        "decision": extra.pop("decision", "admit"),
        "reason": extra.pop("reason", "admitted"),
        "companions": extra.pop("companions", 0),
        "time": t,
        "clock_synced": True,
        **extra,
    }
    return row_of(ev, json.dumps(ev).encode())


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    url = str(tmp_path / "central.db") if request.param == "sqlite" else request.getfixturevalue("pg_url")
    s = open_store(url)
    yield s
    s.close()


def planted() -> list[tuple[Any, ...]]:
    m = 60.0
    return [
        checkin("tok-case", "rail-central", T0),  # the case, twice at the same venue, once elsewhere
        checkin("tok-case", "rail-central", T0 + 180 * m),
        checkin("tok-case", "bus-north", T0 + 24 * 3600),
        checkin("tok-near", "rail-central", T0 + 10 * m, gate="lane-2"),  # 10 min after: a contact
        checkin("tok-edge", "rail-central", T0 - 30 * m),  # exactly at the window's edge: a contact
        checkin("tok-far", "rail-central", T0 + 45 * m),  # 45 min after the first, 135 before the second: not
        checkin("tok-other-venue", "bus-south", T0),  # same time, another venue: not
        checkin("tok-family", "rail-central", T0 + 170 * m, companions=2),  # one code, three people
        checkin("tok-denied", "rail-central", T0 + 5 * m, decision="deny", reason="revoked"),
        checkin("tok-near", "bus-north", T0 + 24 * 3600 + 29 * m),  # the second day's visit
        checkin("tok-near", "rail-central", T0 + 10 * m, type="passage", outcome="passed"),  # a passage, not a visit
    ]


def test_batches_are_idempotent_on_event_id(store: Store) -> None:
    rows = planted()
    assert store.write(rows[:5], []) == 5
    assert store.write(rows, []) == len(rows) - 5  # a redelivered batch stores only what is new
    assert store.write(rows + rows[:3], []) == 0  # duplicates inside one batch too
    assert len(store.select("time >= ?", [0])) == len(rows)


def test_contacts_finds_the_planted_contacts_and_no_one_outside_the_window(store: Store) -> None:
    store.write(planted(), [])
    found = find_contacts(store, "tok-case", T0 - 3600, T0 + 2 * 86400, 30)
    by = {(c["token"], c["venue_id"]): c for c in found}
    assert set(by) == {
        ("tok-near", "rail-central"),
        ("tok-edge", "rail-central"),
        ("tok-family", "rail-central"),
        ("tok-denied", "rail-central"),
        ("tok-near", "bus-north"),
    }
    near = by[("tok-near", "rail-central")]
    assert near["apart_min"] == 10 and near["overlap_min"] == 50 and near["admitted"] and near["gate_id"] == "lane-2"
    assert by[("tok-family", "rail-central")]["group_size"] == 3  # companions on one code: one group
    assert by[("tok-denied", "rail-central")]["admitted"] is False
    assert by[("tok-edge", "rail-central")]["apart_min"] == 30
    # a narrower window, and a period that leaves out the second day
    assert {c["token"] for c in find_contacts(store, "tok-case", T0 - 3600, T0 + 86400, 12)} == {
        "tok-near",
        "tok-family",
        "tok-denied",
    }


def test_riders_of_one_bus_run_are_contacts_wherever_they_boarded(store: Store) -> None:
    def ride(token: str, run: str, t: float, bus: str = "bus-1042", stop: str = "S1") -> tuple[Any, ...]:
        venue = {"id": "city-bus", "name": "City bus", "category": "bus", "vehicle_id": bus, "route": "R7", "run": run}
        position = {"fix": True, "lat": 48.1, "lon": 11.5, "stop": {"id": stop, "name": stop, "distance_m": 3.0}}
        ev = json.loads(checkin(token, "x", t)[-1]) | {"venue": venue, "position": position}
        return row_of(ev, json.dumps(ev).encode())

    store.write(
        [
            ride("tok-case", "R7-0815", T0, stop="S1"),
            ride("tok-rider", "R7-0815", T0 + 600, stop="S5"),  # the same trip, boarded four stops later
            ride("tok-next-trip", "R7-0915", T0 + 900),  # the same bus, its next trip: not a contact
            ride("tok-other-bus", "R7-0815", T0 + 300, bus="bus-2001"),  # another bus with the same run name
        ],
        [],
    )
    found = find_contacts(store, "tok-case", T0 - 3600, T0 + 3600, 30)
    assert {(c["token"], c["venue_id"]) for c in found} == {("tok-rider", "city-bus/bus-1042/R7-0815")}


def test_sqlite_and_postgresql_give_the_same_contacts(tmp_path: Path, pg_url: str) -> None:
    results = []
    for url in (str(tmp_path / "c.db"), pg_url):
        s = open_store(url)
        s.write(planted(), [])
        results.append(
            [{k: v for k, v in c.items() if k != "event_id"} for c in find_contacts(s, "tok-case", 0, 2e9, 30)]
        )
        s.close()
    assert results[0] == results[1] and len(results[0]) == 5


def test_purge_drops_whole_days_past_retention(store: Store) -> None:
    day = 86400
    rows = [checkin(f"tok-{i}", "rail-central", T0 - i * day) for i in range(40)]
    store.write(rows, [])
    gone = store.purge(T0 - 28 * day + 1)  # keep 28 days
    kept = store.select("time >= ?", [0])
    assert len(kept) + gone == 40
    assert min(r["time"] for r in kept) >= T0 - 28 * day - day  # at most the cut-off's own day is left
    assert all(r["time"] < T0 - 27 * day for r in store.select("time < ?", [T0 - 27 * day]))
    if store.url.startswith("postgresql"):
        with psycopg.connect(store.url) as db:
            parts = db.execute(
                "SELECT count(*) FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'checkins'"
            ).fetchone()
        assert parts is not None and parts[0] == len({int(r["time"] // day) for r in kept})


def test_the_collection_file_is_private(tmp_path: Path) -> None:
    s = open_store(tmp_path / "central.db")
    s.write(planted(), [])
    s.close()
    assert (tmp_path / "central.db").stat().st_mode & 0o077 == 0


def central(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gate", "central", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_contacts_and_trace_commands_are_audited(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = str(tmp_path / "c.db") if backend == "sqlite" else request.getfixturevalue("pg_url")
    s = open_store(url)
    s.write(planted(), [])
    s.close()
    period = ["--from", "2026-05-28T00:00:00", "--to", str(T0 + 2 * 86400)]
    r = central("contacts", "tok-case", "--db", url, "--operator", "epi-07", *period, "--json")
    assert r.returncode == 0, r.stderr
    assert {json.loads(line)["token"] for line in r.stdout.splitlines()} == {
        "tok-near",
        "tok-edge",
        "tok-family",
        "tok-denied",
    }
    r = central("contacts", "tok-case", "--db", url, "--operator", "epi-07", "--window", "12", "--csv")
    lines = r.stdout.splitlines()
    assert lines[0].startswith("token,group_size,admitted,venue_id") and len(lines) == 1 + 3
    r = central("contacts", "tok-case", "--db", url, "--operator", "epi-07")
    assert r.returncode == 0 and "4 contact codes (6 people with companions)" in r.stdout
    r = central("trace", "tok-near", "--db", url, "--operator", "epi-08", "--json")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 3
    r = central("contacts", "tok-case", "--db", url)  # no operator: refused before any query
    assert r.returncode == 2 and "--operator" in r.stderr
    s = open_store(url)
    audits = s.audits()
    s.close()
    assert [(a["operator"], a["action"], a["rows"]) for a in audits] == [
        ("epi-07", "contacts", 5),
        ("epi-07", "contacts", 3),
        ("epi-07", "contacts", 5),
        ("epi-08", "trace", 3),
    ]
    assert audits[0]["params"]["token"] == "tok-case" and audits[1]["params"]["window_min"] == 12


def test_purge_command_and_a_missing_database(tmp_path: Path) -> None:
    url = str(tmp_path / "c.db")
    s = open_store(url)
    now = time.time()
    s.write([checkin("tok-old", "v", now - 40 * 86400), checkin("tok-new", "v", now - 3600)], [])
    s.close()
    r = central("purge", "--db", url, "--retention-days", "28")
    assert r.returncode == 0 and "1 check-ins older than 28 days deleted" in r.stdout
    r = central("trace", "tok-new", "--db", str(tmp_path / "nope.db"), "--operator", "x")
    assert r.returncode == 1 and "no collection database" in r.stderr


def test_fleet_flags_offline_stale_and_growing_gates(store: Store) -> None:
    now = T0
    fresh = {"mode": "normal", "cache_version": 7, "cache_age_s": 600, "policy_version": 3, "clock_synced": True}
    store.seen("lane-ok", "availability", {"status": "online"}, now - 10)
    store.seen("lane-ok", "state", {**fresh, "outbox_depth": 0, "dead_letters": 0}, now - 10)
    store.seen("lane-gone", "availability", {"status": "offline"}, now - 3600)
    store.seen("lane-gone", "state", {**fresh, "outbox_depth": 3}, now - 3600)
    store.seen("lane-stale", "availability", {"status": "online"}, now - 5)
    store.seen("lane-stale", "state", {**fresh, "cache_age_s": 3 * 86400, "outbox_depth": 0}, now - 5)
    store.seen("lane-backlog", "availability", {"status": "online"}, now - 300)
    for i, depth in enumerate((10, 40, 90, 160)):
        store.seen("lane-backlog", "telemetry", {"outbox_depth": depth, "uptime_s": 100}, now - 240 + i * 60)
    store.seen("lane-backlog", "state", {**fresh, "outbox_depth": 160}, now)
    report = {r["gate_id"]: r for r in fleet_report(store, offline_min=5, stale_hours=24, now=now)}
    assert report["lane-ok"]["flags"] == []
    assert report["lane-gone"]["flags"] == ["offline"] and report["lane-gone"]["availability"] == "offline"
    assert report["lane-stale"]["flags"] == ["stale_cache"]
    assert report["lane-backlog"]["flags"] == ["outbox_growing"]
    assert report["lane-backlog"]["outbox_depth"] == 160 and report["lane-backlog"]["outbox_trend_per_min"] == 50.0


def test_a_venue_trace_pages_through_the_venue_and_its_vehicles_in_order(store: Store) -> None:
    """Keyset pages over the venue and what runs under it, merged in (time, event_id) order, ties included,
    each check-in once; a venue that only starts with the same letters is not part of it."""
    from gate.central.tracing import trace_rows

    places = ("city-bus", "city-bus/bus-1/R7", "city-bus2", "city-bus/bus-2")
    rows = [checkin(f"t{i}", places[i % 4], T0 + i // 3, event_id=f"e{i:02d}") for i in range(24)]
    store.write(rows, [])
    want = sorted((r[14], r[0]) for r in rows if r[3] != "city-bus2")
    got: list[tuple[float, str]] = []
    after = None
    while True:
        page = trace_rows(store, "ops", None, "city-bus", T0 - 1, T0 + 100, limit=4, after=after)
        got += [(r["time"], r["event_id"]) for r in page]
        if len(page) < 4:
            break
        after = got[-1]
    assert got == want and len(want) == 18


def test_contacts_page_by_keyset_each_once_nearest_pairing_and_totals_over_all(store: Store) -> None:
    """The database deduplicates (one row per contact check-in, paired with the token's nearest visit), orders
    by (time, event_id), ties included, and counts codes and people over every page, whichever page is asked."""
    from gate.central.tracing import contacts_page

    rows = [checkin("tok-case", "rail-central", T0), checkin("tok-case", "rail-central", T0 + 600)]
    rows += [checkin(f"tok-{i % 7}", "rail-central", T0 + 60 * (i // 2), event_id=f"e{i:02d}") for i in range(20)]
    rows.append(checkin("tok-6", "rail-central", T0 + 5, companions=3, event_id="e99"))
    store.write(rows, [])
    everything = find_contacts(store, "tok-case", T0 - 3600, T0 + 3600, 30)
    assert len(everything) == 21 and [(c["time"], c["event_id"]) for c in everything] == sorted(
        (c["time"], c["event_id"]) for c in everything
    )
    assert next(c for c in everything if c["event_id"] == "e19")["my_time"] == T0 + 600  # 9 min: the nearer
    got: list[dict[str, Any]] = []
    after = None
    while True:
        page = contacts_page(store, "tok-case", T0 - 3600, T0 + 3600, 30, limit=4, after=after)
        assert (page.codes, page.people, page.found) == (7, 10, 21)
        got += page.rows
        if len(page.rows) < 4:
            break
        after = (got[-1]["time"], got[-1]["event_id"])
    assert got == everything
    none = contacts_page(store, "tok-nobody", T0 - 3600, T0 + 3600, 30, limit=4)
    assert (none.rows, none.codes, none.people, none.found) == ([], 0, 0, 0)


def test_the_kept_fleet_report_reads_only_changed_gates_and_ages_with_the_clock(store: Store) -> None:
    """The console's report equals the CLI's; a second read decodes only the gate that changed, and a gate
    falls offline by the clock alone, without a new document."""
    from gate.central.console.fleetview import FleetLines

    for i in range(5):
        store.seen(f"lane-{i}", "availability", {"status": "online"}, T0 - 10)
        store.seen(f"lane-{i}", "state", {"mode": "normal", "cache_age_s": 60, "outbox_depth": i}, T0 - 10)
    lines = FleetLines(offline_min=5, stale_hours=24)
    assert lines.report(store, now=T0) == fleet_report(store, offline_min=5, stale_hours=24, now=T0)
    store.seen("lane-3", "state", {"mode": "emergency", "cache_age_s": 60, "outbox_depth": 9}, T0)
    asked: list[list[str]] = []
    docs = store.fleet_docs
    store.fleet_docs = lambda ids: asked.append(list(ids)) or docs(ids)  # type: ignore[method-assign]
    later = lines.report(store, now=T0 + 120)
    assert asked == [["lane-3"]]
    assert later == fleet_report(store, offline_min=5, stale_hours=24, now=T0 + 120)
    assert [r["mode"] for r in later] == ["normal", "normal", "normal", "emergency", "normal"]
    gone = lines.report(store, now=T0 + 600)
    assert asked == [["lane-3"]] and [r["flags"] for r in gone] == [["offline"]] * 5
    assert gone[0]["last_seen_ago_s"] == 610.0


def test_a_collector_applies_retention_as_it_starts(tmp_path: Path) -> None:
    """The daily purge runs on the collector's first step too, not a day after the machine booted."""
    from gate.central.collect import Checks, Collector

    s = open_store(tmp_path / "c.db")
    now = time.time()
    s.write([checkin("tok-old", "v", now - 40 * 86400), checkin("tok-new", "v", now - 60)], [])
    col = Collector(s, Checks({}, accept_unsigned=True), retention_days=28)
    col.step()
    assert [r["token"] for r in s.select("time >= ?", [0])] == ["tok-new"] and col.stats["purged"] == 1
    s.close()


def test_while_the_database_is_down_qos0_reports_are_refused_past_the_bound_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The collector's queue is bounded: past INBOX_LIMIT waiting, QoS 0 fleet reports are refused (counted,
    logged once), while QoS 1 check-ins (bounded by the broker's in-flight window) are all kept and stored."""
    import paho.mqtt.client as mqtt

    from gate.central.collect import Checks, Collector

    limit = 50
    store = open_store(tmp_path / "c.db")
    col = Collector(store, Checks({}, accept_unsigned=True), retention_days=None, inbox_limit=limit)
    col.client = type("Acks", (), {"ack": lambda self, mid, qos: None})()
    real_write, down = store.write, [True]

    def write(rows: Any, quarantined: Any) -> int:
        if down[0]:
            raise OSError("database is down")
        return real_write(rows, quarantined)

    store.write = write  # type: ignore[method-assign]

    def message(topic: str, payload: bytes, qos: int, mid: int) -> mqtt.MQTTMessage:
        m = mqtt.MQTTMessage(mid, topic.encode())
        m.payload, m.qos = payload, qos
        return m

    caplog.set_level("ERROR")
    try:
        for _ in range(limit + 30):
            col.on_message(None, None, message("gate/lane-q/telemetry", b'{"uptime_s": 1}', 0, 0))
        assert not col.flush()
        raw = checkin("tok-q1", "v", time.time(), gate="lane-q")[-1].encode()  # the payload, as sent
        col.on_message(None, None, message("gate/lane-q/checkin", raw, 1, 7))
        assert col.stats["refused"] == 30 and len(col._inbox) == limit + 1
        assert caplog.text.count("QoS 0 reports refused") == 1
        down[0] = False
        while col._inbox:
            assert col.flush()
        assert [r["token"] for r in store.select("time >= ?", [0])] == ["tok-q1"]
    finally:
        store.close()


def test_a_buss_last_stop_reaches_the_fleet_view(tmp_path: Path) -> None:
    """A bus's check-ins name the stop it is at; the fleet view shows the last one (one write per batch)."""
    import paho.mqtt.client as mqtt

    from gate.central.collect import Checks, Collector

    store = open_store(tmp_path / "c.db")
    col = Collector(store, Checks({}, accept_unsigned=True), retention_days=None)
    col.client = type("Acks", (), {"ack": lambda self, mid, qos: None})()
    bus = {"id": "city-bus", "vehicle_id": "bus-1042", "route": "R7", "run": "R7-0815"}
    for i, stop in enumerate(("Marienplatz", "Odeonsplatz", None)):
        position = {"status": "ok", "stop": {"id": f"S{i}", "name": stop} if stop else None}
        ev = {"event_id": f"e{i}", "type": "decision", "gate_id": "bus-1042", "venue": bus, "token": f"tok-bus{i}"}
        raw = json.dumps({**ev, "decision": "admit", "time": T0 + i * 60, "position": position})
        m = mqtt.MQTTMessage(i + 1, b"gate/bus-1042/checkin")
        m.payload, m.qos = raw.encode(), 1
        col.on_message(None, None, m)
    store.seen("bus-1042", "state", {"venue": bus}, T0)
    assert col.flush()
    [row] = fleet_report(store, offline_min=5, stale_hours=24, now=T0)
    assert (row["route"], row["run"], row["last_stop"]) == ("R7", "R7-0815", "Odeonsplatz")
    store.close()
