"""`gate demo --once` against a real broker: every scan shown is one check-in a subscriber receives."""

from __future__ import annotations

import json
import subprocess
import sys


def test_demo_once_exits_0_and_every_shown_scan_reached_the_broker(broker, subscriber_factory) -> None:
    sub = subscriber_factory(broker)
    r = subprocess.run([sys.executable, "-m", "gate", "demo", "--once", "--broker", f"{broker.host}:{broker.port}"],
                       capture_output=True, text=True, timeout=240)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    shown = [line for line in r.stdout.splitlines() if line.endswith(" stored")]
    decisions = [json.loads(p) for p in sub.wait_for("/checkin", len(shown))]
    decisions = [d for d in decisions if d["type"] == "decision"]
    assert len(decisions) == len(shown) >= 12
    shown_ids = {line.split(" check-in ")[1].split()[0] for line in shown}
    assert shown_ids == {d["event_id"][:13] for d in decisions}
    reasons = {d["reason"] for d in decisions}
    assert {"admitted", "replay", "expired", "forged_signature", "unknown_key", "status_red", "revoked",
            "status_yellow_assist", "staff_assisted", "malformed"} <= reasons  # fmt: skip
    assert "acknowledged by the broker" in r.stdout
    acks = [line.split("check-in ")[1] for line in r.stdout.splitlines() if "broker acked" in line]
    acked = {i for line in acks for i in line.split(", ")}
    assert shown_ids <= acked  # the demo showed each check-in's delivery
