"""The measures in force: the policy the broker retains for the gates (version, signature time, rules), and
publishing a new one signed by central's key, as `gate central publish-policy` does."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError

from gate.central.mqtt import retained
from gate.central.publish import publish_policy, send_command, signed_body
from gate.config.model import MqttSection
from gate.config.policy import Policy
from gate.decide.keys import load_private_key
from gate.sync.worker import central_topics

from .forms import FormError


@dataclass(frozen=True)
class Link:
    """How the console reaches the gates: the broker, the topic prefix and central's signing key."""

    broker: MqttSection | tuple[str, int]
    prefix: str
    key: Ed25519PrivateKey

    @classmethod
    def make(cls, broker: MqttSection | tuple[str, int] | None, prefix: str, key: str | None) -> Link | None:
        return None if broker is None or key is None else cls(broker, prefix, load_private_key(Path(key)))

    def policy_in_force(self) -> tuple[dict[str, Any], float | None]:
        """The retained policy (its document with `version`) and when central signed it; the defaults if none."""
        # shown only if central's key signed it: what the gates check too
        msg = signed_body(retained(self.broker, central_topics(self.prefix)["policy"]), self.key)
        try:
            if msg is not None:
                doc = {**msg["policy"], "version": int(msg["version"])}
                return Policy.model_validate(doc).model_dump(mode="json"), float(msg["ts"])
        except (ValueError, KeyError, TypeError, AttributeError, ValidationError):
            pass  # not a policy this console can read: show the defaults, and say so (no signature time)
        return Policy().model_dump(mode="json"), None

    def publish(self, doc: dict[str, Any], shown: int | None = None) -> int:
        """Refused (BackwardsError) unless the version in force is still `shown`, and `doc`'s is above it."""
        return publish_policy(self.broker, self.prefix, self.key, checked(doc), shown)

    def command(self, gate_id: str, name: str, timeout: float = 10.0) -> dict[str, Any] | None:
        return send_command(self.broker, self.prefix, self.key, gate_id, name, {}, timeout)


def checked(doc: dict[str, Any]) -> dict[str, Any]:
    """The document as the gates will validate it (the same model, strict), or a FormError."""
    try:
        return Policy.model_validate_json(json.dumps(doc), strict=True).model_dump(mode="json")
    except ValidationError as exc:
        first = exc.errors()[0]
        raise FormError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None
