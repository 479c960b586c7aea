"""The pages: contact tracing and its CSV (tracer), fleet and lane commands (operator), measures and the
audit log (supervisor). Every query is one the CLI runs too (gate.central.tracing, gate.central.publish)."""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import Route

from gate.central import tracing
from gate.central.contacts import ContactPage
from gate.central.publish import BackwardsError
from gate.core.errors import GateError

from . import forms
from .app import Console
from .auth import Session
from .clock import Clock
from .fleetview import SORTS, FleetQuery
from .measures import checked

CSV_PAGE = 1000  # contacts per query of the CSV export: every row, a bounded page at a time


def csv_chunks(pages: Iterable[list[dict[str, Any]]]) -> Iterator[str]:
    """The contacts CSV (the CLI's columns, UTC times, cells neutralised), a chunk per page as it is read."""
    first = True
    for rows in pages:
        out = io.StringIO()
        tracing.write_contacts_csv(rows, out)
        text = out.getvalue()
        yield text if first else text.split("\n", 1)[1]  # the header once
        first = False


def contact_pages(
    first: ContactPage, more: Callable[[tuple[float, str]], ContactPage]
) -> Iterator[list[dict[str, Any]]]:
    """The rows of `first` and of each next page (`more` after the last row shown); pages of CSV_PAGE + 1 rows
    tell whether another follows."""
    page = first
    yield page.rows[:CSV_PAGE]
    while len(page.rows) > CSV_PAGE:
        last = page.rows[CSV_PAGE - 1]
        page = more((last["time"], last["event_id"]))
        yield page.rows[:CSV_PAGE]


def dom_id(text: Any) -> str:
    """A stored id as an HTML id htmx can select (it builds `[id='…']` selectors): anything but A-Z a-z 0-9 _ -
    becomes `_hex_`, so one odd gate id never breaks the live table for the whole fleet."""
    return re.sub(r"[^A-Za-z0-9_-]", lambda m: f"_{ord(m[0]):x}_", str(text))


def masked(params: dict[str, Any], show_tokens: bool, when: Clock) -> dict[str, Any]:
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

    async def run_trace(me: Session, q: forms.TraceQuery, limit: int) -> ContactPage:
        """One audited page: a token's contacts (with their totals), or a token's or venue's check-ins."""
        if q.mode == "contacts":
            assert q.token is not None
            args = (me.name, q.token, q.t_from, q.t_to, q.window_min, limit, q.after)
            return await c.trace_db(tracing.audited_contacts, *args)
        args2 = (me.name, q.token, q.venue, q.t_from, q.t_to, limit, q.after)
        rows = await c.trace_db(tracing.trace_rows, *args2)
        return ContactPage(rows, 0, 0, len(rows))

    @c.needs("trace")
    async def trace_run(request: Request, me: Session) -> Response:
        form = await form_of(request)
        try:
            q = forms.trace_query(form, c.clock.tz)
            found = await run_trace(me, q, forms.PAGE + 1)
        except (forms.FormError, GateError) as exc:
            return c.page(request, "trace.html", me, status=400, q=None, rows=None, error=str(exc), form=form)
        rows, more = found.rows[: forms.PAGE], len(found.rows) > forms.PAGE
        after = f"{rows[-1]['time']!r},{rows[-1]['event_id']}" if more else None
        ctx: dict[str, Any] = {"codes": found.codes, "people": found.people, "found": found.found}
        ctx |= {"after": after, "period": (q.t_from, q.t_to), "paged": q.after is not None}
        return await c.big_page(request, "trace.html", me, q=q, rows=rows, error=None, form=form, **ctx)

    @c.needs("trace")
    async def trace_csv(request: Request, me: Session) -> Response:
        form = {**(await form_of(request)), "mode": "contacts", "after": ""}
        try:
            q = forms.trace_query(form, c.clock.tz)
            first = await run_trace(me, q, CSV_PAGE + 1)  # audited once, with the total
        except (forms.FormError, GateError) as exc:
            return c.page(request, "trace.html", me, status=400, q=None, rows=None, error=str(exc), form=form)
        assert q.token is not None
        token = q.token
        t_from = q.t_from
        t_to = q.t_to
        window = q.window_min

        def more(after: tuple[float, str]) -> ContactPage:
            return c.traced(tracing.contacts_page, token, t_from, t_to, window, CSV_PAGE + 1, after)

        name = f"contacts-{q.token}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.csv"
        headers = {"Content-Disposition": f'attachment; filename="{name}"'}
        chunks = csv_chunks(contact_pages(first, more))
        return StreamingResponse(chunks, media_type="text/csv; charset=utf-8", headers=headers)

    @c.needs("fleet")
    async def fleet_page(request: Request, me: Session) -> Response:
        q = FleetQuery.of(dict(request.query_params))
        page = await run_in_threadpool(c.fleet.page, q)
        here = {k: v for k, v in (("show", q.show), ("q", q.search), ("sort", q.sort), ("after", q.after)) if v}
        ctx: dict[str, Any] = {
            "page": page,
            "rows": page.rows,
            "counts": page.counts,
            "chosen": q.show,
            "dom_id": dom_id,
        }
        ctx |= {"q": q, "here": urlencode(here), "total": page.matching, "sorts": list(SORTS)}
        ctx["next_url"] = "/fleet?" + urlencode({**here, "after": page.next_after}) if page.next_after else None
        name = "fleet_rows.html" if request.headers.get("HX-Request") else "fleet.html"
        return c.page(request, name, me, commands=forms.COMMANDS, error=None, **ctx)

    async def measures_ctx() -> dict[str, Any]:
        if c.link is None:
            return {"policy": None, "signed_at": None, "error": None}
        try:
            policy, ts = await c.io(c.link.policy_in_force)
        except (GateError, OSError) as exc:
            return {"policy": None, "signed_at": None, "error": f"The broker could not be reached: {exc}"}
        return {"policy": policy, "signed_at": c.clock(ts) if ts else None, "error": None}

    @c.needs("measures")
    async def measures_page(request: Request, me: Session) -> Response:
        ctx = await measures_ctx()
        return c.page(request, "measures.html", me, done=request.query_params.get("published"), **ctx)

    @c.needs("measures")
    async def measures_confirm(request: Request, me: Session) -> Response:
        form, ctx = await form_of(request), await measures_ctx()
        if ctx["error"]:
            return c.page(request, "measures.html", me, status=503, done=None, **ctx)
        try:
            if c.link is None or ctx["policy"] is None:
                raise forms.FormError("publishing: the console was started without --broker/--config and --key")
            doc = checked(forms.policy_changes(form, ctx["policy"]))
        except forms.FormError as exc:
            return c.page(request, "measures.html", me, status=400, done=None, **{**ctx, "error": str(exc)})
        changed = {k: (ctx["policy"].get(k), v) for k, v in doc.items() if ctx["policy"].get(k) != v}
        shown = ctx["policy"]["version"]
        return c.page(request, "confirm.html", me, doc=json.dumps(doc), changed=changed, shown=shown)

    @c.needs("measures")
    async def measures_publish(request: Request, me: Session) -> Response:
        form = await form_of(request)
        try:
            if c.link is None:
                raise forms.FormError("publishing: the console was started without --broker/--config and --key")
            doc = checked(json.loads(form.get("doc", "")))
            shown = int(form.get("shown", ""))
        except (ValueError, forms.FormError) as exc:
            msg = str(exc) if isinstance(exc, forms.FormError) else "the confirmed policy was not readable"
            return c.page(request, "measures.html", me, status=400, done=None, **{**await measures_ctx(), "error": msg})
        link = c.link
        try:
            version = await c.io(link.publish, doc, shown)
        except BackwardsError as exc:
            ctx = {**await measures_ctx(), "error": f"Not published: {exc}"}
            return c.page(request, "measures.html", me, status=409, done=None, **ctx)
        except (GateError, OSError) as exc:
            ctx = {"policy": None, "signed_at": None, "error": f"Not published: the broker could not be reached: {exc}"}
            return c.page(request, "measures.html", me, status=503, done=None, **ctx)
        await c.db(c.store.audit, me.name, "publish-policy", {"version": version}, 0)
        return RedirectResponse(f"/measures?published={version}", status_code=303)

    @c.needs("audit")
    async def audit_page(request: Request, me: Session) -> Response:
        params = dict(request.query_params)
        try:
            q = forms.audit_query(params, c.clock.tz)
        except forms.FormError as exc:
            return c.page(request, "audit.html", me, status=400, rows=[], error=str(exc), form=params, older=None)
        rows = await c.db(c.store.audit_page, q)
        more = len(rows) > forms.AUDIT_PAGE
        rows = rows[: forms.AUDIT_PAGE]
        shown = [{**r, "params": masked(r["params"], me.may("trace"), c.clock), "at": c.clock(r["at"])} for r in rows]
        older = None
        if more:
            older = "/audit?" + urlencode(
                {**{k: v for k, v in params.items() if k != "before"}, "before": rows[-1]["id"]}
            )
        return c.page(request, "audit.html", me, rows=shown, error=None, form=params, older=older)

    return [
        Route("/trace", trace_page, methods=["GET"]),
        Route("/trace", trace_run, methods=["POST"]),
        Route("/trace.csv", trace_csv, methods=["POST"]),
        Route("/fleet", fleet_page, methods=["GET"]),
        Route("/measures", measures_page, methods=["GET"]),
        Route("/measures/confirm", measures_confirm, methods=["POST"]),
        Route("/measures/publish", measures_publish, methods=["POST"]),
        Route("/audit", audit_page, methods=["GET"]),
    ]
