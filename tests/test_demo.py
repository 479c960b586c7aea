"""`gate demo --once` against a real broker: every decision shown is one check-in a subscriber receives.

The demo runs in real time (about 30 s), so each of its three runs (station with --json, station as a table, a bus)
is made once per module, all three at once, by one module-scoped fixture; the tests read what they printed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from conftest import BROKER_KIND, Subscriber, free_port, new_broker

# The module's fixture makes the three demo runs (one after another on RabbitMQ): more than one test's time.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@dataclass
class DemoRun:
    result: subprocess.CompletedProcess[str]
    sub: Subscriber


def finish(proc: subprocess.Popen[str], sub: Subscriber) -> DemoRun:
    out, err = proc.communicate(timeout=300)
    return DemoRun(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), sub)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, DemoRun]]:
    """The three demo runs, made once for the module, at the same time, each against its own broker."""
    metrics = f"127.0.0.1:{free_port()}"
    runs = {
        "json": (["--json", "--metrics", metrics], "#"),
        "table": ([], "#"),
        "bus": (["--json", "--venue", "bus"], "gate/+/checkin"),
    }
    brokers = []
    subs = {}
    procs = {}
    done = {}
    try:
        for name, (args, topic) in runs.items():
            broker = new_broker(tmp_path_factory.mktemp(f"demo-{name}"))
            broker.start()
            brokers.append(broker)
            subs[name] = Subscriber(broker, topic)
            cmd = [sys.executable, "-m", "gate", "demo", "--once", "--broker", f"{broker.host}:{broker.port}", *args]
            procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            if BROKER_KIND == "rabbitmq":  # one RabbitMQ node at a time: three at once outgrow a small machine
                done[name] = finish(procs[name], subs[name])
                broker.stop()
        for name, proc in procs.items():
            if name not in done:
                done[name] = finish(proc, subs[name])
        yield done
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for sub in subs.values():
            sub.close()
        for broker in brokers:
            broker.stop()


def test_demo_once_exits_0_and_every_shown_decision_reached_the_broker(demo_run: dict[str, Any]) -> None:
    r, sub = demo_run["json"].result, demo_run["json"].sub
    assert r.returncode == 0, r.stdout + r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]  # every line is one whole JSON object
    events = [rec["event"] for rec in records]
    assert events[0] == "start" and events[-1] == "done" and records[-1]["ok"] is True
    shown = {rec["event_id"] for rec in records if rec["event"] == "decision"}
    assert len(shown) == events.count("decision") == 14  # one line per sample, ids unique
    received = sub.wait_for_ids("/checkin", shown, type="decision")
    assert received == shown
    reasons = {rec["reason"] for rec in records if rec["event"] == "decision"}
    assert {
        "admitted",
        "replay",
        "expired",
        "forged_signature",
        "unknown_key",
        "status_red",
        "revoked",
        "status_yellow_assist",
        "staff_assisted",
        "malformed",
    } <= reasons
    acked = {i for rec in records if rec["event"] == "delivered" for i in rec["event_ids"]}
    assert shown <= acked  # the demo showed each check-in's delivery
    passages = [rec for rec in records if rec["event"] == "passage"]
    assert {p["decision_id"] for p in passages} <= shown and {p["outcome"] for p in passages} >= {"passed"}
    # Home Assistant discovery: one device, its entities on the demo's retained state and telemetry
    configs = {t: json.loads(p) for t, p, _ in sub.messages if t.startswith("homeassistant/") and p}
    assert "homeassistant/sensor/gate_demo-lane-1/mode/config" in configs
    assert "homeassistant/binary_sensor/gate_demo-lane-1/alarm_outbox_full/config" in configs
    assert {c["device"]["identifiers"][0] for c in configs.values()} == {"gate_demo-lane-1"}
    assert {c["availability_topic"] for c in configs.values()} == {"gate/demo-lane-1/availability"}
    # /metrics was served during the run, with the demo's decisions counted by reason
    scraped = next(rec for rec in records if rec["event"] == "scraped")["samples"]
    assert scraped['gate_decisions_total{reason="admitted"}'] >= 1
    assert scraped['gate_decisions_total{reason="forged_signature"}'] == 1


def test_demo_table_has_one_whole_line_per_decision(demo_run: dict[str, Any]) -> None:
    r = demo_run["table"].result
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    eid = r"[0-9a-f]{8}-[0-9a-f]{4}"
    kinds = {
        "decision": rf"\S.* check-in {eid} stored",
        "passage": r" +passage \d: \w+",
        "delivered": rf" +delivered: broker acked check-in {eid}(, {eid})*",
        "start": r"gate demo: lane .*",
        "discovery": r"gate demo: Home Assistant discovery under homeassistant/\+/gate_demo-lane-1/#",
        "done": r"gate demo: done; all \d+ check-ins .* acknowledged .*",
    }
    seen = [next((k for k, rx in kinds.items() if re.fullmatch(rx, line)), line) for line in lines]
    assert set(seen) <= set(kinds), "merged or garbled lines"
    assert seen.count("decision") == 14 and seen[0] == "start" and seen[-1] == "done"


def test_demo_on_a_bus_records_vehicle_trip_position_and_stop(demo_run: dict[str, Any]) -> None:
    """`gate demo --venue bus`: the GPS is a pty replaying a recorded NMEA track along route R7's stops."""
    from gate.demo.bus import STOPS
    from gate.venue.gps import metres

    r, sub = demo_run["bus"].result, demo_run["bus"].sub
    assert r.returncode == 0, r.stdout + r.stderr
    decisions = [rec for rec in map(json.loads, r.stdout.splitlines()) if rec["event"] == "decision"]
    assert len(decisions) == 14
    trip = {"vehicle_id": "bus-1042", "route": "R7", "run": "R7-0815"}
    assert all(d["venue"].items() >= trip.items() for d in decisions)
    fixes = [d["position"] for d in decisions if d["position"]["fix"]]
    assert fixes, "no decision had a fix"
    for p in (d["position"] for d in decisions):
        if not p["fix"]:
            assert p["why"] in ("no_fix", "stale") and "lat" not in p  # said, never invented
            continue
        assert p["lon"] == 11.57549 and 48.13743 <= p["lat"] <= 48.14463  # on the recorded street
        near = [s for s in STOPS if metres(p["lat"], p["lon"], s["lat"], s["lon"]) <= s["radius_m"]]
        assert (p["stop"] or {}).get("id") == (near[0]["id"] if near else None)
    received = [json.loads(m) for m in sub.wait_for("/checkin", 14)]
    assert {json.dumps(c["venue"], sort_keys=True) for c in received if c["type"] == "decision"} == {
        json.dumps({"id": "city-bus", "name": "City bus (demo)", "category": "bus", **trip}, sort_keys=True)
    }
