"""Config loading: the example validates; each kind of mistake names its key path, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gate.config.model import load_config, parse_config
from gate.core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
MIN = '[gate]\nid = "lane-1"\n[venue]\nid = "v1"\n'


def check(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    f = tmp_path / "gate.toml"
    f.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "gate", "check-config", str(f)], capture_output=True, text=True, timeout=60
    )


def test_example_config_is_valid_once_its_placeholder_id_is_edited(tmp_path: Path) -> None:
    text = (ROOT / "gate.example.toml").read_text()
    r = check(tmp_path, text)  # unedited: two such gates would share one MQTT client id
    assert r.returncode == 2 and "gate.id" in r.stderr and "placeholder 'CHANGE-ME'" in r.stderr, r.stderr
    r = check(tmp_path, text.replace('id = "CHANGE-ME"', 'id = "lane-07"', 1))
    assert r.returncode == 0, r.stderr


def test_a_relative_secret_resolves_in_etc_gate_credentials_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    from gate.config.model import CREDENTIALS_FALLBACK, secret_path

    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert (
        secret_path(Path("mqtt-password"))
        == CREDENTIALS_FALLBACK / "mqtt-password"
        == Path("/etc/gate/credentials/mqtt-password")
    )
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/gate.service")
    assert secret_path(Path("mqtt-password")) == Path("/run/credentials/gate.service/mqtt-password")
    assert secret_path(Path("/abs/key")) == Path("/abs/key")


@pytest.mark.parametrize(
    "extra, path, words",
    [
        ("[gate]\nid='a'\ncolour='x'\n[venue]\nid='v'\n", "gate.colour", "unknown key"),
        (MIN + "[mqtt]\nport = 'abc'\n", "mqtt.port", "valid integer"),
        ("[gate]\nid='a'\n", "venue", "required value is missing"),
        (MIN + "[mqtt]\nport = 70000\n", "mqtt.port", "less than or equal to 65535"),
        (MIN + "[mqtt]\nusername = 'u'\n", "mqtt", "neither password nor password_file"),
        (MIN + "[gpio.relay]\npin = 40\n", "gpio.relay.pin", "less than or equal to 27"),
        (MIN + "[gpio]\nbuzzer = {pin = 17}\n", "gpio", "pin 17 is used by both gpio.relay.pin and gpio.buzzer.pin"),
        (MIN + "[scanner]\nsource = 'serial'\n", "(top level)", "scanner.serial.port is empty"),
        (MIN + "[mqtt.tls]\ncert_file = '/x.crt'\n", "mqtt.tls", "cert_file and key_file must be given together"),
        ("[gate\n", "not valid TOML", ""),
    ],
)
def test_bad_config_names_the_key_path_and_exits_2(tmp_path: Path, extra: str, path: str, words: str) -> None:
    r = check(tmp_path, extra)
    assert r.returncode == 2
    assert path in r.stderr and words in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.toml")


def test_password_file_resolves_in_credentials_directory(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "mqtt-pw").write_text("s3cret\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    f = tmp_path / "gate.toml"
    f.write_text(MIN + "[mqtt]\nusername = 'lane'\npassword_file = 'mqtt-pw'\n")
    assert load_config(f).mqtt.resolved_password() == "s3cret"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"mqtt\.password_file"):
        load_config(f)


def test_config_models_are_frozen() -> None:
    cfg = parse_config({"gate": {"id": "a"}, "venue": {"id": "v"}})
    with pytest.raises(ValueError):
        cfg.gate.id = "b"  # type: ignore[misc]


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["gate", "venue", "mqtt", "gpio", "scanner", "policy", "zzz"]),
        st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=8), st.booleans()), max_size=3),
        max_size=5,
    )
)
def test_arbitrary_config_data_validates_or_raises_config_error_only(data) -> None:
    try:
        parse_config(data)
    except ConfigError as exc:
        assert str(exc)
