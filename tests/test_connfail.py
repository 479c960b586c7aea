"""Every way a connection to the broker fails is named at once, once: DNS, refused, TLS (unknown CA, name
mismatch, expired), timeout, authentication and the ACL, in the log, the state, `gate status` and metrics."""

from __future__ import annotations

import json
import logging
import socket
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from test_broker_folder import central, provisioned

from conftest import free_port, make_config, wait_until
from gate.config.model import MqttSection
from gate.deliver import connfail
from gate.mqtt_link import MqttLink

pytestmark = pytest.mark.slow


def verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    exc.verify_code, exc.verify_message = code, message
    return exc


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (socket.gaierror(-2, "Name or service not known"), "dns_failure"),
        (ConnectionRefusedError(111, "Connection refused"), "connection_refused"),
        (TimeoutError("_ssl.c:990: The handshake operation timed out"), "timeout"),
        (OSError(113, "No route to host"), "network_unreachable"),
        (verify_error(20, "unable to get local issuer certificate"), "tls_unknown_ca"),
        (verify_error(19, "self-signed certificate in certificate chain"), "tls_unknown_ca"),
        (verify_error(62, "Hostname mismatch, certificate is not valid for 'x'."), "tls_name_mismatch"),
        (verify_error(64, "IP address mismatch, certificate is not valid for '127.0.0.2'."), "tls_name_mismatch"),
        (verify_error(10, "certificate has expired"), "tls_expired"),
        (ssl.SSLError(1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required"), "tls_failed"),
    ],
)
def test_each_connect_exception_maps_to_its_reason(exc, reason) -> None:
    f = connfail.from_exception(exc, "mqtt.example.org:8883")
    assert f.reason == reason and f.reason in connfail.REASONS
    assert f.detail.startswith("mqtt.example.org:8883: ") and "\n" not in f.detail


def test_a_failure_is_logged_once_and_again_only_when_it_changes(caplog) -> None:
    log = connfail.FailureLog(lambda: "h:1")
    with caplog.at_level(logging.WARNING, "gate.mqtt_link"):
        for _ in range(5):
            log.note(connfail.from_exception(ConnectionRefusedError(111, "refused"), "h:1"))
        log.note(connfail.from_exception(socket.gaierror(-2, "unknown"), "h:1"))
        log.clear()
        log.note(connfail.from_exception(socket.gaierror(-2, "unknown"), "h:1"))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 and "connection_refused" in lines[0] and "dns_failure" in lines[1], lines
    assert log.as_json() is not None and log.reason == "dns_failure"


def named(cfg: MqttSection, caplog, gate_id: str = "lane-01", retries: int = 2) -> MqttLink:
    """A link that tried `retries` times at least: its failure, and the log lines it wrote."""
    link = MqttLink(cfg, gate_id)
    attempts: list[int] = []
    original = link.client.on_connect_fail

    def counting(c, u):
        attempts.append(1)
        original(c, u)

    link.client.on_connect_fail = counting
    link.start()
    assert wait_until(lambda: len(attempts) >= retries, 30), "paho did not retry"
    link.stop()
    return link


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == "gate.mqtt_link"]


def test_broker_down_and_unresolvable_host_are_named_once(caplog) -> None:
    with caplog.at_level(logging.WARNING):
        down = named(MqttSection(host="127.0.0.1", port=free_port()), caplog)
    assert down.failures.reason == "connection_refused"
    assert [w for w in warnings_of(caplog) if "connection_refused" in w] == [
        w for w in warnings_of(caplog) if "mqtt: connection_refused" in w
    ]
    assert len([w for w in warnings_of(caplog) if "connection_refused" in w]) == 1, warnings_of(caplog)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        dns = named(MqttSection(host="nonexistent.invalid", port=1883), caplog)
    assert dns.failures.reason == "dns_failure"
    assert len([w for w in warnings_of(caplog) if "dns_failure" in w and "nonexistent.invalid" in w]) == 1


@pytest.fixture
def tls_broker(broker_home):
    b = provisioned(broker_home)
    other = broker_home / "other"
    assert central("provision", "lane-x", "--broker-dir", str(other)).returncode == 0
    b.start()
    yield b, other
    b.stop()


def tls_cfg(b, host: str, ca: Path, user: str = "lane-01", password: str | None = None) -> MqttSection:
    secret = password or (b.folder / "credentials" / user / "mqtt-password").read_text().strip()
    return MqttSection.model_validate(
        {"host": host, "port": b.tls_port, "username": user, "password": secret, "tls": {"ca_file": str(ca)}}
    )


def test_tls_failures_name_the_cause(tls_broker, caplog) -> None:
    b, other = tls_broker
    with caplog.at_level(logging.WARNING):
        wrong_ca = named(tls_cfg(b, "localhost", other / "tls" / "ca.crt"), caplog)
        assert wrong_ca.failures.reason == "tls_unknown_ca"
        wrong_name = named(tls_cfg(b, "127.0.0.2", b.folder / "tls" / "ca.crt"), caplog)
        assert wrong_name.failures.reason == "tls_name_mismatch"
    lines = warnings_of(caplog)
    assert len([w for w in lines if "tls_unknown_ca" in w]) == 1, lines
    assert len([w for w in lines if "tls_name_mismatch" in w and "127.0.0.2" in w]) == 1, lines


def test_a_wrong_password_and_an_acl_refusal_are_named(tls_broker, caplog) -> None:
    b, _ = tls_broker
    ca = b.folder / "tls" / "ca.crt"
    with caplog.at_level(logging.WARNING):
        link = MqttLink(tls_cfg(b, "localhost", ca, password="not-the-password"), "lane-01")
        link.start()
        try:
            assert wait_until(lambda: link.failures.reason == "authentication_failed", 20)
        finally:
            link.stop()
        link = MqttLink(tls_cfg(b, "localhost", ca), "lane-01")
        link.start()
        try:
            assert wait_until(link.connected.is_set, 20) and link.failures.reason is None
            link.publish("gate/lane-02/checkin", b"{}")  # another gate's topic: the ACL refuses it (MQTT 5)
            assert wait_until(lambda: link.failures.reason == "not_authorized", 20)
        finally:
            link.stop()
    lines = warnings_of(caplog)
    assert any("authentication_failed" in w and "password" in w for w in lines), lines
    assert any("not_authorized" in w and "ACL" in w for w in lines), lines


def test_status_state_and_metrics_show_the_reason(tmp_path, keys) -> None:
    from gpiozero.pins.mock import MockFactory

    from gate.lane.wiring import build
    from gate.ops.metrics import scrape
    from gate.scan.decoders import make_decoder
    from gate.scanner import DecodingSource
    from gate.testing import ScriptedFrames

    listen = f"127.0.0.1:{free_port()}"
    mqtt = {"host": "127.0.0.1", "port": free_port()}
    cfg = make_config(tmp_path / "state", keys, mqtt=mqtt, metrics={"listen": listen})
    source = DecodingSource(ScriptedFrames([]), make_decoder("zxing"))
    g = build(cfg, source=source, pin_factory=MockFactory()).start()
    toml = tmp_path / "gate.toml"
    toml.write_text(
        f'[gate]\nid = "lane-t"\nstate_dir = "{tmp_path / "state"}"\n[venue]\nid = "v"\n'
        f'[trust]\nkeys = ["{keys.public_path}"]\n'
    )
    try:
        assert wait_until(lambda: (g.state().get("broker_failure") or {}).get("reason") == "connection_refused", 20)
        g.reporter._write_status()
        samples = scrape(f"http://{listen}/metrics")
        assert samples.get('gate_broker_failure_info{reason="connection_refused"}') == 1.0, samples
        doc = json.loads((tmp_path / "state" / "status.json").read_text())
        assert doc["broker_failure"]["reason"] == "connection_refused"
        r = subprocess.run(
            [sys.executable, "-m", "gate", "status", "--config", str(toml)], capture_output=True, text=True
        )
        assert "DISCONNECTED: connection_refused: 127.0.0.1:" in r.stdout, r.stdout + r.stderr
        assert "never synced" in r.stdout and "None" not in r.stdout, r.stdout  # before the first sync
    finally:
        g.close()


def test_a_closed_connection_before_connack_is_named_and_warns_when_protocol_5_is_pinned(caplog) -> None:
    from test_mqtt_link import OldBroker

    old = OldBroker(close_on_v5=True)
    with caplog.at_level(logging.WARNING):
        link = MqttLink(MqttSection(host="127.0.0.1", port=old.port, protocol="5"), "lane-01")
        link.start()
        try:
            assert wait_until(lambda: link.failures.reason == "protocol_refused", 20)
        finally:
            link.stop()
    assert any('set mqtt.protocol = "auto"' in w for w in warnings_of(caplog)), warnings_of(caplog)


def test_a_tls_handshake_that_never_answers_is_named_timeout(tmp_path, caplog) -> None:
    """A listener that takes the TCP connection and says nothing (a wrong port, a stuck proxy)."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def hold() -> None:
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(silent.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    ca = tmp_path / "ca.crt"
    from gate.central.brokertls import make_ca

    ca.write_bytes(make_ca()[1])
    try:
        with caplog.at_level(logging.WARNING):
            link = named(
                MqttSection.model_validate(
                    {"host": "127.0.0.1", "port": silent.getsockname()[1], "tls": {"ca_file": str(ca)}}
                ),
                caplog,
                retries=1,
            )
        assert link.failures.reason == "timeout", warnings_of(caplog)
    finally:
        stop.set()
        t.join(5)
        for s in held:
            s.close()
        silent.close()
