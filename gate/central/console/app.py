"""The console's application: sign-in, sessions, CSRF, security headers, and the role each page needs."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from gate.central.store import Store

from .auth import IDLE_SECONDS, MAX_SECONDS, PERMITS, RateLimit, Session, verify_password
from .clock import UTC_CLOCK, Clock
from .commands import Commands, Log
from .fleetview import FleetLines, FleetView
from .limits import BodyLimit
from .measures import Link

HERE = Path(__file__).parent
HTMX = HERE / "static" / "vendor" / "node_modules" / "htmx.org" / "dist" / "htmx.min.js"
COOKIE = "gate_console"
PRE = "gate_console_pre"  # the sign-in form's own CSRF token, before there is a session
T = TypeVar("T")
Handler = Callable[[Request, Session], Awaitable[Response]]


class Console:
    """What every page shares: the store (each connection one request at a time), the link to the gates."""

    def __init__(
        self,
        store: Store,
        link: Link | None,
        *,
        refresh_s: float = 5.0,
        secure_cookies: bool = False,
        offline_min: float = 5.0,
        stale_hours: float = 24.0,
        clock: Clock = UTC_CLOCK,
        tracing_store: Store | None = None,
        fleet_store: Store | None = None,
    ) -> None:
        self.store = store
        self.link = link
        self.refresh_s = refresh_s
        self.secure = secure_cookies
        self.offline_min = offline_min
        self.stale_hours = stale_hours
        self.clock = clock
        self.limit = RateLimit()
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.htmx = HTMX.exists()
        self._lock = threading.Lock()
        # Tracers' queries (the heaviest) on their own connection, so that sign-in, sessions and the fleet poll
        # never queue behind them; with one store, one lock serves both.
        self.tracing_store = tracing_store or store
        self._tracing_lock = self._lock if tracing_store is None else threading.Lock()
        lines = FleetLines(offline_min, stale_hours)
        # The fleet report (5,000 digests) on its own connection too: sign-ins and session checks never wait for it.
        self.fleet_store = fleet_store or store
        fleet_lock = self._lock if fleet_store is None else threading.Lock()

        def report() -> list[dict[str, Any]]:
            with fleet_lock:
                return lines.report(self.fleet_store)

        self.fleet = FleetView(report, ttl=max(0.2, min(2.0, refresh_s / 2)))
        log = Log(
            lambda sent: self.locked(self.store.command_sent, sent),
            lambda sent: self.locked(self.store.command_done, sent),
        )
        self.commands = None if link is None else Commands(self._send, self._audit_command, log)

    def locked(self, fn: Callable[..., T], *args: Any) -> T:
        """The store's one connection, one caller at a time (never held during broker I/O)."""
        with self._lock:
            return fn(*args)

    async def db(self, fn: Callable[..., T], *args: Any) -> T:
        return await run_in_threadpool(self.locked, fn, *args)

    def traced(self, fn: Callable[..., T], *args: Any) -> T:
        """A tracer's query (the store is the first argument given to `fn`) on the tracing connection."""
        with self._tracing_lock:
            return fn(self.tracing_store, *args)

    async def trace_db(self, fn: Callable[..., T], *args: Any) -> T:
        return await run_in_threadpool(self.traced, fn, *args)

    async def io(self, fn: Callable[..., T], *args: Any) -> T:
        """Broker I/O on a worker thread, outside the store's lock: a slow broker delays only this request."""
        return await run_in_threadpool(fn, *args)

    def _send(self, gate_id: str, name: str) -> dict[str, Any] | None:
        assert self.link is not None
        return self.link.command(gate_id, name)

    def _audit_command(self, by: str, gate_id: str, name: str, answered: bool) -> None:
        self.locked(self.store.audit, by, "command", {"gate": gate_id, "name": name}, 1 if answered else 0)

    async def session(self, request: Request) -> Session | None:
        sid = request.cookies.get(COOKIE)
        found = await self.db(self.store.session, sid, IDLE_SECONDS, MAX_SECONDS) if sid else None
        return None if found is None else Session(found["name"], found["role"], found["csrf"])

    def page(self, request: Request, name: str, me: Session | None, *, status: int = 200, **ctx: Any) -> Response:
        ctx |= {"me": me, "permits": PERMITS, "htmx": self.htmx, "refresh_s": self.refresh_s, "when": self.clock}
        return self.templates.TemplateResponse(request, name, ctx, status_code=status)

    async def big_page(self, request: Request, name: str, me: Session | None, **ctx: Any) -> Response:
        """A page of thousands of rows (a day-wide contact trace), rendered on a worker: the event loop keeps
        answering the fleet poll and sign-ins meanwhile."""
        return await run_in_threadpool(lambda: self.page(request, name, me, **ctx))

    def needs(self, permit: str) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
        """A page for the roles PERMITS allows; sign-in first; POSTs carry the session's CSRF token."""

        def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
            async def endpoint(request: Request) -> Response:
                session = await self.session(request)
                if session is None:  # htmx's poll after the session ended: the whole page goes to sign-in
                    if request.headers.get("HX-Request"):
                        return Response(status_code=204, headers={"HX-Redirect": "/login"})
                    return RedirectResponse("/login", status_code=303)
                if not session.may(permit):
                    return self.page(request, "denied.html", session, status=403, permit=permit)
                if request.method == "POST":
                    form = await request.form()
                    if not secrets.compare_digest(str(form.get("csrf", "")), session.csrf):
                        return self.page(request, "denied.html", session, status=403, permit="csrf")
                return await handler(request, session)

            return endpoint

        return wrap

    def cookie(self, response: Response, name: str, value: str) -> None:
        response.set_cookie(name, value, httponly=True, samesite="strict", secure=self.secure, path="/")

    async def login_form(self, request: Request) -> Response:
        token = request.cookies.get(PRE) or secrets.token_urlsafe(24)
        response = self.page(request, "login.html", None, pre=token, error=None)
        self.cookie(response, PRE, token)
        return response

    async def login(self, request: Request) -> Response:
        form = await request.form()
        name, password = str(form.get("name", ""))[:64], str(form.get("password", ""))[:256]
        pre = request.cookies.get(PRE, "")
        if not pre or not secrets.compare_digest(str(form.get("pre", "")), pre):
            return self.page(request, "login.html", None, status=403, pre=pre, error="Reload the page and try again.")
        # the client's address as uvicorn gives it: a proxy's X-Forwarded-For only from --trusted-proxy
        keys = (f"ip:{request.client.host if request.client else '-'}", f"name:{name}")
        await asyncio.sleep(self.limit.delay(*keys))  # progressive, never a lock-out
        user = await self.db(self.store.user, name)
        ok = await run_in_threadpool(verify_password, user["hash"] if user else None, password)
        if not ok or user is None or user["disabled"]:
            self.limit.failed(*keys)
            return self.page(request, "login.html", None, status=401, pre=pre, error="Wrong name or password.")
        sid, session = secrets.token_urlsafe(32), Session(user["name"], user["role"], secrets.token_urlsafe(24))
        await self.db(self.store.start_session, sid, session.name, session.csrf)
        response = RedirectResponse(self.home_of(session), status_code=303)
        self.cookie(response, COOKIE, sid)
        return response

    async def logout(self, request: Request) -> Response:
        session = await self.session(request)
        form = await request.form()
        if session is not None and secrets.compare_digest(str(form.get("csrf", "")), session.csrf):
            await self.db(self.store.end_session, request.cookies.get(COOKIE, ""))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    async def home(self, request: Request) -> Response:
        session = await self.session(request)
        return RedirectResponse("/login" if session is None else self.home_of(session), status_code=303)

    @staticmethod
    def home_of(session: Session) -> str:
        return "/" + next(p for p in ("trace", "fleet", "measures") if session.may(p))


class Headers(BaseHTTPMiddleware):
    """No framing, no referrer, scripts only from the console itself, nothing cached (pages hold token ids)."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        h = response.headers
        h["Content-Security-Policy"] = "default-src 'self'; frame-ancestors 'none'; form-action 'self'"
        h["X-Frame-Options"] = "DENY"
        h["X-Content-Type-Options"] = "nosniff"
        h["Referrer-Policy"] = "no-referrer"
        if not request.url.path.startswith("/static/"):
            h["Cache-Control"] = "no-store"
        return response


async def favicon(request: Request) -> Response:
    return RedirectResponse("/static/favicon.svg", status_code=301)


def build(console: Console) -> Starlette:
    from . import gatepage, lane, pages

    routes = [
        Route("/", console.home),
        Route("/login", console.login_form, methods=["GET"]),
        Route("/login", console.login, methods=["POST"]),
        Route("/logout", console.logout, methods=["POST"]),
        *pages.routes(console),
        *lane.routes(console),
        *gatepage.routes(console),
        Route("/favicon.ico", favicon),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(BodyLimit), Middleware(Headers)])
