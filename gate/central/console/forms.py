"""Form input, checked before any query runs: every bad value is a FormError naming the field, never a 500."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gate.config.venue import ID_PATTERN

TOKEN = re.compile(r"^[A-Za-z0-9_-]{6,32}$")  # a pseudonymous token id, as `gate central issue` takes it
VENUE = re.compile(ID_PATTERN)
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


def _time(field: str, text: str, default: float) -> float:
    text = text.strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        try:
            t = datetime.fromisoformat(text)
        except ValueError:
            raise FormError(f"{field}: give a time such as 2026-05-01T08:00 (UTC) or epoch seconds") from None
        value = (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()
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


def trace_query(form: dict[str, str]) -> TraceQuery:
    mode = form.get("mode", "contacts")
    if mode not in ("contacts", "trace"):
        raise FormError("mode: contacts or trace")
    token = form.get("token", "").strip() or None
    venue = form.get("venue", "").strip() or None
    if token is not None and not TOKEN.match(token):
        raise FormError("token: 6 to 32 of A-Z a-z 0-9 _ - (the pseudonymous id, not a pass code)")
    if venue is not None and not VENUE.match(venue):
        raise FormError("venue: a venue id (A-Z a-z 0-9 _ . -)")
    if mode == "contacts" and token is None:
        raise FormError("token: contacts are found for a token")
    if mode == "trace" and token is None and venue is None:
        raise FormError("token or venue: give one")
    window = _number("window", form.get("window", "30") or "30", 0, 1440)
    t_from = _time("from", form.get("from", ""), 0.0)
    t_to = _time("to", form.get("to", ""), float("inf"))
    if t_to < t_from:
        raise FormError("to: the period ends before it starts")
    return TraceQuery(mode, token, venue if mode == "trace" else None, window, t_from, t_to)


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
