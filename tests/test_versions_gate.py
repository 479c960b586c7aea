"""A gate never applies an older version, joining or not: a gate that restarts (and so joins again) over a broker
whose retained policy, keys and snapshot went back keeps the newer versions it holds, and counts the replays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_sync import PREFIX, T, central, rows, settle  # noqa: F401 (central: test_sync's fixture)

from conftest import make_config
from fakes import started_gate
from gate.sync.envelope import sign

pytestmark = pytest.mark.slow


def started(tmp_path: Path, keys: Any, broker: Any, central: Any) -> Any:  # noqa: F811

    cfg = make_config(
        tmp_path / "state",
        keys,
        mqtt={"host": broker.host, "port": broker.port},
        central={"keys": [str(central.pub)], "command_max_age_seconds": 30},
    )
    g = started_gate(cfg)
    return g


def test_a_rejoining_gate_keeps_newer_versions_than_the_broker_retains(
    tmp_path: Path,
    keys: Any,
    broker: Any,
    central: Any,  # noqa: F811
) -> None:
    g = started(tmp_path, keys, broker, central)
    try:
        central.send(T["policy"], sign(central.key, "policy", {"version": 5, "policy": {}}), True)
        trusted = [{"pem": keys.public_path.read_text()}]
        central.send(T["keys"], sign(central.key, "keys", {"version": 3, "keys": trusted}), True)
        central.snapshot(4, rows(5))
        assert settle(g, lambda: (g.decider.policy.version, g.cache.info().version) == (5, 4))
        assert settle(g, lambda: (g.sync.trust.keys_doc.get() or {}).get("version") == 3)
    finally:
        g.close()
    # The broker's retained messages go back (a restored broker, or a tool without the version check) ...
    central.send(T["policy"], sign(central.key, "policy", {"version": 2, "policy": {"passback_seconds": 1}}), True)
    older_keys = {"version": 1, "keys": [{"pem": keys.public_path.read_text()}]}
    central.send(T["keys"], sign(central.key, "keys", older_keys), True)
    central.snapshot(2, rows(3))
    # ... and the gate restarts and subscribes again: it takes none of them.
    again = started(tmp_path, keys, broker, central)
    try:
        assert settle(again, lambda: again.sync.verifier.rejected["replayed"] >= 3)
        assert again.decider.policy.version == 5 and again.decider.policy.passback_seconds != 1
        assert again.cache.info().version == 4 and again.cache.info().count == 5
        assert (again.sync.trust.keys_doc.get() or {}).get("version") == 3
    finally:
        again.close()
