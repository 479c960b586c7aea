"""Operators, roles and sessions: argon2 password hashes in the store, server-side sessions behind an
HttpOnly SameSite=Strict cookie, a CSRF token per session, and sign-in delays per address and name."""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from gate.core.errors import GateError

# What each page or action needs. Tokens are shown only where `trace` is allowed.
PERMITS = {
    "trace": {"tracer"},
    "fleet": {"operator", "supervisor"},
    "command": {"operator"},
    "measures": {"supervisor"},
    "audit": {"supervisor"},
}
NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")  # the audit's operator id: the same rule as the CLI's --operator
MIN_PASSWORD = 10
IDLE_SECONDS = 30 * 60
MAX_SECONDS = 12 * 3600
hasher = PasswordHasher()


def check_name(name: str) -> str:
    if not NAME.match(name or ""):
        raise GateError("console-user: a name is letters, digits, _ . @ - (up to 64)")
    return name


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise GateError(f"console-user: a password has at least {MIN_PASSWORD} characters")
    return hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """Constant work whether or not the user exists: an unknown name is checked against a dummy hash."""
    try:
        return hasher.verify(stored_hash or _DUMMY, password) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False


_DUMMY = hasher.hash(secrets.token_hex(16))


@dataclass(frozen=True)
class Session:
    """A signed-in operator, as the central database holds the session (docs/console.md, Sessions)."""

    name: str
    role: str
    csrf: str

    def may(self, permit: str) -> bool:
        return self.role in PERMITS[permit]


FREE_FAILS = 3  # wrong passwords before any delay
MAX_DELAY = 30.0  # seconds: the longest wait a sign-in is made to take
MAX_KEYS = 50_000  # addresses and names remembered; past it the oldest are forgotten (memory stays bounded)


class RateLimit:
    """Failed sign-ins per client address and per name within `per` seconds: past FREE_FAILS, each sign-in of
    that address or name waits 1, 2, 4 … up to MAX_DELAY seconds before its password is checked. A delay, never
    a lock: the right password still signs its owner in, however many wrong ones others tried."""

    def __init__(self, per: float = 900.0) -> None:
        self.per = per
        self._fails: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._fails.get(key) or deque()
        while q and now - q[0] > self.per:
            q.popleft()
        return q

    def delay(self, *keys: str) -> float:
        now = time.monotonic()
        with self._lock:
            fails = max(len(self._recent(k, now)) for k in keys)
        return 0.0 if fails < FREE_FAILS else min(MAX_DELAY, 2.0 ** (fails - FREE_FAILS))

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for k in keys:
                q = self._recent(k, now)
                q.append(now)
                self._fails[k] = q
                self._fails.move_to_end(k)
            while len(self._fails) > MAX_KEYS:
                self._fails.popitem(last=False)
