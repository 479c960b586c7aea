"""systemd/gate-collect@.service: hardened (systemd-analyze security), and its ExecStart, as written, runs two
collectors in one shared-subscription group into one PostgreSQL database that together store every check-in
(a real provisioned mosquitto, a real gate, real PostgreSQL)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from conftest import ProvisionedBroker, free_port, make_config, require, wait_until
from gate.decide.codes import Status, issue
from gate.lane.wiring import build
from gate.scan.decoders import make_decoder
from gate.scanner import DecodingSource
from gate.testing import ScriptedFrames

pytestmark = pytest.mark.slow  # starts a broker, a daemon, a database or a browser

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd/gate-collect@.service"


def test_the_collector_unit_is_rated_ok(tmp_path: Path) -> None:
    unit = tmp_path / "gate-collect@collector-1.service"
    unit.write_text(UNIT.read_text())
    r = subprocess.run(
        [require("systemd-analyze"), "security", "--offline=yes", str(unit)], capture_output=True, text=True, timeout=60
    )
    m = re.search(r"Overall exposure level for gate-collect@collector-1.service: ([0-9.]+) (\w+)", r.stdout)
    assert m is not None, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.5 and m.group(2) == "OK", m.group(0)


def exec_start(instance: str, etc: Path, env: dict[str, str]) -> list[str]:
    """The unit's ExecStart as systemd runs it: %i and ${VAR} expanded, /opt/gate and /etc/gate moved."""
    line = next(x for x in UNIT.read_text().splitlines() if x.startswith("ExecStart="))
    line = line.removeprefix("ExecStart=").replace("%i", instance).replace("/etc/gate", str(etc))
    line = re.sub(r"\$\{(\w+)\}", lambda m: env[m.group(1)], line)
    argv = shlex.split(line)
    assert argv[0] == "/opt/gate/venv/bin/gate"
    return [sys.executable, "-m", "gate", *argv[1:]]


def test_two_collectors_from_the_unit_store_every_check_in_once(broker_home, tmp_path, keys, pg_url) -> None:
    d = broker_home / "broker"
    plain = free_port()
    provision = [sys.executable, "-m", "gate", "central", "provision"]
    for name, role in (("lane-01", "gate"), ("collector-1", "collector"), ("collector-2", "collector")):
        extra = ["--port", str(plain), "--tls-port", str(free_port())] if name == "lane-01" else []
        subprocess.run(
            [*provision, name, "--role", role, "--broker-dir", str(d), *extra], check=True, capture_output=True
        )
    broker = ProvisionedBroker(d, plain, 0)
    broker.start()
    # /etc/gate/central/… and /etc/gate/devices as the unit's comment lays them out
    etc = tmp_path / "etc-gate"
    (etc / "central").mkdir(parents=True)
    (etc / "devices").symlink_to(d / "devices")
    env = {"GATE_DB": pg_url, "GATE_GROUP": "city"}
    (etc / "central" / "collect.env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    procs = []
    for name in ("collector-1", "collector-2"):
        (etc / "central" / f"{name}.toml").write_text(
            f'[mqtt]\nhost = "127.0.0.1"\nport = {plain}\nusername = "{name}"\npassword_file = "mqtt-password"\n'
        )
        creds = tmp_path / f"creds-{name}"  # what LoadCredential= hands the service
        creds.mkdir()
        (creds / "mqtt-password").write_text((d / "credentials" / name / "mqtt-password").read_text())
        procs.append(
            subprocess.Popen(
                exec_start(name, etc, env),
                env={**os.environ, "CREDENTIALS_DIRECTORY": str(creds)},
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    creds = d / "credentials" / "lane-01"
    cfg = make_config(
        tmp_path / "state",
        keys,
        gate={"id": "lane-01", "device_key": str(creds / "device.key")},
        policy={"passback_seconds": 0},
        mqtt={
            "host": "127.0.0.1",
            "port": plain,
            "username": "lane-01",
            "protocol": "5",
            "password_file": str(creds / "mqtt-password"),
        },
    )
    g = build(cfg, source=DecodingSource(ScriptedFrames([]), make_decoder("zxing")), pin_factory=MockFactory()).start()
    try:
        for p in procs:
            line = p.stderr.readline() if p.stderr else ""
            assert "subscribed to $share/city/gate/+/checkin" in line, line
        import psycopg

        sent = {
            g.handle(issue(keys.private, f"tok-u{i:05d}", Status.RED, int(time.time()), 600).encode())[1].event_id
            for i in range(200)
        }

        def stored() -> set[str]:
            with psycopg.connect(pg_url) as db:
                if db.execute("SELECT to_regclass('checkins')").fetchone() == (None,):
                    return set()
                return {r[0] for r in db.execute("SELECT event_id FROM checkins")}

        assert wait_until(lambda: stored() >= sent, 60)
        with psycopg.connect(pg_url) as db:
            assert db.execute("SELECT count(*) FROM checkins").fetchone() == (len(sent),)
        for p in procs:  # KillSignal=SIGINT: each flushes what it holds and exits 0
            p.send_signal(signal.SIGINT)
        for p in procs:
            assert p.wait(30) == 0
            out = p.stderr.read() if p.stderr else ""
            assert re.search(r"stored [1-9]\d* new", out), out  # both shared the work
    finally:
        for p in procs:
            p.kill()
        g.close()
        broker.stop()
