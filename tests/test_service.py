"""The systemd service: sd_notify, the watchdog, SIGHUP reload, `gate status`, the unit and install.sh."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from conftest import make_config, require, wait_until
from fakes import Feeder, daemon_config, start, wait_log
from gate.core.clock import SystemClock
from gate.core.sdnotify import Notifier
from gate.lane.wiring import build
from gate.scanner import Observation

# Starts a broker, a daemon, a database or a browser; install.sh makes a venv and installs into it (its subprocess
# timeout is 600 s): more than one test's default time on a busy machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parent.parent


class NotifySocket:
    """A fake $NOTIFY_SOCKET: collects what the service sends."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def lines(self, prefix: str) -> list[float]:
        return [t for t, line in self.messages if line.startswith(prefix)]

    def close(self) -> None:
        self._stop.set()
        self._t.join(1)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path):
    s = NotifySocket(tmp_path / "notify.sock")
    yield s
    s.close()


def test_daemon_speaks_sd_notify_ready_watchdog_stopping(tmp_path, keys, broker, notify_socket) -> None:
    feeder = Feeder(keys)
    try:
        cfg = daemon_config(tmp_path, keys, broker, feeder.port)
        env = {"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "600000"}
        proc = start(cfg, tmp_path / "gate.log", env)
        assert wait_until(lambda: notify_socket.lines("READY=1"), 30)
        assert wait_until(lambda: len(notify_socket.lines("WATCHDOG=1")) >= 4, 30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
    finally:
        feeder.close()
    ready = notify_socket.lines("READY=1")
    pings = notify_socket.lines("WATCHDOG=1")
    stopping = notify_socket.lines("STOPPING=1")
    assert ready and stopping and len(pings) >= 4
    assert ready[0] <= pings[0] and pings[-1] <= stopping[0]


class HangingSource:
    name = "hanging"

    def __init__(self, hang_after: int) -> None:
        self.reads, self.hang_after = 0, hang_after
        self.release = threading.Event()
        self.hung_at: float | None = None

    def read(self, timeout: float) -> Observation | None:
        self.reads += 1
        if self.reads > self.hang_after:
            self.hung_at = time.monotonic()
            self.release.wait(30)  # the camera driver is wedged
        time.sleep(min(timeout, 0.01))
        return Observation(())

    def close(self) -> None:
        self.release.set()


def test_watchdog_pings_stop_when_the_scan_loop_hangs(tmp_path, keys, notify_socket) -> None:
    src = HangingSource(hang_after=30)
    gate = build(
        make_config(tmp_path / "state", keys),
        source=src,
        pin_factory=MockFactory(),
        clock=SystemClock("assume_synced"),
        with_mqtt=False,
    )
    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "60000"})
    sent: list[float] = []
    send = notifier.notify
    notifier.notify = lambda *lines: (sent.append(time.monotonic()), send(*lines))[1]  # type: ignore[method-assign]
    gate.heartbeat = notifier.heartbeat
    stop = threading.Event()
    t = threading.Thread(target=gate.run, args=(stop,))
    t.start()
    try:
        assert wait_until(lambda: src.hung_at is not None, 10, interval=0.005)
        time.sleep(0.5)  # 8 watchdog intervals with the loop hung: no ping may be sent in this window
        assert len(sent) >= 3 and all(t < src.hung_at for t in sent)  # nothing after the loop hung
        assert wait_until(lambda: len(notify_socket.lines("WATCHDOG=1")) == len(sent), 5)  # and each one arrived
    finally:
        stop.set()
        src.release.set()
        t.join(5)
        gate.close()


def test_notifier_is_a_no_op_outside_systemd_and_ignores_another_pids_watchdog() -> None:
    assert not Notifier({}).enabled and Notifier({}).notify("READY=1") is False
    assert Notifier({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}).watchdog_interval is None


def test_sighup_reloads_a_valid_config_and_keeps_running_on_a_broken_one(tmp_path, keys, broker) -> None:
    feeder = Feeder(keys)
    try:
        cfg = daemon_config(tmp_path, keys, broker, feeder.port)
        log = tmp_path / "gate.log"
        proc = start(cfg, log)
        assert wait_log(log, "started at venue rail-test")
        cfg.write_text(cfg.read_text().replace('id = "rail-test"', 'id = "rail-renamed"'))
        proc.send_signal(signal.SIGHUP)
        assert wait_log(log, "started at venue rail-renamed")
        good = cfg.read_text()
        cfg.write_text(good + "\n[bogus]\nx = 1\n")
        proc.send_signal(signal.SIGHUP)
        assert wait_log(log, "config reload failed; keeping the running configuration")
        assert "bogus: unknown key" in log.read_text() and proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0  # a clean stop, bounded
    finally:
        feeder.close()


def test_gate_status_shows_the_running_daemons_state(tmp_path, keys, broker) -> None:
    feeder = Feeder(keys)
    try:
        cfg = daemon_config(tmp_path, keys, broker, feeder.port)
        proc = start(cfg, tmp_path / "gate.log")
        assert wait_log(tmp_path / "gate.log", "started at venue")
        feeder.on.set()
        status = tmp_path / "state" / "status.json"
        assert wait_until(lambda: status.exists() and json.loads(status.read_text())["last"], 30)
        feeder.on.clear()
        out = subprocess.run(
            [sys.executable, "-m", "gate", "status", "--config", str(cfg)], capture_output=True, text=True, timeout=30
        )
        js = json.loads(
            subprocess.run(
                [sys.executable, "-m", "gate", "status", "--json", "--config", str(cfg)],
                capture_output=True,
                text=True,
                timeout=30,
            ).stdout
        )
        proc.send_signal(signal.SIGTERM)
        proc.wait(5)
    finally:
        feeder.close()
    assert out.returncode == 0, out.stdout + out.stderr
    for word in ("mode", "broker", "connected", "cache", "outbox", "clock", "last"):
        assert word in out.stdout
    assert js["mode"] == "normal" and js["broker_connected"] and js["last"]
    assert all(len(d["token"]) <= 5 for d in js["last"])  # never a full token


def test_status_without_a_daemon_says_so(tmp_path) -> None:
    cfg = tmp_path / "gate.toml"
    cfg.write_text(f'[gate]\nid="a"\nstate_dir="{tmp_path}"\n[venue]\nid="v"\n')
    r = subprocess.run(
        [sys.executable, "-m", "gate", "status", "--config", str(cfg)], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 1 and "is the daemon running" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "gate", "status", "--json", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    doc = json.loads(r.stdout)  # scripts always get JSON
    assert r.returncode == 1 and doc["running"] is False and doc["gate_id"] == "a" and "no status file" in doc["error"]


def test_root_maintenance_commands_act_as_the_owner_of_the_state(tmp_path) -> None:
    """`sudo gate cache import` on a service's state: passes.db belongs to the service's user, not root."""
    import os
    import pwd

    assert os.geteuid() == 0, "this test checks what root does: run the suite as root (CI does)"
    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="gate-owner-"))  # pytest's own tmp is root-only: not traversable
    base.chmod(0o755)
    state = base / "state"
    state.mkdir(mode=0o750)
    os.chown(state, nobody.pw_uid, nobody.pw_gid)
    cfg = tmp_path / "gate.toml"
    cfg.write_text(f'[gate]\nid="a"\nstate_dir="{state}"\n[venue]\nid="v"\n')
    rows = tmp_path / "passes.csv"
    rows.write_text("token,status\ntok-00000001,green\n")
    rows.chmod(0o644)
    r = subprocess.run(
        [sys.executable, "-m", "gate", "cache", "--config", str(cfg), "import", str(rows)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    made = [p for p in state.iterdir() if p.name.startswith("passes.db")]
    assert made and all(p.stat().st_uid == nobody.pw_uid for p in made), [(p.name, p.stat().st_uid) for p in made]
    shutil.rmtree(base)


# -- install.sh and the unit ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    prefix = tmp_path_factory.mktemp("root")
    r = subprocess.run([str(ROOT / "install.sh"), "--prefix", str(prefix)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (prefix / "install.log").write_text(r.stdout)
    return prefix


def test_the_service_gets_the_versions_ci_tests_and_says_which_decoder(installed: Path) -> None:
    """install.sh installs with constraints.txt and the zxing extra where zxing-cpp has a wheel (here: x86-64
    or aarch64), and says which decoder the gate got."""
    pins = dict(line.split("==") for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line)
    names = ("paho-mqtt", "pydantic", "cryptography", "numpy", "pillow", "zxing-cpp", "prometheus_client")
    code = f"import importlib.metadata as m; print(*(m.version(n) for n in {names!r}))"  # the venv's, first on the path
    out = subprocess.run([str(installed / "opt/gate/venv/bin/python"), "-c", code], capture_output=True, text=True)
    assert dict(zip(names, out.stdout.split(), strict=True)) == {n: pins[n] for n in names}, out.stderr
    assert "decoder: zxing-cpp" in (installed / "install.log").read_text()


def test_install_lays_out_the_service_under_a_prefix(installed: Path) -> None:
    for rel in (
        "opt/gate/venv/bin/gate",
        "etc/gate/gate.toml",
        "etc/gate/credentials/mqtt-password",
        "etc/gate/credentials/device.key",
        "etc/gate/credentials/mqtt-client.key",
        "etc/systemd/system/gate.service",
        "var/lib/gate",
        "opt/gate/docs/operations.md",
        "usr/local/bin/gate",
    ):
        assert (installed / rel).exists(), rel
    assert (installed / "usr/local/bin/gate").resolve() == (installed / "opt/gate/venv/bin/gate").resolve()
    assert (installed / "etc/gate/credentials").stat().st_mode & 0o777 == 0o700
    venv_cfg = (installed / "opt/gate/venv/pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in venv_cfg  # picamera2 from apt
    unit = (installed / "etc/systemd/system/gate.service").read_text()
    assert f"{installed}/opt/gate/venv/bin/gate run --config {installed}/etc/gate/gate.toml" in unit


def test_reinstall_never_overwrites_an_existing_config(installed: Path) -> None:
    conf = installed / "etc/gate/gate.toml"
    conf.write_text(conf.read_text().replace('id = "CHANGE-ME"', 'id = "lane-77"'))
    r = subprocess.run(
        [str(ROOT / "install.sh"), "--upgrade", "--prefix", str(installed)], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert 'id = "lane-77"' in conf.read_text() and "keeping existing" in r.stdout


def test_upgrade_checks_the_config_reading_secrets_where_the_service_does(installed: Path) -> None:
    """password_file = "mqtt-password" as docs/operations.md says: found in the credentials directory."""
    conf = installed / "etc/gate/gate.toml"
    text = conf.read_text().replace('id = "CHANGE-ME"', 'id = "lane-77"')
    conf.write_text(text.replace("[mqtt]\n", '[mqtt]\nusername = "lane-77"\npassword_file = "mqtt-password"\n', 1))
    (installed / "etc/gate/credentials/mqtt-password").write_text("s3cret\n")
    upgrade = [str(ROOT / "install.sh"), "--upgrade", "--prefix", str(installed)]
    r = subprocess.run(upgrade, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "(gate lane-77, venue" in r.stdout, r.stdout + r.stderr
    (installed / "etc/gate/credentials/mqtt-password").unlink()  # now it really is missing: named, exit 1
    r = subprocess.run(upgrade, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and "mqtt.password_file: secret file" in r.stderr, r.stdout + r.stderr  # left empty
    assert "is empty" in r.stderr


def test_a_fresh_install_waits_for_the_placeholder_id_to_be_edited(tmp_path: Path) -> None:
    r = subprocess.run(
        [str(ROOT / "install.sh"), "--prefix", str(tmp_path / "r")], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0 and '"CHANGE-ME" is refused' in r.stdout, r.stdout + r.stderr


def test_install_help_lists_every_mode_and_option() -> None:
    out = subprocess.run([str(ROOT / "install.sh"), "--help"], capture_output=True, text=True, timeout=60).stdout
    for opt in ("--dev", "--upgrade", "--uninstall", "--purge", "--prefix", "--dry-run", "--help"):
        assert opt in out, opt
    assert (
        out
        == subprocess.run(
            [str(ROOT / "script/install-service"), "--help"], capture_output=True, text=True, timeout=60
        ).stdout
    )


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    r = subprocess.run(
        [str(ROOT / "install.sh"), "--dry-run", "--prefix", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "would run" in r.stdout and not (tmp_path / "r").exists()


def test_systemd_analyze_accepts_the_installed_unit(installed: Path) -> None:
    r = subprocess.run(
        [require("systemd-analyze"), "verify", str(installed / "etc/systemd/system/gate.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr


def test_the_unit_has_the_watchdog_restart_and_hardening_settings() -> None:
    unit = (ROOT / "systemd/gate.service").read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=",
        "Restart=always",
        "StartLimitIntervalSec=0",
        "StateDirectory=gate",
        "RuntimeDirectory=gate",
        "WorkingDirectory=/var/lib/gate",
        "SupplementaryGroups=gpio video dialout",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "UMask=0077",
        "DevicePolicy=closed",
        "DeviceAllow=char-gpiochip rw",
        "DeviceAllow=char-video4linux rw",
        "DeviceAllow=char-media rw",
        "DeviceAllow=char-dma_heap rw",
        "DeviceAllow=char-ttyUSB rw",
        "DeviceAllow=char-ttyACM rw",
        "DeviceAllow=char-ttyAMA rw",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "LoadCredential=",
    ):
        assert line in unit, line
    assert "\nPrivateDevices" not in unit


def test_systemd_analyze_security_rates_the_unit_ok() -> None:
    r = subprocess.run(
        [require("systemd-analyze"), "security", "--offline=yes", str(ROOT / "systemd/gate.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    m = re.search(r"Overall exposure level for gate.service: ([0-9.]+) (\w+)", r.stdout)
    assert m is not None, r.stdout + r.stderr
    assert float(m.group(1)) <= 2.5 and m.group(2) == "OK", m.group(0)


def test_uninstall_keeps_config_and_state_unless_purged(tmp_path: Path) -> None:
    prefix = tmp_path / "root"
    for d in ("opt/gate/venv", "etc/gate", "var/lib/gate", "etc/systemd/system"):
        (prefix / d).mkdir(parents=True)
    (prefix / "etc/gate/gate.toml").write_text("x")
    (prefix / "etc/systemd/system/gate.service").write_text("x")
    run = [str(ROOT / "install.sh"), "--uninstall", "--prefix", str(prefix)]
    assert subprocess.run(run, capture_output=True, timeout=60).returncode == 0
    assert not (prefix / "opt/gate").exists() and not (prefix / "etc/systemd/system/gate.service").exists()
    assert (prefix / "etc/gate/gate.toml").exists() and (prefix / "var/lib/gate").exists()
    assert subprocess.run([*run, "--purge"], capture_output=True, timeout=60).returncode == 0
    assert not (prefix / "etc/gate").exists() and not (prefix / "var/lib/gate").exists()


def test_under_systemd_log_lines_carry_syslog_priorities(monkeypatch, capsys) -> None:
    import logging

    from gate.core.logs import setup_logging

    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    setup_logging()
    logging.getLogger("gate.x").warning("careful")
    logging.getLogger("gate.x").info("fine")
    err = capsys.readouterr().err
    assert "<4>gate.x: careful" in err and "<6>gate.x: fine" in err
    logging.getLogger().handlers.clear()
