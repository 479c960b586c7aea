"""Operators' monitoring: Prometheus /metrics (checked by promtool) and /healthz, Home Assistant discovery
announced and withdrawn, and the Grafana dashboard built on the metrics the gate really serves."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from gpiozero.pins.mock import MockFactory

from conftest import free_port, make_config, require, wait_until
from gate.contracts import ALARMS
from gate.core.clock import SystemClock
from gate.decide.codes import Status, issue
from gate.lane.wiring import build
from gate.scan.decoders import make_decoder
from gate.scanner import DecodingSource
from gate.testing import ScriptedFrames

ROOT = Path(__file__).resolve().parent.parent


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def make(tmp_path: Path, keys, broker=None, start: bool = True, **sections):
    """A gate built and (`start`) started on this thread, which then owns the lane's connections."""
    mqtt = {"mqtt": {"host": broker.host, "port": broker.port}} if broker else {}
    cfg = make_config(tmp_path / "state", keys, policy={"passback_seconds": 0}, **mqtt, **sections)
    src = DecodingSource(ScriptedFrames([]), make_decoder("auto"))
    gate = build(
        cfg, source=src, pin_factory=MockFactory(), clock=SystemClock("assume_synced"), with_mqtt=broker is not None
    )
    return gate.start() if start else gate


def test_metrics_pass_promtool_and_healthz_follows_the_scan_loop(tmp_path, keys) -> None:
    listen = f"127.0.0.1:{free_port()}"
    gate = make(tmp_path, keys, start=False, metrics={"listen": listen})
    started = threading.Event()
    go = threading.Event()
    stop = threading.Event()

    def lane_thread() -> None:  # the lane's connections belong to the thread that starts and runs it
        gate.start()
        gate.cache.apply_delta([("tok-bad00001", 2, None, 0, None)], [], seq=1)
        now = int(time.time())
        gate.handle(issue(keys.private, "tok-good0001", Status.GREEN, now - 5, 3600).encode())
        gate.handle(issue(keys.private, "tok-bad00001", Status.GREEN, now - 5, 3600).encode())
        gate.handle(b"not a code")
        gate.stats.scanned(1.3)
        started.set()
        if go.wait(30):
            gate.run(stop)

    lane = threading.Thread(target=lane_thread, name="lane")
    lane.start()
    try:
        assert started.wait(30)
        status, _ = get(f"http://{listen}/healthz")
        assert status == 503  # the scan loop is not running yet
        go.set()
        assert wait_until(lambda: get(f"http://{listen}/healthz")[0] == 200)
        status, text = get(f"http://{listen}/metrics")
        assert status == 200
        for other in ("/", "/metrics/x", "/favicon.ico"):
            assert get(f"http://{listen}{other}")[0] == 404, other
        stop.set()
        lane.join(10)
        assert wait_until(lambda: get(f"http://{listen}/healthz")[0] == 503)
    finally:
        go.set()
        stop.set()
        lane.join(10)
        gate.close()
    r = subprocess.run([require("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'gate_decisions_total{reason="admitted"} 1.0' in text
    assert 'gate_decisions_total{reason="status_red"} 1.0' in text
    assert 'gate_decisions_total{reason="malformed"} 1.0' in text
    assert 'gate_decode_seconds_bucket{le="0.002"} 1.0' in text and "gate_decode_seconds_count 1.0" in text
    for name in ALARMS:
        assert f'gate_alarm_active{{alarm="{name}"}} 0.0' in text
    for family in (
        "gate_outbox_depth",
        "gate_outbox_oldest_age_seconds",
        "gate_cache_age_seconds",
        "gate_broker_connected",
        "gate_source_restarts_total",
        "gate_passages_total",
        "gate_clock_synced",
        "gate_dead_letters",
        "gate_broker_connects_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ):
        assert f"# TYPE {family.removesuffix('_total')}" in text, family
    assert re.search(r'^gate_build_info\{python="[\d.]+",version="[^"]+"\} 1\.0$', text, re.M)
    assert 'gate_decisions_total{reason="expired"} 0.0' in text  # every reason from the start, at 0
    assert 'gate_passages_total{outcome="passed"} 0.0' in text
    assert "gate_cache_synced 1.0" in text  # the delta applied above is central vouching for the cache
    assert re.search(r"^gate_cache_age_seconds \d+\.\d+$", text, re.M)


def test_a_metrics_port_in_use_is_logged_and_the_gate_runs_on(tmp_path, keys, caplog) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        gate = make(tmp_path, keys, metrics={"listen": f"127.0.0.1:{s.getsockname()[1]}"})
        gate.close()
    assert "metrics: cannot listen on 127.0.0.1:" in caplog.text


def test_home_assistant_discovery_is_announced_then_removed_when_turned_off(
    tmp_path, keys, broker, subscriber_factory
) -> None:
    sub = subscriber_factory(broker, "homeassistant/#")
    gate = make(tmp_path, keys, broker, homeassistant={"discovery": True})
    expected = 9 + len(
        ALARMS
    )  # mode, broker link, broker, broker failure, outbox, cache age, last decision and reason, passages
    wait_until(lambda: len({t for t, p, _ in sub.messages if p}) >= expected)
    configs = {t: json.loads(p) for t, p, _ in sub.messages if p}
    assert len(configs) == expected
    mode = configs["homeassistant/sensor/gate_lane-t/mode/config"]
    assert mode["state_topic"] == "gate/lane-t/state" and mode["unique_id"] == "gate_lane-t_mode"
    assert mode["default_entity_id"] == "sensor.gate_lane_t_mode" and "object_id" not in mode  # HA 2025.10+
    last = configs["homeassistant/sensor/gate_lane-t/last_decision/config"]
    assert last["state_topic"] == "gate/lane-t/state"  # retained: known at once after Home Assistant restarts
    assert mode["availability_topic"] == "gate/lane-t/availability" and mode["device"]["name"] == "Gate lane-t"
    fire = configs["homeassistant/binary_sensor/gate_lane-t/alarm_fire/config"]
    assert fire["device_class"] == "problem" and "'fire' in" in fire["value_template"]
    failure = configs["homeassistant/sensor/gate_lane-t/broker_failure/config"]  # the reason, named
    assert "broker_failure" in failure["value_template"] and failure["entity_category"] == "diagnostic"
    assert "discovery" in {t.name for t in threading.enumerate()}
    gate.close()
    assert "discovery" not in {t.name for t in threading.enumerate()}  # stopped with the gate
    gate = make(tmp_path, keys, broker, homeassistant={"discovery": False})  # same state dir
    wait_until(lambda: sum(1 for _, p, _ in sub.messages if not p) >= expected)
    assert {t for t, p, _ in sub.messages if not p} == set(configs)  # an empty retained config removes each
    gate.close()
    later = subscriber_factory(broker, "homeassistant/#")
    later.client.publish("homeassistant/marker", b"x", qos=1)  # comes after any retained config the broker has
    wait_until(lambda: later.on("/marker"))
    assert [t for t, p, _ in later.messages if p and t != "homeassistant/marker"] == []
    assert not (tmp_path / "state" / "homeassistant.json").exists()


def test_discovery_never_runs_on_pahos_thread(tmp_path, keys) -> None:
    """The up-listener only wakes the discovery thread: the file I/O and the publishes are done there."""
    from gate.ops.homeassistant import Discovery

    (tmp_path / "state").mkdir()
    cfg = make_config(tmp_path / "state", keys, homeassistant={"discovery": True})
    published: list[str] = []

    class Link:
        def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
            published.append(threading.current_thread().name)

    d = Discovery(cfg, Link())  # type: ignore[arg-type]
    d.start()
    try:
        d.connected()  # as paho calls it: it returns at once, having published nothing on this thread
        assert wait_until(lambda: len(published) >= 9 + len(ALARMS), 10)
        assert set(published) == {"discovery"}  # never the caller's (paho's) thread
    finally:
        d.stop()


def test_the_retained_state_keeps_the_last_decision(tmp_path, keys) -> None:
    gate = make(tmp_path, keys)
    try:
        assert gate.state()["last_decision"] is None
        gate.handle(issue(keys.private, "tok-last01", Status.RED, int(time.time()), 600).encode())
        st = gate.state()
        assert (st["last_decision"], st["last_reason"]) == ("deny", "status_red") and "tok-last01" not in str(st)
    finally:
        gate.close()


def test_the_grafana_dashboard_uses_only_metrics_the_gate_serves(tmp_path, keys) -> None:
    listen = f"127.0.0.1:{free_port()}"
    gate = make(tmp_path, keys, metrics={"listen": listen})
    try:
        text = get(f"http://{listen}/metrics")[1]
        served = set(re.findall(r"^# TYPE (\w+) (\w+)", text, re.M))
    finally:
        gate.close()
    # never synced: an age that an alert `gate_cache_age_seconds > 86400` catches, not NaN
    assert "gate_cache_age_seconds +Inf" in text and "gate_cache_synced 0.0" in text
    names = set()
    for name, kind in served:
        names |= {name, f"{name}_total"} if kind == "counter" else {name}
        names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else set()
    dash = json.loads((ROOT / "docs/grafana/gate.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b(gate_\w+)", e)}
    assert used and used <= names, used - names


def test_the_fleet_alert_rules_pass_promtool_and_use_only_served_metrics(tmp_path, keys) -> None:
    rules = ROOT / "docs/prometheus"
    promtool = require("promtool")
    for cmd in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts.test.yml"]):
        r = subprocess.run([promtool, *cmd], cwd=rules, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
    listen = f"127.0.0.1:{free_port()}"
    gate = make(tmp_path, keys, metrics={"listen": listen})
    try:
        text = get(f"http://{listen}/metrics")[1]
    finally:
        gate.close()
    served = set(re.findall(r"^(\w+)[{ ]", text, re.M))
    used = set(re.findall(r"\b((?:gate|process)_\w+)", (rules / "alerts.yml").read_text()))
    assert used and used <= served, used - served
