"""`gate verify`: one decision on a code's text, with no actuation and no publishing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gate.config.model import load_config
from gate.config.policy import Policy
from gate.core.clock import SystemClock
from gate.core.errors import ConfigError
from gate.decide.decision import Decider
from gate.decide.keys import TrustStore
from gate.decide.passcache import CacheInfo, PassCache
from gate.decide.policy import PolicyStore


def verify_once(code: str, config: Path | None, trust_files: list[Path]) -> dict[str, Any]:
    if config is None and not trust_files:
        raise ConfigError("verify: give --config or at least one --trust PUBLIC_KEY_FILE")
    if config is not None:
        cfg = load_config(config)
        trust = TrustStore.from_files([*cfg.trust.keys, *trust_files])
        policy = PolicyStore(cfg.gate.state_dir / "device.json", cfg.policy).load()
        clock, max_payload = SystemClock(cfg.clock.sync_source), cfg.scanner.max_payload_bytes
        db = cfg.gate.state_dir / "passes.db"
        cache: PassCache | None = PassCache(db) if db.exists() else None
    else:
        trust = TrustStore.from_files(trust_files)
        policy = Policy()
        clock = SystemClock()
        max_payload, cache = 512, None
    if cache is None:  # an empty cache: never synced, so the policy's stale-cache rules apply
        decider = Decider(trust, policy, lambda t: None, lambda: CacheInfo(0, None, 0, 0), max_payload)
    else:
        decider = Decider(trust, policy, cache.lookup, cache.info, max_payload)
    # A code typed or pasted in any bytes: undecodable ones reach the decision as they came (and are denied).
    d = decider.decide(code.strip().encode("utf-8", "surrogateescape"), clock.read())
    if cache is not None:
        cache.close()
    out: dict[str, Any] = {
        "decision": d.action.value,
        "reason": d.reason.value,
        "companions": d.companions,
        "token": d.token,
        "kind": d.kind,
        "detail": d.detail,
    }
    if config is not None:
        out["venue"] = cfg.venue.venue().as_json()
    return out
