"""One gate's page for operators and supervisors: its state and alarms, its recent decisions (never a token),
a chart of check-ins per hour over the last day (SVG drawn on the server), and its lane commands."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gate.central.store import Store

from . import forms
from .app import Console
from .auth import Session

HOURS = 24
RECENT = 20


@dataclass(frozen=True)
class Bar:
    x: int
    y: int
    height: int
    count: int
    label: str


def hourly(times: list[float], now: float) -> list[int]:
    """Check-ins in each of the last HOURS whole hours, oldest first (the current hour last)."""
    top = int(now // 3600)
    counts = [0] * HOURS
    for t in times:
        i = HOURS - 1 - (top - int(t // 3600))
        if 0 <= i < HOURS:
            counts[i] += 1
    return counts


def bars(counts: list[int], now: float, hour_label: Any) -> list[Bar]:
    """Bars of a 480 x 120 chart (viewBox units), each with its hour as the city reads it."""
    peak = max(counts) or 1
    top = int(now // 3600)
    out = []
    for i, n in enumerate(counts):
        h = round(100 * n / peak)
        out.append(Bar(i * 20 + 2, 110 - h, h, n, hour_label((top - (HOURS - 1 - i)) * 3600)))
    return out


def recent(store: Store, gate_id: str, now: float) -> tuple[list[dict[str, Any]], list[int]]:
    day = store.select("gate_id = ? AND time >= ?", (gate_id, now - HOURS * 3600), "time DESC")
    last = day[:RECENT] or store.select("gate_id = ?", (gate_id,), f"time DESC LIMIT {RECENT}")
    shown = [{k: r[k] for k in ("time", "type", "decision", "reason", "outcome", "kind", "venue_id")} for r in last]
    return shown, hourly([r["time"] for r in day if r["type"] == "decision"], now)


def routes(c: Console) -> list[Route]:
    @c.needs("fleet")
    async def gate_page(request: Request, me: Session) -> Response:
        gate_id = request.query_params.get("id", "")
        row = next((r for r in await run_in_threadpool(c.fleet.rows) if r["gate_id"] == gate_id), None)
        if row is None:
            msg = "No such gate: not one the collection has seen."
            return c.page(request, "gate.html", me, status=404, error=msg, g=None)
        now = time.time()
        decisions, counts = await c.db(recent, c.store, gate_id, now)
        chart = bars(counts, now, lambda t: c.clock(t)[11:16])
        ctx: dict[str, Any] = {
            "g": row,
            "decisions": decisions,
            "chart": chart,
            "total24": sum(counts),
            "commands": forms.COMMANDS,
        }
        return c.page(request, "gate.html", me, error=None, **ctx)

    return [Route("/gate", gate_page, methods=["GET"])]
