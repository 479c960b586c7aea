"""The documents other teams read stay true to the code: config reference, MQTT contract, AsyncAPI."""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from gate.config.model import Config
from gate.contracts import Topics
from gate.sync.worker import central_topics

ROOT = Path(__file__).resolve().parent.parent


def _keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    out = set()
    for name, field in model.model_fields.items():
        ann = field.annotation
        inner = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if inner:
            out |= _keys(inner[0], f"{prefix}{name}.")
        else:
            out.add(prefix + name)
    return out


def test_example_config_documents_every_key() -> None:
    text = (ROOT / "gate.example.toml").read_text()
    # commented-out keys count as documented: uncomment them to parse
    lines = [
        line[2:] if line.startswith("# ") and ("=" in line or line.startswith("# [")) else line
        for line in text.splitlines()
    ]
    data = tomllib.loads("\n".join(lines))

    def flat(d: dict, prefix: str = "") -> set[str]:
        return {
            k for key, v in d.items() for k in (flat(v, f"{prefix}{key}.") if isinstance(v, dict) else {prefix + key})
        }

    documented = flat(data)
    missing = {k for k in _keys(Config) if not any(d == k or d.startswith(k + ".") for d in documented)}
    assert not missing, f"keys missing from gate.example.toml: {sorted(missing)}"


def test_asyncapi_covers_every_topic_and_its_schemas_exist() -> None:
    doc = yaml.safe_load((ROOT / "docs/asyncapi.yaml").read_text())
    addresses = {c["address"] for c in doc["channels"].values()}
    t = Topics("{prefix}", "{gateId}")
    for topic in (t.availability, t.state, t.checkin, t.alarm, t.telemetry, f"{t.base}/command", f"{t.base}/resync"):
        assert topic in addresses, topic
    for topic in central_topics("{prefix}").values():
        assert topic.replace("+/+", "{version}/{index}") in addresses, topic
    for channel in doc["channels"].values():
        for msg in channel["messages"].values():
            ref = msg["payload"].get("$ref", "")
            if ref.startswith("../"):
                assert json.loads((ROOT / "docs" / ref).read_text())


def test_mqtt_doc_names_every_reason_and_topic() -> None:
    from gate.decide.decision import Reason

    codes = (ROOT / "docs/codes.md").read_text()
    for reason in (
        "admitted",
        "staff_assisted",
        "malformed",
        "too_large",
        "unknown_key",
        "forged_signature",
        "clock_unsynced",
        "not_yet_valid",
        "expired",
        "revoked",
        "cache_stale",
        "not_cached",
        "replay",
        "out_of_service",
        "status_yellow_assist",
        "status_red",
    ):
        assert Reason(reason) and f"`{reason}`" in codes, reason


def test_every_alarm_the_gate_raises_is_in_the_contract_and_on_the_dashboards() -> None:
    """Every alarm name in the code (`Alarm("…"`, the lane's `Raise("…"`, a recovery's `note("…"`) is in the
    Home Assistant / Prometheus list (gate.ops.homeassistant.ALARMS), and every one of those in the alarm schema."""
    import re

    from gate.contracts import ALARMS

    code = "\n".join(p.read_text() for p in (ROOT / "gate").rglob("*.py"))
    raised = set(re.findall(r'(?:Alarm|Raise|\.note)\(\s*"([a-z_]+)"', code))
    assert {"fire", "held_open", "dead_letter", "outbox_gap", "gps_silent"} <= raised  # the search finds them
    described = json.loads((ROOT / "gate/schemas/alarm.json").read_text())["properties"]["alarm"]["description"]
    listed = set(re.findall(r"([a-z_]+)(?: \([^)]*\))?(?: \||$| \(new)", described))
    assert raised <= set(ALARMS), raised - set(ALARMS)
    assert set(ALARMS) <= listed, set(ALARMS) - listed


def test_the_asyncapi_document_parses_with_no_error_in_the_official_parser() -> None:
    from conftest import require

    node = require("node")
    if not (ROOT / "script/asyncapi/node_modules/@asyncapi/parser").exists():
        pytest.fail("the AsyncAPI parser is not installed (./install.sh --dev installs it)")
    r = subprocess.run(
        [node, str(ROOT / "script/asyncapi/validate.mjs"), str(ROOT / "docs/asyncapi.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert " 0 error(s)" in r.stdout


def test_the_installed_versions_are_the_constraints_ci_tests() -> None:
    """install.sh --dev installs with -c constraints.txt; every pinned package is at its pinned version."""
    from importlib.metadata import PackageNotFoundError, version

    wrong = []
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, pinned = line.partition("==")
        try:
            have = version(name)
        except PackageNotFoundError:
            have = "missing"
        if have != pinned:
            wrong.append(f"{name}: {have} installed, {pinned} pinned")
    assert not wrong, wrong


def test_every_runtime_dependency_has_an_upper_bound() -> None:
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = meta["dependencies"] + [d for group in meta["optional-dependencies"].values() for d in group]
    unbounded = [d for d in deps if "<" not in d and not d.startswith("types-")]
    assert not unbounded, unbounded
    assert meta["license"] == "Apache-2.0" and (ROOT / "LICENSE").exists()
