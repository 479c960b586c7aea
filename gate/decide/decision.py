"""The admission decision: verify a code offline, apply cache and policy. Reads the cache through callbacks."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from gate.config.policy import Action, Fallback, Policy
from gate.core.clock import ClockReading
from gate.core.errors import CodeError
from gate.decide.codes import Kind, PassCode, Status, parse
from gate.decide.keys import TrustStore
from gate.decide.passcache import CacheEntry, CacheInfo


class Reason(StrEnum):
    ADMITTED = "admitted"
    STAFF_ASSISTED = "staff_assisted"
    MALFORMED = "malformed"
    TOO_LARGE = "too_large"
    UNKNOWN_KEY = "unknown_key"
    FORGED_SIGNATURE = "forged_signature"
    CLOCK_UNSYNCED = "clock_unsynced"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    REVOKED = "revoked"
    CACHE_STALE = "cache_stale"
    NOT_CACHED = "not_cached"
    STATUS_GREEN_ASSIST = "status_green_assist"
    STATUS_GREEN = "status_green"
    STATUS_YELLOW = "status_yellow"
    STATUS_YELLOW_ASSIST = "status_yellow_assist"
    STATUS_RED = "status_red"
    STATUS_RED_ASSIST = "status_red_assist"
    REPLAY = "replay"
    OUT_OF_SERVICE = "out_of_service"


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: Reason
    detail: str
    token: str | None = None
    kind: str | None = None  # phone | card | staff | staff_assisted
    companions: int = 0
    operator: str | None = None  # the staff token that assisted

    @property
    def admits(self) -> bool:
        return self.action is Action.ADMIT


UNPROVEN = "pass cache unproven (damaged storage); waiting for central's snapshot"


def _deny(reason: Reason, detail: str, code: PassCode | None = None) -> Decision:
    return Decision(Action.DENY, reason, detail, code.token if code else None, code.kind if code else None)


def _fallback(fb: Fallback, reason: Reason, detail: str, code: PassCode) -> Decision | None:
    if fb is Fallback.USE_CODE:
        return None
    action = Action.ASSIST if fb is Fallback.ASSIST else Action.DENY
    return Decision(action, reason, detail, code.token, code.kind)


def _status_outcome(status: Status, action: Action) -> Reason:
    if action is Action.ADMIT:
        return Reason.ADMITTED
    suffix = "_assist" if action is Action.ASSIST else ""
    return Reason(f"status_{status.value}{suffix}")


class Decider:
    """Holds the trust keys, the policy and the short memories (confirmed passages for anti-passback, a pending
    assist). It does no I/O of its own: the pass cache is read through the `lookup` and `cache_info` callbacks
    it is given (in the gate, the lane thread's SQLite reader), and who is being let through now through
    `releasing` (token -> monotonic time its release was opened, or None: the gate's ledger of releases,
    gate/deliver/ledger.py), so it runs on the lane thread like they do."""

    def __init__(
        self,
        trust: TrustStore,
        policy: Policy,
        lookup: Callable[[str], CacheEntry | None],
        cache_info: Callable[[], CacheInfo],
        max_payload: int = 512,
        releasing: Callable[[str], float | None] = lambda token: None,
    ) -> None:
        self.trust, self.policy = trust, policy
        self._lookup = lookup
        self._cache_info = cache_info
        self._max_payload = max_payload
        self._releasing = releasing
        self._passed: OrderedDict[str, float] = OrderedDict()  # token -> monotonic time of its confirmed passage
        self._assist: tuple[str, int, float] | None = None  # token, companions, monotonic time

    def decide(
        self, payload: bytes, clock: ClockReading, blocked: Reason | None = None, info: CacheInfo | None = None
    ) -> Decision:
        """`info`: the pass cache's metadata, if the caller has read it for this decision already (the lane
        reads it once per decision: the check-in records its version too)."""
        if len(payload) > self._max_payload:
            return _deny(Reason.TOO_LARGE, f"payload of {len(payload)} bytes exceeds {self._max_payload}")
        try:
            code = parse(payload)
            code.verify(self.trust)
        except CodeError as exc:
            return _deny(Reason(exc.reason), str(exc))
        if blocked is not None:
            return _deny(blocked, f"gate is {blocked.value.replace('_', ' ')}", code)
        decision = self._evaluate(code, clock, info)
        return self._remember(decision, code, clock.mono)

    def _evaluate(self, code: PassCode, clock: ClockReading, info: CacheInfo | None) -> Decision:
        p = self.policy
        kind = code.kind.value
        if not clock.usable:
            fb = getattr(p.on_clock_unsynced, kind)
            out = _fallback(fb, Reason.CLOCK_UNSYNCED, "wall clock is not synchronised", code)
            if out is not None:
                return out
        else:
            skew = p.clock_skew_seconds
            if code.issued_at > clock.wall + skew:
                return _deny(Reason.NOT_YET_VALID, f"valid from {code.issued_at}", code)
            if clock.wall > code.expires_at + skew:
                return _deny(Reason.EXPIRED, f"expired at {code.expires_at}", code)
            if clock.wall - code.issued_at > getattr(p.max_age_seconds, kind) + skew:
                return _deny(Reason.EXPIRED, f"older than the {kind} maximum age", code)

        entry = self._lookup(code.token)
        if entry is not None and entry.revoked:
            return _deny(Reason.REVOKED, "revoked in the pass cache", code)
        status = code.status
        info = info if info is not None else self._cache_info()
        synced_at = info.synced_at
        stale = not clock.usable or synced_at is None or clock.wall - synced_at > p.cache_stale_after_seconds
        doubt = not info.proven  # damaged storage may have lost a revocation: no code alone admits
        why = UNPROVEN if doubt else "pass cache is stale"
        if stale or doubt:
            out = _fallback(getattr(p.on_cache_stale, kind), Reason.CACHE_STALE, why, code)
            if out is not None:
                return out
            if entry is not None:  # a stale entry can still only make things worse
                status = max(status, entry.status, key=list(Status).index)
        elif entry is not None:
            if entry.valid_until is not None and clock.wall > entry.valid_until:
                return _deny(Reason.EXPIRED, f"cached pass ended at {entry.valid_until}", code)
            status = entry.status
        elif code.kind is Kind.CARD:
            action = p.card_without_cache_entry
            return Decision(
                action,
                Reason.NOT_CACHED if action is not Action.ADMIT else Reason.ADMITTED,
                "card's token is not in the pass cache",
                code.token,
                kind,
            )

        companions = entry.companions if entry is not None and entry.companions is not None else code.companions
        action = getattr(p.status_actions, status.value)
        if doubt and action is Action.ADMIT:
            return Decision(Action.ASSIST, Reason.CACHE_STALE, why, code.token, kind, companions)
        reason = _status_outcome(status, action)
        return Decision(action, reason, f"status {status.value}", code.token, kind, companions)

    def _remember(self, d: Decision, code: PassCode, now: float) -> Decision:
        """Apply the memories: staff follow-up of an assist, and anti-passback."""
        window = self.policy.assist_window_seconds
        if code.kind is Kind.STAFF and d.admits and self._assist and now - self._assist[2] <= window:
            token, companions, _ = self._assist
            self._assist = None
            return Decision(
                Action.ADMIT,
                Reason.STAFF_ASSISTED,
                "admitted by staff after assist",
                token,
                "staff_assisted",
                companions,
                operator=code.token,
            )
        if d.action is Action.ASSIST:
            self._assist = (code.token, d.companions, now)
        passback = self.policy.passback_seconds
        if not d.admits or passback <= 0:
            return d
        self._prune(now)
        last = self._passed.get(code.token)
        if last is not None and now - last <= passback:
            return _deny(Reason.REPLAY, f"passed this gate {now - last:.0f}s ago", code)
        opened = self._releasing(code.token)
        # A release whose outcome never came (it always comes; this is a bound) ages out like a passage.
        if opened is not None and now - opened <= passback:
            return _deny(Reason.REPLAY, "being let through at this gate now", code)
        return d

    def _prune(self, now: float) -> None:
        passback = self.policy.passback_seconds
        while self._passed and now - next(iter(self._passed.values())) > passback:
            self._passed.popitem(last=False)

    # -- anti-passback counts a token only once its passage is confirmed ------------------------------
    def confirm(self, token: str, now: float) -> None:
        """The holder went through (`passed`, or `unconfirmed` without a sensor): passback starts now. (One who
        did not go through needs nothing here: once the ledger has their outcome, the code may be shown again.)"""
        self._passed[token] = now
        self._passed.move_to_end(token)

    def restore(self, passed: dict[str, float]) -> None:
        """Confirmed passages from before a restart: token -> monotonic time, oldest first."""
        for token, at in sorted(passed.items(), key=lambda kv: kv[1]):
            self._passed[token] = at
            self._passed.move_to_end(token)
