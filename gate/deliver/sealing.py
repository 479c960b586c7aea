"""Signed check-ins and alarms: the gate's device key signs the exact payload bytes, inside the payload.

A sealed payload is plain JSON that ends `…,"kid":"<hex>","sig":"<base64>"}`. The signature covers the
bytes up to the `,"sig"` field plus the closing `}` exactly as sent, so no consumer re-serialises anything:
`unseal` cuts the bytes back and verifies them. Consumers that do not check simply see two more fields."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gate.decide.keys import key_id_of

_SIG = b',"sig":"'


class Sealer:
    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.kid = key_id_of(key.public_key()).hex()

    def seal(self, payload: bytes) -> bytes:
        """`payload` is compact JSON ending in `}`."""
        signed = payload[:-1] + b',"kid":"' + self.kid.encode() + b'"}'
        sig = base64.b64encode(self._key.sign(signed))
        return signed[:-1] + _SIG + sig + b'"}'


@dataclass(frozen=True)
class Unsealed:
    body: dict[str, object]  # the payload as JSON, sig field included
    kid: str


class SealError(ValueError):
    """Why a payload is not genuine; `reason` is what the collector files it under."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def unseal(payload: bytes, key_of: dict[str, Ed25519PublicKey], gate_id: str) -> Unsealed:
    """Check a sealed payload from `gate_id` (the topic's) against the registered device keys."""
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise SealError("malformed", f"not JSON: {str(exc)[:60]}") from None
    if not isinstance(body, dict):
        raise SealError("malformed", "not a JSON object")
    at = payload.rfind(_SIG)
    if at < 0 or not payload.endswith(b'"}') or "sig" not in body:
        raise SealError("unsigned", "no signature")
    if body.get("gate_id") != gate_id:
        raise SealError("wrong_gate", f"payload says gate {str(body.get('gate_id'))[:40]!r}, topic says {gate_id!r}")
    key = key_of.get(gate_id)
    if key is None:
        raise SealError("unknown_gate", f"no device key registered for gate {gate_id!r}")
    kid = str(body.get("kid"))
    if kid != key_id_of(key).hex():
        raise SealError("wrong_key", f"signed with key {kid[:16]!r}, not gate {gate_id}'s")
    try:
        key.verify(base64.b64decode(payload[at + len(_SIG) : -2], validate=True), payload[:at] + b"}")
    except (InvalidSignature, ValueError):
        raise SealError("bad_signature", "the signature does not match the payload") from None
    return Unsealed(body, kid)
