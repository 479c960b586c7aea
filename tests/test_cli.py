"""The maintainer's and central's commands, as a person runs them: keygen, issue, decode, verify, --help."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def gate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gate", *args], capture_output=True, text=True, timeout=60)


def test_keygen_issue_decode_and_verify_round_trip(tmp_path: Path) -> None:
    kg = json.loads(gate("central", "keygen", "--out", str(tmp_path / "keys")).stdout)
    assert set(kg) == {"key_id", "private_key", "public_key"} and Path(kg["private_key"]).stat().st_mode & 0o077 == 0
    png = tmp_path / "code.png"
    r = gate(
        "central",
        "issue",
        "--key",
        kg["private_key"],
        "--token",
        "tok-cli-0001",
        "--status",
        "green",
        "--valid-for",
        "600",
        "--companions",
        "2",
        "--png",
        str(png),
    )
    assert r.returncode == 0, r.stderr
    code = r.stdout.strip()
    decoded = json.loads(gate("decode", "--json", str(png)).stdout)
    assert decoded["codes"][0]["text"] == code
    cfg = tmp_path / "gate.toml"
    cfg.write_text(
        f'[gate]\nid="lane-v"\nstate_dir="{tmp_path / "state"}"\n[venue]\nid="bus-7"\ncategory="bus"\nvehicle_id="b7"\n'
        f"[gps]\noptional=true\n"
        f'[trust]\nkeys=["{kg["public_key"]}"]\n[clock]\nsync_source="assume_synced"\n'
    )
    r = gate("verify", "--config", str(cfg), code)
    out = json.loads(r.stdout)
    assert r.returncode == 0 and (out["decision"], out["companions"], out["token"]) == ("admit", 2, "tok-cli-0001")
    assert out["venue"] == {"id": "bus-7", "name": "", "category": "bus", "vehicle_id": "b7"}
    r = gate("verify", "--trust", kg["public_key"], code)
    assert json.loads(r.stdout)["decision"] in ("admit", "assist")  # assist if this machine's clock is unsynced
    r = gate("verify", "--trust", kg["public_key"], code[:-3])
    assert r.returncode == 3 and json.loads(r.stdout)["decision"] == "deny"


def test_verify_needs_a_config_or_a_trusted_key() -> None:
    r = gate("verify", "GT1:ABC")
    assert r.returncode == 2 and "--trust" in r.stderr and "Traceback" not in r.stderr


def test_issue_refuses_an_id_card_number_as_token(tmp_path: Path) -> None:
    kg = json.loads(gate("central", "keygen", "--out", str(tmp_path)).stdout)
    r = gate(
        "central",
        "issue",
        "--key",
        kg["private_key"],
        "--token",
        "11010119900307123X",
        "--status",
        "green",
        "--valid-for",
        "60",
    )
    assert r.returncode == 1 and "ID-card" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "cmd", ["run", "demo", "check-config", "decode", "verify", "cache", "central", "selftest", "status"]
)
def test_every_command_has_help(cmd: str) -> None:
    r = gate(cmd, "--help")
    assert r.returncode == 0 and "usage: gate" in r.stdout


def test_version() -> None:
    assert gate("--version").stdout.startswith("gate ")
