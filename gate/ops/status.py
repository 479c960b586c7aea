"""`gate status`: the running daemon's state, read from the status file it keeps."""

from __future__ import annotations

import json
import time
from typing import Any

from gate.config.model import Config


def show_status(cfg: Config, as_json: bool) -> int:
    """0 while the daemon keeps its status file fresh, 1 otherwise; with --json, always one JSON object."""
    path = cfg.gate.state_dir / "status.json"
    try:
        state = json.loads(path.read_text())
        age = time.time() - path.stat().st_mtime
    except (OSError, json.JSONDecodeError) as exc:
        why = (
            "no status file: is the daemon running? (systemctl status gate)"
            if isinstance(exc, FileNotFoundError)
            else f"cannot read it: {getattr(exc, 'strerror', None) or exc}"
        )
        if as_json:
            print(json.dumps({"running": False, "gate_id": cfg.gate.id, "status_file": str(path), "error": why}))
        else:
            print(f"gate status: {path}: {why}")
        return 1
    state["status_file_age_s"] = round(age, 1)
    state["running"] = age < 30 and not state.get("stopped")
    if as_json:
        print(json.dumps(state))
        return 0 if state["running"] else 1
    if state.get("stopped"):
        print(
            f"gate {state['gate_id']}: stopped ({state['stopped']['reason']}) at {time.ctime(state['stopped']['at'])}"
        )
        return 1
    print(
        f"gate {state['gate_id']} (version {state['version']})"
        + ("" if age < 30 else f"  STALE: not updated for {age:.0f}s, daemon hung or stopped")
    )
    rows = [
        ("mode", state["mode"]),
        ("broker", _broker(state)),
        (
            "cache",
            f"version {state['cache_version']}.{state['cache_seq']}, {state['cache_entries']} entries, "
            + ("never synced" if state["cache_age_s"] is None else f"age {state['cache_age_s']}s"),
        ),
        ("policy", f"version {state['policy_version']}"),
        (
            "outbox",
            f"{state['outbox_depth']} waiting, {state['outbox_dropped']} dropped, "
            f"{state.get('dead_letters', 0)} dead letters",
        ),
        ("clock", "synchronised" if state["clock_synced"] else "NOT synchronised"),
    ]
    for k, v in rows:
        print(f"  {k:<8} {v}")
    for d in state.get("last", [])[-5:]:
        print(
            f"  last     {time.strftime('%H:%M:%S', time.localtime(d['time']))} {d['decision']:<6} "
            f"{d['reason']} {d['token']}"
        )
    return 0 if age < 30 else 1


def _broker(state: dict[str, Any]) -> str:
    """connected (to which node), or DISCONNECTED with the failure named (TLS, DNS, refused …)."""
    failure = state.get("broker_failure")
    named = f": {failure['reason']}: {failure['detail']}" if failure else ""
    if failure and not state["broker_connected"]:  # the detail names the broker tried
        return "DISCONNECTED" + named
    return ("connected" if state["broker_connected"] else "DISCONNECTED") + on_broker(state) + named


def on_broker(state: dict[str, Any]) -> str:
    """ " to host:port" (" trying host:port" while disconnected) when the state names the broker."""
    name = state.get("broker")
    if not name:
        return ""
    return f" to {name}" if state["broker_connected"] else f", trying {name}"
