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

from gate.core import reserve
from gate.core.docstore import DocStore
from gate.core.errors import GateError
from gate.decide.keys import TrustStore, key_id_of

KINDS = ("manifest", "chunk", "delta", "policy", "keys", "command")


class Rejected(GateError, ValueError):
    """A control message failed a check; `reason` is the counter it is filed under, `facts` what central is told
    in a command's reply (the two clocks, the gate's epoch)."""

    def __init__(self, reason: str, message: str, facts: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.facts = facts or {}


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
        self,
        central: TrustStore,
        gate_id: str,
        max_bytes: int,
        max_age: float,
        nonces: DocStore | None = None,
        ahead: float = 30.0,
    ) -> None:
        self.central = central
        self.gate_id = gate_id
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.ahead = min(ahead, max_age)  # how far ahead of the gate's clock a command may be signed
        self.rejected: Counter[str] = Counter()
        self.accepted = 0
        self._store = nonces  # nonces and high-water marks survive a restart: a captured command cannot be replayed
        stored = (nonces.get() if nonces is not None else None) or {}
        self._nonces: dict[str, float] = {str(n): float(t) for n, t in stored.get("seen", {}).items()}
        # Per publisher key: the signed time of the last command carried out. Central's signed time orders
        # commands, never the gate's clock, so no jump of either clock lets an old command through again.
        self._hwm: dict[str, float] = {str(k): float(t) for k, t in stored.get("hwm", {}).items()}
        # Per publisher key: the epoch of that order. Central raises it (signed) to start a new order when its
        # clock was wrong: the high-water mark of the old epoch no longer holds its commands back.
        self._epoch: dict[str, int] = {str(k): int(e) for k, e in stored.get("epoch", {}).items()}

    def _fail(self, reason: str, message: str) -> Rejected:
        self.rejected[reason] += 1
        return Rejected(reason, message)

    def open(self, payload: bytes, expect: str) -> ControlMessage:
        if len(payload) > self.max_bytes:
            raise self._fail("oversized", f"{len(payload)} bytes exceeds {self.max_bytes}")
        try:
            env = json.loads(payload)
            kid = bytes.fromhex(env["kid"])
            sig = base64.b64decode(env["sig"], validate=True)
            msg = env["msg"]
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

    def _fail_with(self, reason: str, message: str, msg: ControlMessage, now: float) -> Rejected:
        self.rejected[reason] += 1
        facts = {"signed_at": msg.ts, "gate_time": now, "epoch": self._epoch.get(msg.kid, 0)}
        if (last := self._hwm.get(msg.kid)) is not None:
            facts["last_carried_out"] = last
        return Rejected(reason, message, facts)

    def fresh(self, msg: ControlMessage, now: float) -> None:
        """For commands: a recent timestamp, not further ahead of the gate's clock than `ahead`, signed no earlier
        than the last command carried out from the same key in the same epoch, and a nonce never seen before.
        Stored before it returns (the command is then carried out); nothing moves if it cannot be stored."""
        age = now - msg.ts
        if age > self.max_age:
            raise self._fail_with("stale", f"signed {age:.0f}s ago (at most {self.max_age:.0f}s allowed)", msg, now)
        if -age > self.ahead:
            raise self._fail_with(
                "clock_ahead",
                f"signed at {msg.ts:.0f}, {-age:.0f}s ahead of the gate's clock ({now:.0f}); at most "
                f"{self.ahead:.0f}s ahead is accepted: check central's clock",
                msg,
                now,
            )
        current = self._epoch.get(msg.kid, 0)
        epoch = _epoch_of(msg, current)
        if epoch is None:
            raise self._fail_with("malformed", "epoch must be a whole number >= 0", msg, now)
        if epoch < current:
            raise self._fail_with("old_epoch", f"epoch {epoch} is older than this gate's epoch {current}", msg, now)
        last = self._hwm.get(msg.kid) if epoch == current else None
        if last is not None and msg.ts < last:
            raise self._fail_with(
                "out_of_order",
                f"signed at {msg.ts:.0f}, before the last command carried out ({last:.0f}, gate clock {now:.0f}); "
                f"if central's clock was ahead then, send it with a new epoch (above {current})",
                msg,
                now,
            )
        if msg.nonce in self._nonces:
            raise self._fail_with("replayed", "nonce already used", msg, now)
        hwm, epochs = {**self._hwm, msg.kid: msg.ts}, {**self._epoch, msg.kid: epoch}
        floor = min(hwm.values())  # older nonces are refused by the high-water mark anyway
        nonces = {n: t for n, t in {**self._nonces, msg.nonce: msg.ts}.items() if t >= floor}
        if (store := self._store) is not None:  # on disk before the command is acted on; OSError: nothing changed
            reserve.write(store.path, lambda: store.put({"seen": nonces, "hwm": hwm, "epoch": epochs}))
        self._hwm = hwm
        self._epoch = epochs
        self._nonces = nonces

    def old(self, what: str) -> Rejected:
        return self._fail("replayed", what)

    def invalid(self, what: str) -> Rejected:
        return self._fail("malformed", what)


def _epoch_of(msg: ControlMessage, current: int) -> int | None:
    """The command's signed epoch (the gate's current one when central names none); None if it is no epoch."""
    epoch = msg.body.get("epoch", current)
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 0:
        return None
    return epoch
