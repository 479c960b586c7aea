"""What the collection exists for: the contact trace, audited; retention; and the fleet view."""

from __future__ import annotations

import csv
import json
import re
import sys
import time
from typing import IO, Any

from gate.central.contacts import ALL, ContactPage
from gate.central.store import Store
from gate.core.errors import GateError

OPERATOR = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def _operator(operator: str) -> str:
    if not OPERATOR.match(operator or ""):
        raise GateError("--operator: give the id of the person querying (letters, digits, _ . @ -; up to 64)")
    return operator


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + "Z"


def trace_rows(
    store: Store,
    operator: str,
    token: str | None,
    venue: str | None,
    t_from: float,
    t_to: float,
    limit: int | None = None,
    after: tuple[float, str] | None = None,
) -> list[dict[str, Any]]:
    """A token's check-ins (decisions and passages) in time order, or a venue's within a window; audited.
    The one trace query: the CLI and the console both run it. A venue also matches the vehicles and runs under
    it (`city-bus` finds `city-bus/bus-1042/R7-0815`). `limit` rows at most, from after (time, event_id)."""
    operator = _operator(operator)
    if not token and not venue:
        raise GateError("trace: give a TOKEN or --venue")
    where = ["time >= ?", "time <= ?"]
    params: list[Any] = [t_from, min(t_to, 1e18)]
    if token:
        where.append("token = ?")
        params.append(token)
    if after is not None:  # a row value: the (venue_id, time, event_id) index starts there
        where.append("(time, event_id) > (?, ?)")
        params += [after[0], after[1]]
    order = "time, event_id" + ("" if limit is None else f" LIMIT {int(limit)}")
    if not venue:
        rows = store.select(" AND ".join(where), params, order)
    else:  # the venue itself, then anything under it: each an ordered index scan (an OR of both would sort)
        rows = store.select(" AND ".join(["venue_id = ?", *where]), [venue, *params], order)
        under = " AND ".join(["venue_id > ?", "venue_id < ?", *where])
        rows += store.select(under, [venue + "/", venue + "0", *params], order)  # "0" sorts right after "/"
        rows.sort(key=lambda r: (r["time"], r["event_id"]))
        rows = rows if limit is None else rows[: int(limit)]
    audited = {"token": token, "venue": venue, "from": t_from, "to": min(t_to, 1e18)}
    if after is not None:
        audited["after"] = after[0]
    store.audit(operator, "trace", audited, len(rows))
    return rows


def trace(
    store: Store, operator: str, token: str | None, venue: str | None, t_from: float, t_to: float, as_json: bool
) -> int:
    if not token and not venue:
        print("trace: give a TOKEN or --venue", file=sys.stderr)
        return 2
    rows = trace_rows(store, operator, token, venue, t_from, t_to)
    for rec in rows:
        if as_json:
            print(json.dumps(rec))
        else:
            what = rec["outcome"] if rec["type"] == "passage" else f"{rec['decision']} ({rec['reason']})"
            who = rec["token"] or "-"
            place = f"{rec['venue_id']:<14} gate {rec['gate_id']:<10}"
            print(f"{_when(rec['time'])}  {place} {who:<20} {rec['type']:<8} {what}")
    return 0 if rows else 1


def contact(r: dict[str, Any], window: float) -> dict[str, Any]:
    """One contact check-in as the CLI, the console and the CSV show it, paired with the token's nearest."""
    apart = abs(r["time"] - r["my_time"])
    return {
        "token": r["token"],
        "venue_id": r["venue_id"],
        "venue_name": r["venue_name"],
        "gate_id": r["gate_id"],
        "time": r["time"],
        "time_iso": _when(r["time"]),
        "their_time": r["time"],
        "my_time": r["my_time"],
        "my_gate_id": r["my_gate"],
        "apart_min": round(apart / 60, 2),
        "overlap_min": round(max(0.0, 2 * window - apart) / 60, 2),
        "admitted": r["decision"] == "admit",
        "decision": r["decision"],
        "reason": r["reason"],
        "group_size": 1 + int(r["companions"] or 0),
        "kind": r["kind"],
        "event_id": r["event_id"],
    }


def contacts_page(
    store: Store,
    token: str,
    t_from: float,
    t_to: float,
    window_min: float,
    limit: int = ALL,
    after: tuple[float, str] | None = None,
) -> ContactPage:
    """Every other token's check-in at one of the token's venues within +/- window of one of its check-ins:
    one row per such check-in, paired with the nearest of the token's. A code admitting companions is one
    group (`group_size` = 1 + companions): the companions have no token of their own. `limit` rows from after
    (time, event_id); the database deduplicates, orders and counts, so a page costs only its own rows here."""
    window = window_min * 60
    page = store.contacts_page(token, t_from, min(t_to, 1e18), window, after, limit)
    return ContactPage([contact(r, window) for r in page.rows], page.codes, page.people, page.found)


def find_contacts(store: Store, token: str, t_from: float, t_to: float, window_min: float) -> list[dict[str, Any]]:
    """All of a token's contacts (see contacts_page), in (time, event_id) order."""
    return contacts_page(store, token, t_from, t_to, window_min).rows


CONTACT_FIELDS = (
    "token",
    "group_size",
    "admitted",
    "venue_id",
    "gate_id",
    "time_iso",
    "apart_min",
    "overlap_min",
    "my_gate_id",
    "decision",
    "reason",
    "kind",
)


def audited_contacts(
    store: Store,
    operator: str,
    token: str,
    t_from: float,
    t_to: float,
    window_min: float,
    limit: int = ALL,
    after: tuple[float, str] | None = None,
) -> ContactPage:
    """contacts_page, written to the audit table with who asked (and the totals): what the CLI and the console
    run; each page of the console is one audited query, as each page of a trace is."""
    operator = _operator(operator)
    found = contacts_page(store, token, t_from, t_to, window_min, limit, after)
    params: dict[str, Any] = {"token": token, "from": t_from, "to": min(t_to, 1e18), "window_min": window_min}
    if after is not None:
        params["after"] = after[0]
    store.audit(operator, "contacts", params, found.found)
    return found


def contact_counts(found: list[dict[str, Any]]) -> tuple[int, int]:
    """(contact codes, people): a code admitting companions counts as its group, once however often it was met."""
    groups: dict[str, int] = {}
    for c in found:
        groups[c["token"]] = max(groups.get(c["token"], 1), c["group_size"])
    return len(groups), sum(groups.values())


FORMULA = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet reads as a formula at a cell's start


def cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: one starting like a formula gets a leading apostrophe."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA) else value


def write_contacts_csv(found: list[dict[str, Any]], out: IO[str]) -> None:
    w = csv.DictWriter(out, fieldnames=CONTACT_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows({k: cell(r.get(k)) for k in CONTACT_FIELDS} for r in found)


def contacts(store: Store, operator: str, token: str, t_from: float, t_to: float, window_min: float, fmt: str) -> int:
    found = audited_contacts(store, operator, token, t_from, t_to, window_min).rows
    if fmt == "json":
        for c in found:
            print(json.dumps(c))
    elif fmt == "csv":
        write_contacts_csv(found, sys.stdout)
    else:
        codes, people = contact_counts(found)
        print(f"{codes} contact codes ({people} people with companions) within ±{window_min:g} min of {token}")
        for c in found:
            group = f"+{c['group_size'] - 1}" if c["group_size"] > 1 else ""
            state = "admitted" if c["admitted"] else c["decision"]
            print(
                f"{c['time_iso']}  {c['venue_id']:<14} gate {c['gate_id']:<10} {c['token'] + group:<24} "
                f"{state:<9} {c['apart_min']:6.1f} min apart"
            )
    return 0 if found else 1


def purge(store: Store, retention_days: float) -> int:
    gone = store.purge(time.time() - retention_days * 86400)
    print(f"purge: {gone} check-ins older than {retention_days:g} days deleted")
    return 0


def fleet_report(
    store: Store, offline_min: float, stale_hours: float, now: float | None = None
) -> list[dict[str, Any]]:
    """One line per gate seen: availability, last seen, mode, outbox depth and trend, cache, policy, clock,
    dead letters; flagged offline (no word for offline_min or its will said so), stale cache, growing outbox."""
    now = time.time() if now is None else now
    return [fleet_line(g, offline_min, stale_hours, now) for g in store.fleet()]


def offline(line: dict[str, Any], offline_min: float, now: float) -> bool:
    return bool(line["availability"] != "online" or now - (line["last_seen"] or 0) > offline_min * 60)


def aged(line: dict[str, Any], offline_min: float, now: float) -> dict[str, Any]:
    """A gate's line as of `now`: what depends on the time alone (seen ago, offline) made again."""
    out = dict(line)
    out["last_seen_ago_s"] = round(now - (line["last_seen"] or now), 1)
    off = offline(line, offline_min, now)
    if off != ("offline" in line["flags"]):
        out["flags"] = ["offline", *line["flags"]] if off else [f for f in line["flags"] if f != "offline"]
    return out


def fleet_line(g: dict[str, Any], offline_min: float, stale_hours: float, now: float) -> dict[str, Any]:
    """One gate's line of the fleet report, from its fleet document."""
    state, tele = g.get("state") or {}, g.get("telemetry") or {}
    history = g.get("depth_history") or []
    trend = None
    if len(history) >= 2 and history[-1][0] > history[0][0]:
        trend = round((history[-1][1] - history[0][1]) / ((history[-1][0] - history[0][0]) / 60), 1)
    age = state.get("cache_age_s")
    flags = []
    if age is None or age > stale_hours * 3600:
        flags.append("stale_cache")
    if (
        trend is not None
        and trend > 0
        and len(history) >= 3
        and all(b[1] >= a[1] for a, b in zip(history[-3:], history[-2:], strict=False))
    ):
        flags.append("outbox_growing")
    venue = state.get("venue") or {}
    line = {
        "gate_id": g["gate_id"],
        "venue_id": venue.get("id"),
        "category": venue.get("category"),
        "vehicle_id": venue.get("vehicle_id"),
        "route": venue.get("route"),
        "run": venue.get("run"),
        "alarms": list(state.get("alarms_active") or []),
        "last_stop": (g.get("last_stop") or {}).get("name") or (g.get("last_stop") or {}).get("id"),
        "availability": (g.get("availability") or {}).get("status", "unknown"),
        "last_seen": g.get("last_seen"),
        "mode": state.get("mode"),
        "outbox_depth": history[-1][1] if history else state.get("outbox_depth"),
        "outbox_trend_per_min": trend,
        "cache_version": state.get("cache_version"),
        "cache_age_s": age,
        "policy_version": state.get("policy_version"),
        "clock_synced": state.get("clock_synced"),
        "dead_letters": state.get("dead_letters"),
        "uptime_s": tele.get("uptime_s"),
        "flags": flags,
    }
    return aged(line, offline_min, now)


def fleet(store: Store, offline_min: float, stale_hours: float, as_json: bool) -> int:
    rows = fleet_report(store, offline_min, stale_hours)
    if as_json:
        for r in rows:
            print(json.dumps(r))
        return 0
    print(
        f"{'gate':<14} {'avail':<8} {'seen':>7} {'mode':<14} {'outbox':>7} {'trend/min':>9} "
        f"{'cache':>6} {'age h':>6} {'policy':>6} {'clock':<5} {'dead':>4}  flags"
    )
    for r in rows:
        age = "-" if r["cache_age_s"] is None else f"{r['cache_age_s'] / 3600:.1f}"
        trend = "-" if r["outbox_trend_per_min"] is None else f"{r['outbox_trend_per_min']:+.1f}"
        print(
            f"{r['gate_id']:<14} {r['availability']:<8} {r['last_seen_ago_s']:>6.0f}s {r['mode']!s:<14} "
            f"{r['outbox_depth']!s:>7} {trend:>9} {r['cache_version']!s:>6} {age:>6} "
            f"{r['policy_version']!s:>6} {'yes' if r['clock_synced'] else 'no':<5} {r['dead_letters'] or 0!s:>4}  "
            f"{' '.join(r['flags']) or 'ok'}"
        )
    return 0
