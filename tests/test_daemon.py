"""A real `gate run` process reading a serial QR module (a pty): SIGKILLs, the will, SIGTERM, TLS."""

from __future__ import annotations

import datetime as dt
import json
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from gpiozero.pins.mock import MockFactory

from conftest import Broker, make_config, require
from fakes import Feeder, daemon_config, start, wait_log
from gate.core.clock import SystemClock
from gate.decide.codes import Status, issue
from gate.lane.wiring import build
from gate.scan.decoders import make_decoder
from gate.scanner import DecodingSource
from gate.testing import ScriptedFrames

pytestmark = pytest.mark.slow  # starts a broker, a daemon, a database or a browser

EVENT = re.compile(r"event=([0-9a-f-]{36})")


def test_sigkill_at_random_instants_loses_no_decided_check_in(tmp_path, keys, broker, subscriber_factory) -> None:
    sub = subscriber_factory(broker)
    feeder = Feeder(keys)
    cfg = daemon_config(tmp_path, keys, broker, feeder.port)
    log = tmp_path / "gate.log"
    rng = random.Random(7)
    try:
        for _ in range(20):
            mark = len(log.read_text(errors="replace")) if log.exists() else 0
            proc = start(cfg, log)
            assert wait_log(log, "started at venue", mark), log.read_text()[-2000:]
            feeder.on.set()
            time.sleep(rng.uniform(0.05, 0.6))
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            feeder.on.clear()
        assert b"offline" in [p for t, p, _ in sub.messages if t.endswith("/availability")]  # the will
        mark = len(log.read_text(errors="replace"))
        proc = start(cfg, log)
        assert wait_log(log, "started at venue", mark)
        decided = set(EVENT.findall(log.read_text(errors="replace")))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            received = [json.loads(p)["event_id"] for p in sub.on("/checkin")]
            if decided <= set(received):
                break
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0  # clean stop within the bound
    finally:
        feeder.close()
    missing = decided - set(received)
    duplicates = len(received) - len(set(received))
    print(f"decided {len(decided)} (logged), received {len(received)}, duplicates {duplicates}")
    assert len(decided) > 50 and not missing
    assert sub.on("/availability")[-1] == b"offline"


def test_sigterm_stops_the_daemon_cleanly(tmp_path, keys, broker, subscriber_factory) -> None:
    feeder = Feeder(keys)
    try:
        cfg = daemon_config(tmp_path, keys, broker, feeder.port)
        log = tmp_path / "gate.log"
        proc = start(cfg, log)
        assert wait_log(log, "started at venue")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
        assert "stopped cleanly" in log.read_text()
    finally:
        feeder.close()


# -- TLS and password authentication -----------------------------------------------------------------


def _certs(d: Path) -> tuple[Path, Path, Path]:
    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = dt.datetime.now(dt.UTC)
    ca_key, srv_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("gate test CA"))
        .issuer_name(name("gate test CA"))
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    srv = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca.subject)
        .public_key(srv_key.public_key())
        .serial_number(2)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = d / "ca.crt", d / "server.crt", d / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(srv.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        srv_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


def test_tls_with_password_auth_delivers_check_ins(tmp_path, keys, subscriber_factory, monkeypatch) -> None:
    ca, crt, key = _certs(tmp_path)
    pw = tmp_path / "passwd"
    subprocess.run(
        [require("mosquitto_passwd"), "-b", "-c", str(pw), "lane-t", "s3cret"], check=True, capture_output=True
    )
    pw.chmod(0o600)
    broker = Broker(
        tmp_path, extra=f"cafile {ca}\ncertfile {crt}\nkeyfile {key}\npassword_file {pw}\n", anonymous=False
    )
    broker.start()
    broker.host = "localhost"  # the name in the server certificate
    try:
        creds = tmp_path / "creds"
        creds.mkdir()
        (creds / "mqtt-password").write_text("s3cret")
        monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
        sub = subscriber_factory(broker, username="lane-t", password="s3cret", tls=str(ca))
        cfg = make_config(
            tmp_path / "state",
            keys,
            mqtt={
                "host": "localhost",
                "port": broker.port,
                "username": "lane-t",
                "password_file": "mqtt-password",
                "tls": {"ca_file": str(ca)},
            },
        )
        gate = build(
            cfg,
            source=DecodingSource(ScriptedFrames([]), make_decoder("zxing")),
            pin_factory=MockFactory(),
            clock=SystemClock("assume_synced"),
        ).start()
        try:
            now = int(time.time())
            eid = gate.handle(issue(keys.private, "tok-tls001", Status.RED, now, 60).encode())[1].event_id
            assert eid in [json.loads(p)["event_id"] for p in sub.wait_for("/checkin", 1)]
            assert gate.drainer.wait_empty(10)
        finally:
            gate.close()
    finally:
        broker.stop()
