"""Operators, roles and sessions: argon2 password hashes in the store, server-side sessions behind an
HttpOnly SameSite=Strict cookie, a CSRF token per session, and a login rate limit per address and name."""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field

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


@dataclass
class Session:
    name: str
    role: str
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    started: float = field(default_factory=time.monotonic)
    touched: float = field(default_factory=time.monotonic)

    def may(self, permit: str) -> bool:
        return self.role in PERMITS[permit]


class Sessions:
    """In memory: a restart signs everyone out. Ids are 256-bit random; idle and absolute expiry."""

    def __init__(self) -> None:
        self._by_id: dict[str, Session] = {}
        self._lock = threading.Lock()

    def start(self, name: str, role: str) -> tuple[str, Session]:
        sid = secrets.token_urlsafe(32)
        with self._lock:
            self._by_id[sid] = s = Session(name, role)
        return sid, s

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        now = time.monotonic()
        with self._lock:
            s = self._by_id.get(sid)
            if s is None:
                return None
            if now - s.touched > IDLE_SECONDS or now - s.started > MAX_SECONDS:
                del self._by_id[sid]
                return None
            s.touched = now
            return s

    def end(self, sid: str | None) -> None:
        with self._lock:
            self._by_id.pop(sid or "", None)


class RateLimit:
    """At most `limit` failed sign-ins per `per` seconds for one client address, and for one name."""

    def __init__(self, limit: int = 5, per: float = 900.0) -> None:
        self.limit, self.per = limit, per
        self._fails: defaultdict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        q = self._fails[key]
        while q and now - q[0] > self.per:
            q.popleft()
        return q

    def blocked(self, *keys: str) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(len(self._recent(k, now)) >= self.limit for k in keys)

    def failed(self, *keys: str) -> None:
        now = time.monotonic()
        with self._lock:
            for k in keys:
                self._recent(k, now).append(now)
