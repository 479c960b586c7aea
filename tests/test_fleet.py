"""The fleet simulation in the suite, small: bench/fleet.py --smoke (gates sharing their processes' threads) runs its
own checks (every revocation in force at every gate, every check-in decided stored exactly once across a collector
killed) and exits 0."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from pgcluster import pg_bin

from conftest import require

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # a cluster to start, a failover to wait for
BENCH = Path(__file__).resolve().parent.parent / "bench" / "fleet.py"


def test_a_small_fleet_gets_every_revocation_and_stores_every_check_in_exactly_once() -> None:
    require("mosquitto")
    if pg_bin("initdb") is None:
        require("initdb")  # fails under CI, skips elsewhere
    out = subprocess.run([sys.executable, str(BENCH), "--smoke"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    figures = {f["figure"]: f for f in map(json.loads, out.stdout.splitlines())}
    assert figures["revocation_fanout"]["applied"] == figures["revocation_fanout"]["gates"]
    assert figures["exactly_once"] == figures["exactly_once"] | {"lost": 0, "duplicates": 0, "ok": True}
    assert figures["collector_killed"]["decided"] > 0
    assert figures["fleet_connected"]["clients"] == 2 * figures["revocation_fanout"]["gates"]
    assert figures["ingest"]["cpu"]["gates_cores"] > 0  # where the CPU went, as the 1,000-gate run names its limit
