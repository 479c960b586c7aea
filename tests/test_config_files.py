"""`gate check-config` names every file the config names that the service's user cannot read (exit 2), and
`gate run` names the file it cannot open instead of blaming the state directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gate.config.files import Reader, named_files, unreadable
from gate.config.model import load_config


def gate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gate", *args], capture_output=True, text=True, timeout=60, env=env or dict(os.environ)
    )


def write_config(tmp_path: Path, keys, **mqtt_tls: str) -> Path:
    tls = "".join(f'{k} = "{v}"\n' for k, v in mqtt_tls.items())
    f = tmp_path / "gate.toml"
    f.write_text(
        f'[gate]\nid = "lane-01"\nstate_dir = "{tmp_path / "state"}"\n[venue]\nid = "v"\n'
        f'[trust]\nkeys = ["{keys.public_path}"]\n[clock]\nsync_source = "assume_synced"\n'
        f'[gpio]\npin_factory = "mock"\n[mqtt]\nhost = "127.0.0.1"\nport = 1\n' + (f"[mqtt.tls]\n{tls}" if tls else "")
    )
    return f


def test_check_config_names_a_missing_ca_and_client_key_and_exits_2(tmp_path, keys) -> None:
    f = write_config(
        tmp_path,
        keys,
        ca_file="/etc/gate/no-such-broker-ca.crt",
        cert_file=str(keys.public_path),
        key_file=str(tmp_path / "missing-client.key"),
    )
    r = gate("check-config", str(f))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "mqtt.tls.ca_file /etc/gate/no-such-broker-ca.crt: no such file" in r.stderr, r.stderr
    assert f"mqtt.tls.key_file {tmp_path / 'missing-client.key'}: no such file" in r.stderr, r.stderr
    assert "OK" not in r.stdout


def test_every_named_file_is_listed(tmp_path, keys) -> None:
    f = write_config(tmp_path, keys, ca_file="/x/ca.crt", cert_file="/x/c.crt", key_file="client.key")
    keys_named = {n.key: n for n in named_files(load_config(f))}
    assert set(keys_named) == {"trust.keys[0]", "mqtt.tls.ca_file", "mqtt.tls.cert_file", "mqtt.tls.key_file"}
    assert keys_named["mqtt.tls.key_file"].credential  # relative: systemd hands it over, read as root


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to check for another user")
def test_as_root_the_files_are_checked_for_the_services_user(broker_home, keys) -> None:
    tmp_path = broker_home  # a folder other users may enter (pytest's are root's alone)
    nobody = Reader.service("nobody")  # the unit's user; `gate` on a gate
    assert nobody.uid == 65534
    private = tmp_path / "ca.crt"
    private.write_text("x")
    private.chmod(0o600)  # root's alone: the service could not read it
    hidden = tmp_path / "closed" / "ca.crt"
    hidden.parent.mkdir(mode=0o700)
    hidden.write_text("x")
    hidden.chmod(0o644)
    cfg = load_config(write_config(tmp_path, keys, ca_file=str(private)))
    lines = unreadable(cfg, nobody)
    assert any(f"mqtt.tls.ca_file {private}: not readable by user nobody (mode 0600, owner root)" in x for x in lines)
    cfg = load_config(write_config(tmp_path, keys, ca_file=str(hidden)))
    assert any(f"user nobody cannot enter {hidden.parent}" in x for x in unreadable(cfg, nobody))
    assert unreadable(cfg, Reader.current()) == []  # root itself reads it


def test_gate_run_names_the_missing_ca_not_the_state_directory(tmp_path, keys) -> None:
    f = write_config(tmp_path, keys, ca_file=str(tmp_path / "broker-ca.crt"))
    r = gate("run", "--config", str(f))
    assert r.returncode == 2, r.stderr
    assert f"mqtt.tls.ca_file {tmp_path / 'broker-ca.crt'}: no such file" in r.stderr, r.stderr
    assert "check that" not in r.stderr and "state" not in r.stderr.split("cannot start", 1)[-1], r.stderr
