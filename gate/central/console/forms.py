"""Form input, checked before any query runs: every bad value is a FormError naming the field, never a 500."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any

from gate.central.store import AuditQuery

TOKEN = re.compile(r"^[A-Za-z0-9_-]{6,32}$")  # a pseudonymous token id, as `gate central issue` takes it
# a venue id, or a bus's `venue/vehicle/run` as the collector keys it (a route's or vehicle's riders by prefix)
VENUE = re.compile(r"^[A-Za-z0-9_.-]{1,64}(/[A-Za-z0-9_.-]{1,64}){0,2}$")
DEFAULT_DAYS = 14  # a trace without a period covers the last two weeks ...
MAX_DAYS = 31  # ... and none covers more than a month: every page stays bounded
PAGE = 200  # trace rows per page (keyset: the next page starts after the last row shown)
COMMANDS = ("out-of-service", "in-service", "resync")  # never `open`: that needs a person at the lane
ACTIONS = ("admit", "assist", "deny")
FALLBACKS = ("use_code", "assist", "deny")
KINDS = ("phone", "card", "staff")
STATUSES = ("green", "yellow", "red")


class FormError(ValueError):
    """A message for the person who filled the form in."""


@dataclass(frozen=True)
class TraceQuery:
    mode: str  # contacts | trace
    token: str | None
    venue: str | None
    window_min: float
    t_from: float
    t_to: float
    after: tuple[float, str] | None = None


def _time(field: str, text: str, default: float, tz: tzinfo = UTC) -> float:
    text = text.strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        try:
            t = datetime.fromisoformat(text)
        except ValueError:
            raise FormError(f"{field}: give a time such as 2026-05-01T08:00 (local) or epoch seconds") from None
        value = (t if t.tzinfo else t.replace(tzinfo=tz)).timestamp()
    if not math.isfinite(value) or value < 0:
        raise FormError(f"{field}: give a time after 1970")
    return value


def _number(field: str, text: str, low: float, high: float) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise FormError(f"{field}: give a number") from None
    if not math.isfinite(value) or not low <= value <= high:
        raise FormError(f"{field}: give a number from {low:g} to {high:g}")
    return value


def trace_query(form: dict[str, str], tz: tzinfo = UTC, now: float | None = None) -> TraceQuery:
    mode = form.get("mode", "contacts")
    if mode not in ("contacts", "trace"):
        raise FormError("mode: contacts or trace")
    token = form.get("token", "").strip() or None
    venue = form.get("venue", "").strip() or None
    if token is not None and not TOKEN.match(token):
        raise FormError("token: 6 to 32 of A-Z a-z 0-9 _ - (the pseudonymous id, not a pass code)")
    if venue is not None and not VENUE.match(venue):
        raise FormError("venue: a venue id (A-Z a-z 0-9 _ . -), or a bus's venue/vehicle/run")
    if mode == "contacts" and token is None:
        raise FormError("token: contacts are found for a token")
    if mode == "trace" and token is None and venue is None:
        raise FormError("token or venue: give one")
    window = _number("window", form.get("window", "30") or "30", 0, 1440)
    now = time.time() if now is None else now
    t_to = _time("to", form.get("to", ""), now, tz)
    t_from = _time("from", form.get("from", ""), t_to - DEFAULT_DAYS * 86400, tz)
    if t_to < t_from:
        raise FormError("to: the period ends before it starts")
    if t_to - t_from > MAX_DAYS * 86400:
        raise FormError(f"from: a period of at most {MAX_DAYS} days (narrow it, or page through months)")
    return TraceQuery(mode, token, venue if mode == "trace" else None, window, t_from, t_to, _after(form))


def _after(form: dict[str, str]) -> tuple[float, str] | None:
    """The next page's start: `time,event_id` of the last row shown."""
    text = form.get("after", "").strip()
    if not text:
        return None
    t, _, event_id = text.partition(",")
    try:
        value = float(t)
    except ValueError:
        raise FormError("after: not a page of this trace") from None
    if not math.isfinite(value) or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,128}", event_id):
        raise FormError("after: not a page of this trace")
    return value, event_id


def command(form: dict[str, str], gate_ids: set[str]) -> tuple[str, str]:
    gate_id, name = form.get("gate_id", ""), form.get("name", "")
    if gate_id not in gate_ids:
        raise FormError("gate: not a gate the collection has seen")
    if name not in COMMANDS:
        raise FormError(f"command: one of {', '.join(COMMANDS)}")
    return gate_id, name


def policy_changes(form: dict[str, str], current: dict[str, Any]) -> dict[str, Any]:
    """The current policy document with the form's changes: a new version, status actions and staleness."""
    doc = dict(current)
    version = int(_number("version", form.get("version", ""), 1, 2**53))
    if version <= int(current.get("version", 0)):
        raise FormError(f"version: higher than the one in force ({current.get('version', 0)})")
    doc["version"] = version
    doc["status_actions"] = _choices(form, "status_", STATUSES, ACTIONS, "{}")
    hours = _number("stale after", form.get("stale_hours", ""), 1 / 60, 24 * 365)
    doc["cache_stale_after_seconds"] = round(hours * 3600)
    doc["on_cache_stale"] = _choices(form, "stale_", KINDS, FALLBACKS, "when stale, {}")
    return doc


def _choices(
    form: Mapping[str, str], prefix: str, names: Iterable[str], allowed: Sequence[str], label: str
) -> dict[str, str]:
    """One choice per name (form field `prefix + name`), each one of `allowed`."""
    out = {}
    for name in names:
        value = form.get(prefix + name, "")
        if value not in allowed:
            raise FormError(f"{label.format(name)}: one of {', '.join(allowed)}")
        out[name] = value
    return out


AUDIT_PAGE = 100
AUDIT_ACTIONS = ("trace", "contacts", "command", "publish-policy")


def audit_query(form: dict[str, str], tz: tzinfo = UTC) -> AuditQuery:
    """The audit page's filters: operator, action, period; `before` is the keyset of the next (older) page."""
    operator = form.get("operator", "").strip() or None
    if operator is not None and not re.fullmatch(r"[A-Za-z0-9_.@-]{1,64}", operator):
        raise FormError("operator: letters, digits, _ . @ - (up to 64)")
    action = form.get("action", "").strip() or None
    if action is not None and action not in AUDIT_ACTIONS:
        raise FormError(f"action: one of {', '.join(AUDIT_ACTIONS)}")
    before = form.get("before", "").strip()
    if before and not before.isdigit():
        raise FormError("before: not a page of this log")
    t_from = _time("from", form.get("from", ""), 0.0, tz)
    t_to = _time("to", form.get("to", ""), float("inf"), tz)
    if t_to < t_from:
        raise FormError("to: the period ends before it starts")
    before_id = min(int(before), 2**62) if before else 2**62
    return AuditQuery(before_id, AUDIT_PAGE + 1, operator, action, t_from, t_to)
