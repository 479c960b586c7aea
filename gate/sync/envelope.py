"""Signed control-plane messages from central: envelope, signature, size, freshness and replay checks."""

from __future__ import annotations

import base64
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gate.core.docstore import DocStore
from gate.core.errors import GateError
from gate.decide.keys import TrustStore, key_id_of

KINDS = ("manifest", "chunk", "delta", "policy", "keys", "command")


class Rejected(GateError, ValueError):
    """A control message failed a check; `reason` is the counter it is filed under."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class ControlMessage:
    type: str
    gate: str
    ts: float
    nonce: str
    body: dict[str, Any]
    text: str = field(default="", repr=False, compare=False)  # the signed JSON, as central wrote it
    kid: str = ""  # the signing key's id (hex): each publisher's commands are ordered by its signed time


def sign(key: Ed25519PrivateKey, type_: str, body: dict[str, Any], gate: str = "*", ts: float | None = None) -> bytes:
    """Central side: wrap `body` in a signed envelope `{"kid", "sig", "msg"}`."""
    msg = json.dumps(
        {"type": type_, "gate": gate, "ts": time.time() if ts is None else ts, "nonce": os.urandom(12).hex(), **body},
        separators=(",", ":"),
    )
    sig = key.sign(msg.encode())
    return json.dumps(
        {"kid": key_id_of(key.public_key()).hex(), "sig": base64.b64encode(sig).decode(), "msg": msg}
    ).encode()


class Verifier:
    """Gate side. Every failure raises Rejected and is counted in `rejected`; nothing else escapes."""

    def __init__(
        self, central: TrustStore, gate_id: str, max_bytes: int, max_age: float, nonces: DocStore | None = None
    ) -> None:
        self.central, self.gate_id, self.max_bytes, self.max_age = central, gate_id, max_bytes, max_age
        self.rejected: Counter[str] = Counter()
        self.accepted = 0
        self._store = nonces  # nonces and high-water marks survive a restart: a captured command cannot be replayed
        stored = (nonces.get() if nonces is not None else None) or {}
        self._nonces: dict[str, float] = {str(n): float(t) for n, t in stored.get("seen", {}).items()}
        # Per publisher key: the signed time of the last command carried out. Central's signed time orders
        # commands, never the gate's clock, so no jump of either clock lets an old command through again.
        self._hwm: dict[str, float] = {str(k): float(t) for k, t in stored.get("hwm", {}).items()}

    def _fail(self, reason: str, message: str) -> Rejected:
        self.rejected[reason] += 1
        return Rejected(reason, message)

    def open(self, payload: bytes, expect: str) -> ControlMessage:
        if len(payload) > self.max_bytes:
            raise self._fail("oversized", f"{len(payload)} bytes exceeds {self.max_bytes}")
        try:
            env = json.loads(payload)
            kid, sig, msg = bytes.fromhex(env["kid"]), base64.b64decode(env["sig"], validate=True), env["msg"]
            if not isinstance(msg, str):
                raise TypeError("msg is not a string")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise self._fail("malformed", f"not a signed envelope: {type(exc).__name__}: {str(exc)[:80]}") from None
        ok = self.central.verify(kid, sig, msg.encode())
        if ok is None:
            raise self._fail("unknown_key", f"key id {kid.hex()} is not a pinned central key")
        if not ok:
            raise self._fail("bad_signature", "signature does not match")
        try:
            inner = json.loads(msg)
            out = ControlMessage(
                str(inner.pop("type")),
                str(inner.pop("gate")),
                float(inner.pop("ts")),
                str(inner.pop("nonce")),
                inner,
                msg,
                kid.hex(),
            )
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise self._fail("malformed", f"signed message lacks type/gate/ts/nonce: {str(exc)[:80]}") from None
        if out.type != expect:
            raise self._fail("wrong_type", f"a {out.type!r} message on the {expect!r} topic")
        if out.gate not in ("*", self.gate_id):
            raise self._fail("wrong_gate", f"addressed to gate {out.gate!r}")
        return out

    def fresh(self, msg: ControlMessage, now: float) -> None:
        """For commands: a recent timestamp, signed no earlier than the last command carried out from the same
        key, and a nonce never seen before."""
        if abs(now - msg.ts) > self.max_age:
            age = now - msg.ts
            when = f"{age:.0f}s old" if age > 0 else f"{-age:.0f}s in the future"
            raise self._fail("stale", f"timestamp {msg.ts:.0f} is {when} (at most {self.max_age:.0f}s allowed)")
        last = self._hwm.get(msg.kid)
        if last is not None and msg.ts < last:
            raise self._fail(
                "replayed", f"signed at {msg.ts:.0f}, older than the last command carried out ({last:.0f})"
            )
        if msg.nonce in self._nonces:
            raise self._fail("replayed", "nonce already used")
        self._hwm[msg.kid] = msg.ts
        self._nonces[msg.nonce] = msg.ts
        floor = min(self._hwm.values())  # older nonces are refused by the high-water mark anyway
        self._nonces = {n: t for n, t in self._nonces.items() if t >= floor}
        if self._store is not None:  # on disk before the command is acted on
            self._store.put({"seen": self._nonces, "hwm": self._hwm})

    def old(self, what: str) -> Rejected:
        return self._fail("replayed", what)

    def invalid(self, what: str) -> Rejected:
        return self._fail("malformed", what)
