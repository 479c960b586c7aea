"""Lane commands from a gate's row: a confirmation page, then post/redirect/get to the command's own page, which
says "sent, waiting for the gate" and shows the reply when it comes. A reload only looks; it never re-sends."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from . import forms
from .app import Console
from .auth import Session
from .commands import as_of

OFF = "commands: the console was started without --broker/--config and --key"


def reply_items(reply: dict[str, Any] | None, prefix: str = "") -> list[tuple[str, str]]:
    """The gate's reply as label/value pairs for a table (nested objects as "result mode" rows, never raw JSON)."""
    out: list[tuple[str, str]] = []
    for k, v in (reply or {}).items():
        if k in ("correlation_id", "reply_to"):
            continue
        if isinstance(v, dict) and v and not prefix:
            out += reply_items(v, f"{k} ")
        else:
            out.append((prefix + str(k), _text(v)))
    return out


def _text(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, list):
        return ", ".join(_text(x) for x in v) or "-"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_text(x)}" for k, x in v.items()) or "-"
    return "-" if v is None else str(v)


def routes(c: Console) -> list[Route]:
    async def known(gate_id: str) -> bool:
        return bool(gate_id) and await c.db(c.store.has_gate, gate_id)

    @c.needs("command")
    async def confirm(request: Request, me: Session) -> Response:
        gate_id, name = request.query_params.get("gate", ""), request.query_params.get("name", "")
        try:
            if c.commands is None:
                raise forms.FormError(OFF)
            forms.command({"gate_id": gate_id, "name": name}, {gate_id} if await known(gate_id) else set())
        except forms.FormError as exc:
            return c.page(request, "command.html", me, status=400, error=str(exc), sent=None, confirm=None)
        return c.page(request, "command.html", me, error=None, sent=None, confirm={"gate": gate_id, "name": name})

    @c.needs("command")
    async def send(request: Request, me: Session) -> Response:
        form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        gate_id = form.get("gate_id", "")
        try:
            if c.commands is None:
                raise forms.FormError(OFF)
            gate_id, name = forms.command(form, {gate_id} if await known(gate_id) else set())
        except forms.FormError as exc:
            return c.page(request, "command.html", me, status=400, error=str(exc), sent=None, confirm=None)
        cid = await c.io(c.commands.send, gate_id, name, me.name)  # its status is in the database first
        return RedirectResponse(f"/fleet/command/{cid}", status_code=303)

    @c.needs("command")
    async def status(request: Request, me: Session) -> Response:
        # from the database: any console process shows it, whichever sent it (or one without a broker)
        sent = as_of(await c.db(c.store.command_status, request.path_params["cid"]), time.time())
        if sent is None or sent.by != me.name:
            msg = "This command is not known (it was someone else's, or sent more than 30 days ago)."
            return c.page(request, "command.html", me, status=404, error=msg, sent=None, confirm=None)
        name = "command_status.html" if request.headers.get("HX-Request") else "command.html"
        return c.page(request, name, me, error=None, sent=sent, confirm=None, items=reply_items(sent.reply))

    return [
        Route("/fleet/command", confirm, methods=["GET"]),
        Route("/fleet/command", send, methods=["POST"]),
        Route("/fleet/command/{cid}", status, methods=["GET"]),
    ]
