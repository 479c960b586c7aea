"""Central's policy and trust keys: versioned, stored before the lane hears of them."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gate.config.policy import Policy
from gate.contracts import LaneControl
from gate.core.docstore import DocStore
from gate.core.errors import ConfigError
from gate.decide.keys import key_id_of, public_from_pem
from gate.decide.policy import PolicyStore
from gate.sync.envelope import ControlMessage, Verifier

log = logging.getLogger(__name__)


def central_keys(state_dir: Path, now: float | None = None) -> list[Any]:
    """Central's stored trust keys whose window includes now (overlap makes rotation seamless)."""
    now = time.time() if now is None else now
    doc = DocStore(state_dir / "device.json", "trust_keys").get() or {}
    return [
        public_from_pem(k["pem"].encode(), "stored keys")
        for k in doc.get("keys", [])
        if k["not_before"] <= now and (not k["not_after"] or now < k["not_after"])
    ]


class PolicyAndKeys:
    """The sync worker's: device.json's policy and trust keys, and the set of keys the lane trusts."""

    def __init__(
        self, control: LaneControl, verifier: Verifier, base_keys: list[Any], state_dir: Path, default: Policy
    ) -> None:
        self.control = control
        self.verifier = verifier
        self.base_keys = base_keys
        self.state_dir = state_dir
        self.keys_doc = DocStore(state_dir / "device.json", "trust_keys")
        self.policies = PolicyStore(state_dir / "device.json", default)
        self.policy_version = self.policies.load().version
        self._trusted: list[bytes] = []

    def policy(self, msg: ControlMessage) -> None:
        try:
            doc = {**msg.body.get("policy", {}), "version": int(msg.body["version"])}
            policy = Policy.model_validate_json(json.dumps(doc), strict=True)  # no coercion, as in the config
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            raise self.verifier.invalid(f"policy: {str(exc)[:200]}") from None
        current = self.policy_version
        if policy.version < current:
            raise self.verifier.old(f"policy version {policy.version} is older than {current}")
        if policy.version == current:
            return
        self.policies.save(policy)  # on disk before the lane acts on it
        self.policy_version = policy.version
        self.control.apply_policy(policy)
        log.info("central: policy version %d in force", policy.version)
        self.control.report()

    def keys(self, msg: ControlMessage) -> None:
        try:
            version = int(msg.body["version"])
            keys: list[dict[str, Any]] = [
                {
                    "pem": str(k["pem"]),
                    "not_before": float(k.get("not_before") or 0),
                    "not_after": float(k.get("not_after") or 0),
                }
                for k in msg.body["keys"]
            ]
            for k in keys:
                public_from_pem(k["pem"].encode(), "keys message")
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise self.verifier.invalid(f"keys: {exc}") from None
        current = (self.keys_doc.get() or {}).get("version", 0)
        if version < current:
            raise self.verifier.old(f"keys version {version} is older than {current}")
        if version == current:
            return
        self.keys_doc.put({"version": version, "keys": keys})
        self.refresh()
        log.info("central: trust keys version %d (%d keys)", version, len(keys))

    def refresh(self, now: float | None = None) -> None:
        """Config keys plus central's keys in their window; the lane hears only when the set changes."""
        keys = [*self.base_keys, *central_keys(self.state_dir, now)]
        ids = sorted(key_id_of(k) for k in keys)
        if ids != self._trusted:
            self._trusted = ids
            self.control.trust_keys(keys)
