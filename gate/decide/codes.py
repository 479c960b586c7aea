"""The signed pass-code format GT1 (see docs/codes.md): parse, verify and issue."""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from enum import StrEnum

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gate.contracts import CODE_PREFIX
from gate.core.errors import CodeError
from gate.decide.base45 import b45decode, b45encode
from gate.decide.keys import KEY_ID_BYTES, TrustStore, key_id_of

PREFIX = CODE_PREFIX
VERSION = 1
SIGNATURE_BYTES = 64
MAX_COMPANIONS = 15
_HEADER = struct.Struct(">B4sBIIBB")  # version, key id, flags, issued_at, expires_at, companions, token len
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{6,32}")
_ID_CARD_RE = re.compile(r"\d{17}[\dXx]")


class Kind(StrEnum):
    PHONE = "phone"
    CARD = "card"
    STAFF = "staff"


class Status(StrEnum):
    GREEN = "green"
    YELLOW = "yellow"
    RED = "red"


_KINDS = list(Kind)
_STATUSES = list(Status)


def check_token(token: str) -> str:
    """Accept only pseudonymous ids: 6–32 of [A-Za-z0-9_-], never all digits or shaped like an ID card."""
    if not _TOKEN_RE.fullmatch(token):
        raise CodeError("malformed", "token id must be 6-32 characters of A-Z a-z 0-9 _ -")
    if token.isdigit() or _ID_CARD_RE.fullmatch(token):
        raise CodeError("malformed", "token id looks like a phone or ID-card number; use a random id")
    return token


@dataclass(frozen=True)
class PassCode:
    """A parsed (not yet verified) code."""

    key_id: bytes
    kind: Kind
    status: Status
    issued_at: int
    expires_at: int
    companions: int
    token: str
    body: bytes
    signature: bytes

    def verify(self, trust: TrustStore) -> None:
        """Raise CodeError(unknown_key | forged_signature) unless a trusted key signed this code."""
        ok = trust.verify(self.key_id, self.signature, self.body)
        if ok is None:
            raise CodeError("unknown_key", f"key id {self.key_id.hex()} is not trusted")
        if not ok:
            raise CodeError("forged_signature", "signature does not match the code")


def parse(payload: bytes | str) -> PassCode:
    """Parse the text of a scanned code; raise CodeError("malformed") naming what is wrong."""
    if isinstance(payload, bytes):
        try:
            payload = payload.decode("ascii")
        except UnicodeDecodeError:
            raise CodeError("malformed", "code is not ASCII text") from None
    if not payload.startswith(PREFIX):
        raise CodeError("malformed", f"code does not start with {PREFIX!r}")
    raw = b45decode(payload[len(PREFIX) :])
    if len(raw) < _HEADER.size + SIGNATURE_BYTES:
        raise CodeError("malformed", "code is too short to hold a signed pass")
    version, key_id, flags, iat, exp, companions, tlen = _HEADER.unpack_from(raw)
    if version != VERSION:
        raise CodeError("malformed", f"unknown code version {version}")
    body_len = _HEADER.size + tlen
    if len(raw) != body_len + SIGNATURE_BYTES:
        raise CodeError("malformed", "code length does not match its token length (truncated or unsigned)")
    kind_i, status_i = flags & 0x3, (flags >> 2) & 0x3
    if flags >> 4 or kind_i >= len(_KINDS) or status_i >= len(_STATUSES):
        raise CodeError("malformed", f"invalid flags byte 0x{flags:02x}")
    if companions > MAX_COMPANIONS:
        raise CodeError("malformed", f"companions {companions} exceeds {MAX_COMPANIONS}")
    if exp < iat:
        raise CodeError("malformed", "expires before it is issued")
    try:
        token = raw[_HEADER.size : body_len].decode("ascii")
    except UnicodeDecodeError:
        raise CodeError("malformed", "token id is not ASCII") from None
    check_token(token)
    return PassCode(
        key_id=key_id,
        kind=_KINDS[kind_i],
        status=_STATUSES[status_i],
        issued_at=iat,
        expires_at=exp,
        companions=companions,
        token=token,
        body=raw[:body_len],
        signature=raw[body_len:],
    )


def issue(
    key: Ed25519PrivateKey,
    token: str,
    status: Status,
    issued_at: int,
    valid_for: int,
    kind: Kind = Kind.PHONE,
    companions: int = 0,
) -> str:
    """Sign and encode a code; `issued_at` is the start of validity (the --not-before time if given)."""
    check_token(token)
    if not 0 <= companions <= MAX_COMPANIONS:
        raise CodeError("malformed", f"companions must be 0..{MAX_COMPANIONS}")
    if valid_for <= 0 or not 0 <= issued_at <= 0xFFFFFFFF - valid_for:
        raise CodeError("malformed", "validity window out of range")
    flags = _KINDS.index(kind) | (_STATUSES.index(status) << 2)
    tok = token.encode("ascii")
    kid = key_id_of(key.public_key())
    assert len(kid) == KEY_ID_BYTES
    body = _HEADER.pack(VERSION, kid, flags, issued_at, issued_at + valid_for, companions, len(tok)) + tok
    return PREFIX + b45encode(body + key.sign(body))
