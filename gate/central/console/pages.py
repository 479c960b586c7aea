"""The pages: contact tracing and its CSV (tracer), fleet and lane commands (operator), measures and the
audit log (supervisor). Every query is one the CLI runs too (gate.central.tracing, gate.central.publish)."""

from __future__ import annotations

import io
import json
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from gate.central import tracing
from gate.core.errors import GateError

from . import forms
from .app import Console
from .auth import Session
from .measures import checked

FLAGS = {"offline": "offline", "stale": "stale_cache", "backing-up": "outbox_growing"}


def when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + "Z"


def masked(params: dict[str, Any], show_tokens: bool) -> dict[str, Any]:
    """Audit parameters as a supervisor may see them: a token's first three characters only."""
    out = dict(params)
    for k in ("from", "to"):  # the period as times; an open end as "-"
        v = out.get(k)
        if isinstance(v, int | float):
            out[k] = when(v) if 0 < v < 1e18 else "-"
    if not show_tokens and out.get("token"):
        out["token"] = str(out["token"])[:3] + "…"
    return out


def routes(c: Console) -> list[Route]:
    async def form_of(request: Request) -> dict[str, str]:
        return {k: v for k, v in (await request.form()).items() if isinstance(v, str)}

    @c.needs("trace")
    async def trace_page(request: Request, me: Session) -> Response:
        return c.page(request, "trace.html", me, q=None, rows=None, error=None, form={})

    async def run_trace(me: Session, form: dict[str, str]) -> tuple[forms.TraceQuery, list[dict[str, Any]]]:
        q = forms.trace_query(form)
        if q.mode == "contacts":
            assert q.token is not None
            fn, args = tracing.audited_contacts, (c.store, me.name, q.token, q.t_from, q.t_to, q.window_min)
            return q, await c.db(fn, *args)
        rows = await c.db(tracing.trace_rows, c.store, me.name, q.token, q.venue, q.t_from, q.t_to)
        return q, rows

    @c.needs("trace")
    async def trace_run(request: Request, me: Session) -> Response:
        form = await form_of(request)
        try:
            q, rows = await run_trace(me, form)
        except (forms.FormError, GateError) as exc:
            return c.page(request, "trace.html", me, status=400, q=None, rows=None, error=str(exc), form=form)
        codes, people = tracing.contact_counts(rows) if q.mode == "contacts" else (0, 0)
        ctx: dict[str, Any] = {"codes": codes, "people": people, "when": when}
        return c.page(request, "trace.html", me, q=q, rows=rows, error=None, form=form, **ctx)

    @c.needs("trace")
    async def trace_csv(request: Request, me: Session) -> Response:
        form = {**(await form_of(request)), "mode": "contacts"}
        try:
            q, rows = await run_trace(me, form)
        except (forms.FormError, GateError) as exc:
            return c.page(request, "trace.html", me, status=400, q=None, rows=None, error=str(exc), form=form)
        out = io.StringIO()
        tracing.write_contacts_csv(rows, out)
        name = f"contacts-{q.token}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.csv"
        headers = {"Content-Disposition": f'attachment; filename="{name}"'}
        return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers=headers)

    async def fleet_rows(request: Request) -> tuple[list[dict[str, Any]], dict[str, int], str]:
        report = await c.db(tracing.fleet_report, c.store, c.offline_min, c.stale_hours)
        counts = {name: sum(flag in r["flags"] for r in report) for name, flag in FLAGS.items()}
        chosen = request.query_params.get("show", "")
        rows = [r for r in report if chosen not in FLAGS or FLAGS[chosen] in r["flags"]]
        return rows, counts, chosen if chosen in FLAGS else ""

    @c.needs("fleet")
    async def fleet_page(request: Request, me: Session) -> Response:
        rows, counts, chosen = await fleet_rows(request)
        ctx: dict[str, Any] = {"rows": rows, "counts": counts, "chosen": chosen, "total": len(rows), "when": when}
        name = "fleet_rows.html" if request.headers.get("HX-Request") else "fleet.html"
        return c.page(request, name, me, commands=forms.COMMANDS, reply=None, error=None, **ctx)

    @c.needs("command")
    async def fleet_command(request: Request, me: Session) -> Response:
        form = await form_of(request)
        rows, counts, chosen = await fleet_rows(request)
        ctx: dict[str, Any] = {"rows": rows, "counts": counts, "chosen": chosen, "total": len(rows), "when": when}
        try:
            if c.link is None:
                raise forms.FormError("commands: the console was started without --broker/--config and --key")
            gate_id, name = forms.command(form, {r["gate_id"] for r in rows})
        except forms.FormError as exc:
            ctx |= {"reply": None, "error": str(exc)}
            return c.page(request, "fleet.html", me, status=400, commands=forms.COMMANDS, **ctx)
        link = c.link
        reply = await c.db(link.command, gate_id, name)
        await c.db(c.store.audit, me.name, "command", {"gate": gate_id, "name": name}, 1 if reply else 0)
        shown = {"gate": gate_id, "command": name, "reply": json.dumps(reply) if reply else "no reply within 10 s"}
        return c.page(request, "fleet.html", me, commands=forms.COMMANDS, reply=shown, error=None, **ctx)

    async def measures_ctx() -> dict[str, Any]:
        if c.link is None:
            return {"policy": None, "signed_at": None}
        policy, ts = await c.db(c.link.policy_in_force)
        return {"policy": policy, "signed_at": when(ts) if ts else None}

    @c.needs("measures")
    async def measures_page(request: Request, me: Session) -> Response:
        ctx = await measures_ctx()
        return c.page(request, "measures.html", me, error=None, done=request.query_params.get("published"), **ctx)

    @c.needs("measures")
    async def measures_confirm(request: Request, me: Session) -> Response:
        form, ctx = await form_of(request), await measures_ctx()
        try:
            if c.link is None or ctx["policy"] is None:
                raise forms.FormError("publishing: the console was started without --broker/--config and --key")
            doc = checked(forms.policy_changes(form, ctx["policy"]))
        except forms.FormError as exc:
            return c.page(request, "measures.html", me, status=400, error=str(exc), done=None, **ctx)
        changed = {k: (ctx["policy"].get(k), v) for k, v in doc.items() if ctx["policy"].get(k) != v}
        return c.page(request, "confirm.html", me, doc=json.dumps(doc), changed=changed)

    @c.needs("measures")
    async def measures_publish(request: Request, me: Session) -> Response:
        form, ctx = await form_of(request), await measures_ctx()
        try:
            if c.link is None:
                raise forms.FormError("publishing: the console was started without --broker/--config and --key")
            doc = checked(json.loads(form.get("doc", "")))
        except (ValueError, forms.FormError) as exc:
            msg = str(exc) if isinstance(exc, forms.FormError) else "the confirmed policy was not readable"
            return c.page(request, "measures.html", me, status=400, error=msg, done=None, **ctx)
        link = c.link
        version = await c.db(link.publish, doc)
        await c.db(c.store.audit, me.name, "publish-policy", {"version": version}, 0)
        return RedirectResponse(f"/measures?published={version}", status_code=303)

    @c.needs("audit")
    async def audit_page(request: Request, me: Session) -> Response:
        rows = (await c.db(c.store.audits))[-500:][::-1]
        shown = [{**r, "params": masked(r["params"], me.may("trace")), "at": when(r["at"])} for r in rows]
        return c.page(request, "audit.html", me, rows=shown)

    return [
        Route("/trace", trace_page, methods=["GET"]),
        Route("/trace", trace_run, methods=["POST"]),
        Route("/trace.csv", trace_csv, methods=["POST"]),
        Route("/fleet", fleet_page, methods=["GET"]),
        Route("/fleet/command", fleet_command, methods=["POST"]),
        Route("/measures", measures_page, methods=["GET"]),
        Route("/measures/confirm", measures_confirm, methods=["POST"]),
        Route("/measures/publish", measures_publish, methods=["POST"]),
        Route("/audit", audit_page, methods=["GET"]),
    ]
