"""Versions only move forward at central's tools: `publish-policy`, `publish-keys`, `publish-snapshot` and
`publish-delta` read what the broker retains (signed by central's key, as the gates check it) and refuse to go
back, so a gate that joins later can never take an older version than the fleet runs. Real mosquitto."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gate.central.mqtt import publisher, retained
from gate.central.publish import signed_body
from gate.sync.envelope import sign
from gate.sync.worker import central_topics

pytestmark = pytest.mark.slow
TOPICS = central_topics("gate")


def central(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "gate", "central", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def version_retained(broker: Any, kind: str, keys: Any) -> int | None:
    body = signed_body(retained((broker.host, broker.port), TOPICS[kind]), keys.private)
    return None if body is None else int(body["version"])


def test_publish_policy_refuses_a_version_at_or_below_the_one_in_force(broker: Any, keys: Any, tmp_path: Path) -> None:
    b, key = f"{broker.host}:{broker.port}", str(keys.private_path)
    doc, in_force = tmp_path / "policy.json", None
    for version, ok in ((3, True), (2, False), (3, False), (4, True), (1, False)):
        doc.write_text(json.dumps({"version": version, "passback_seconds": 10 + version}))
        r = central("publish-policy", str(doc), "--broker", b, "--key", key)
        assert (r.returncode == 0) is ok, (version, r.stderr)
        if ok:
            in_force = version
        else:
            line = r.stderr.strip()
            assert "\n" not in line and f"version {version} is not above the one in force ({in_force})" in line
        assert version_retained(broker, "policy", keys) == in_force


def test_a_message_another_key_signed_is_no_version_in_force(broker: Any, keys: Any, tmp_path: Path) -> None:
    with publisher((broker.host, broker.port)) as pub:
        pub(TOPICS["policy"], sign(keys.other, "policy", {"version": 99, "policy": {}}), True)
    doc = tmp_path / "policy.json"
    doc.write_text(json.dumps({"version": 1}))
    r = central("publish-policy", str(doc), "--broker", f"{broker.host}:{broker.port}", "--key", str(keys.private_path))
    assert r.returncode == 0, r.stderr  # the gates refuse the forged 99: it cannot hold central back


def test_publish_keys_and_snapshots_only_move_forward_and_deltas_need_the_snapshot_in_force(
    broker: Any, keys: Any, tmp_path: Path
) -> None:
    b, key = f"{broker.host}:{broker.port}", str(keys.private_path)
    assert central("publish-keys", "--version", "5", str(keys.public_path), "--broker", b, "--key", key).returncode == 0
    r = central("publish-keys", "--version", "5", str(keys.public_path), "--broker", b, "--key", key)
    assert r.returncode == 1 and "publish-keys: version 5 is not above the one in force (5)" in r.stderr
    passes = tmp_path / "passes.csv"
    passes.write_text("token,status\ntok-000001,green\n")
    assert central("publish-snapshot", str(passes), "--version", "7", "--broker", b, "--key", key).returncode == 0
    r = central("publish-snapshot", str(passes), "--version", "6", "--broker", b, "--key", key)
    assert r.returncode == 1 and "version 6 is not above the one in force (7)" in r.stderr
    assert version_retained(broker, "manifest", keys) == 7
    r = central(
        "publish-delta", "--base-version", "6", "--seq", "1", "--delete", "tok-000001", "--broker", b, "--key", key
    )
    assert r.returncode == 1 and "base version 6 is not the snapshot in force (7)" in r.stderr
    r = central(
        "publish-delta", "--base-version", "7", "--seq", "1", "--delete", "tok-000001", "--broker", b, "--key", key
    )
    assert r.returncode == 0, r.stderr
