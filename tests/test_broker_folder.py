"""The folder `gate central provision` writes starts as written under Debian's mosquitto: as root it drops to
user mosquitto and still reads its files, opens only the listeners written (TLS on every interface, plain MQTT
on loopback), and gates reach it over TLS with the CA it made. The ACL itself: test_broker_acl.py."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import ProvisionedBroker, free_port, require, wait_until

pytestmark = pytest.mark.slow  # starts a broker, a daemon, a database or a browser


def central(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gate", "central", *args], capture_output=True, text=True, timeout=60, env=env
    )


def provisioned(home: Path, *extra: str) -> ProvisionedBroker:
    d = home / "broker"
    plain, tls = free_port(), free_port()
    ports = ("--port", str(plain), "--tls-port", str(tls), "--server-name", "localhost", "--server-name", "127.0.0.1")
    r = central("provision", "lane-01", "--broker-dir", str(d), *ports, *extra)
    assert r.returncode == 0, r.stderr
    return ProvisionedBroker(d, plain, tls)


def listening(pid: int) -> set[str]:
    """The TCP sockets process `pid` listens on, as address:port."""
    out = subprocess.run([require("ss"), "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return {line.split()[3] for line in out.splitlines() if re.search(rf"pid={pid},", line)}


def tls_client(b: ProvisionedBroker, user: str | None, cert: tuple[str, str] | None = None) -> str:
    """Connect over TLS, verifying the broker by the folder's CA; the CONNACK's reason, or the TLS error."""
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.tls_set(
        ca_certs=str(b.folder / "tls" / "ca.crt"), certfile=cert[0] if cert else None, keyfile=cert[1] if cert else None
    )
    if user is not None:
        c.username_pw_set(user, (b.folder / "credentials" / user / "mqtt-password").read_text().strip())
    got: list[str] = []
    c.on_connect = lambda cl, u, f, rc, p: got.append(str(rc))
    try:
        c.connect("localhost", b.tls_port)
    except OSError as exc:
        return f"refused: {type(exc).__name__}"
    c.loop_start()
    wait_until(lambda: got, 10)
    c.disconnect()
    c.loop_stop()
    return got[0] if got else "closed"


def test_the_written_folder_starts_as_root_with_only_its_own_listeners(broker_home) -> None:
    b = provisioned(broker_home)
    b.start()
    try:
        assert b.proc is not None
        assert wait_until(
            lambda: listening(b.proc.pid) == {f"127.0.0.1:{b.port}", f"0.0.0.0:{b.tls_port}", f"[::]:{b.tls_port}"}, 10
        ), listening(b.proc.pid)
        if os.geteuid() == 0:  # as Debian's service starts it: it reads passwd and acl after dropping root
            uid = int(re.findall(r"^Uid:\s+(\d+)", Path(f"/proc/{b.proc.pid}/status").read_text(), re.M)[0])
            assert pwd.getpwuid(uid).pw_name == "mosquitto"
        assert tls_client(b, "lane-01") == "Success"
        assert tls_client(b, None) == "Not authorized"
        log = (b.folder / "mosquitto.log").read_text()
        assert "Error" not in log and "Unable" not in log, log
    finally:
        b.stop()


def test_client_certificates_when_the_tls_listener_requires_them(broker_home) -> None:
    b = provisioned(broker_home, "--require-client-certs")
    b.start()
    try:
        creds = b.folder / "credentials" / "lane-01"
        assert (creds / "client.key").stat().st_mode & 0o077 == 0
        assert tls_client(b, "lane-01", (str(creds / "client.crt"), str(creds / "client.key"))) == "Success"
        assert tls_client(b, "lane-01") != "Success"  # no certificate: the TLS handshake fails
    finally:
        b.stop()


@pytest.mark.parametrize("name", ["central", "homeassistant", "$SYS", "gate-collect-city-host1", "a/b", "lane 1"])
def test_reserved_and_impossible_names_are_refused(tmp_path, name) -> None:
    r = central("provision", name, "--broker-dir", str(tmp_path / "b"))
    assert r.returncode == 1 and ("reserved" in r.stderr or "cannot be" in r.stderr), r.stderr


def test_a_gate_config_is_complete_and_reaches_the_broker_over_tls(broker_home, tmp_path, keys, monkeypatch) -> None:
    from gpiozero.pins.mock import MockFactory

    from gate.config.model import parse_config
    from gate.decide.codes import Status, issue
    from gate.lane.wiring import build
    from gate.scan.decoders import make_decoder
    from gate.scanner import DecodingSource
    from gate.testing import ScriptedFrames

    toml = tmp_path / "gate.toml"
    b = provisioned(broker_home, "--gate-config", str(toml), "--venue", "rail-central", "--require-client-certs")
    # As docs/broker.md says: the secrets copied to the gate's credentials directory under these names
    given = b.folder / "credentials" / "lane-01"
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    for src, dst in (
        ("mqtt-password", "mqtt-password"),
        ("device.key", "device.key"),
        ("client.key", "mqtt-client.key"),
    ):
        shutil.copy(given / src, creds / dst)
    env = {**os.environ, "CREDENTIALS_DIRECTORY": str(creds)}
    r = subprocess.run(
        [sys.executable, "-m", "gate", "check-config", str(toml)], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stdout + r.stderr
    data = tomllib.loads(toml.read_text())
    assert data["mqtt"]["port"] == b.tls_port and data["venue"]["id"] == "rail-central"
    # As on the gate, with the CA copied to /etc/gate and the state where the test may write it:
    assert data["mqtt"]["tls"]["key_file"] == "mqtt-client.key"
    data["mqtt"]["tls"]["ca_file"] = str(b.folder / "tls" / "ca.crt")
    data["mqtt"]["tls"]["cert_file"] = str(given / "client.crt")
    data["gate"]["state_dir"] = str(tmp_path / "state")
    data.update(clock={"sync_source": "assume_synced"}, trust={"keys": [str(keys.public_path)]})
    data["gpio"]["pin_factory"] = "mock"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    cfg = parse_config(data, "test")
    assert cfg.venue.id == "rail-central"
    b.start()
    g = build(cfg, source=DecodingSource(ScriptedFrames([]), make_decoder("zxing")), pin_factory=MockFactory()).start()
    try:
        assert wait_until(lambda: g.link.connected.is_set(), 20)
        g.handle(issue(keys.private, "tok-tls001", Status.RED, int(time.time()), 600).encode())
        assert g.drainer.wait_empty(20) and g.state()["dead_letters"] == 0
    finally:
        g.close()
        b.stop()


def test_the_folder_linked_into_debians_conf_d_listens_only_where_it_says(broker_home) -> None:
    """docs/broker.md: `ln -s …/mosquitto.conf /etc/mosquitto/conf.d/gate.conf`, under Debian's own main file
    (its paths moved into the test's folder)."""
    b = provisioned(broker_home)
    debian = Path("/etc/mosquitto/mosquitto.conf").read_text()  # from the mosquitto package
    etc, var = broker_home / "etc", broker_home / "var"
    (etc / "conf.d").mkdir(parents=True)
    var.mkdir()
    if os.geteuid() == 0:
        os.chown(var, pwd.getpwnam("mosquitto").pw_uid, -1)
    moved = (
        debian.replace("/run/mosquitto/", f"{var}/")
        .replace("/var/lib/mosquitto/", f"{var}/")
        .replace("/var/log/mosquitto/", f"{var}/")
        .replace("/etc/mosquitto/conf.d", str(etc / "conf.d"))
    )
    assert "include_dir" in moved and "listener" not in moved
    (etc / "mosquitto.conf").write_text(moved)
    (etc / "conf.d" / "gate.conf").symlink_to(b.folder / "mosquitto.conf")
    proc = subprocess.Popen([require("mosquitto"), "-c", str(etc / "mosquitto.conf")])
    try:
        want = {f"127.0.0.1:{b.port}", f"0.0.0.0:{b.tls_port}", f"[::]:{b.tls_port}"}
        assert wait_until(lambda: listening(proc.pid) == want, 10), listening(proc.pid)
        assert tls_client(b, "lane-01") == "Success"
    finally:
        proc.kill()
        proc.wait(5)


def test_the_settings_are_kept_and_the_server_certificate_follows_its_names(tmp_path) -> None:
    d = tmp_path / "b"
    assert (
        central(
            "provision", "lane-01", "--broker-dir", str(d), "--tls-port", "18883", "--server-name", "a.example"
        ).returncode
        == 0
    )
    cert = (d / "tls" / "server.crt").read_bytes()
    assert central("provision", "lane-02", "--broker-dir", str(d)).returncode == 0
    assert (d / "tls" / "server.crt").read_bytes() == cert  # same names: the same certificate
    assert "listener 18883\n" in (d / "mosquitto.conf").read_text()  # the port was kept
    assert central("provision", "lane-02", "--broker-dir", str(d), "--server-name", "b.example").returncode == 0
    from gate.central.brokertls import server_names_of

    assert server_names_of(d / "tls" / "server.crt") == ["b.example"]
