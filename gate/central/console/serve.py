"""`gate central console` and `gate central console-user add`: start-up, and accounts from the command line."""

from __future__ import annotations

import argparse
import getpass
import logging
import sys
from pathlib import Path

from gate.central.db import open_store
from gate.core.errors import GateError

from . import ROLES

log = logging.getLogger("gate.central.console")


def add_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser], db_help: str) -> None:
    cu = sub.add_parser(
        "console-user",
        help="console operators: add, list, remove, disable, enable, set-role, set-password (each change ends the "
        "operator's sessions; passwords from stdin or a prompt)",
    )
    cu.add_argument("action", choices=list(ACTIONS))
    cu.add_argument("name", nargs="?", help="the operator id written to the audit table (letters, digits, _ . @ -)")
    cu.add_argument("--role", choices=ROLES, help="for add and set-role")
    cu.add_argument("--db", required=True, help=db_help)
    cu.add_argument("--create", action="store_true", help="add: create the SQLite file if it does not exist")


def add_console_options(co: argparse.ArgumentParser, db_help: str) -> None:
    co.add_argument("--db", required=True, help=db_help + " (must exist: `gate central collect` makes it)")
    co.add_argument("--zone", default="UTC", help="the city's time zone for the pages, e.g. Europe/Berlin (UTC)")
    co.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="a reverse proxy whose X-Forwarded-For is believed (repeat); from anyone else it is ignored",
    )
    co.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT", help="(127.0.0.1:8080: loopback)")
    co.add_argument("--key", help="central's private key: publishing measures and lane commands need it")
    co.add_argument("--secure-cookies", action="store_true", help="behind a TLS reverse proxy: cookies only over https")
    co.add_argument("--refresh", type=float, default=5.0, metavar="SECONDS", help="fleet page update interval (5)")
    co.add_argument("--offline-minutes", type=float, default=5.0)
    co.add_argument("--stale-cache-hours", type=float, default=24.0)


ACTIONS = {
    "add": "is a {role}",
    "list": "",
    "remove": "removed",
    "disable": "disabled",
    "enable": "enabled",
    "set-role": "is now a {role}",
    "set-password": "has a new password",
}


def existing(db: str, create: bool = False) -> str:
    """A SQLite path that exists (or `create`), or a PostgreSQL URL: a mistyped --db is refused, not made empty."""
    if "://" not in db and not Path(db.removeprefix("sqlite:///")).exists() and not create:
        raise GateError(f"{db}: no such collection database (mistyped? `gate central collect --db` makes it)")
    return db


def _password(name: str) -> str:
    from .auth import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            raise GateError("console-user: the passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    return hash_password(password)


def user_add(args: argparse.Namespace) -> int:
    """`gate central console-user ACTION [NAME]`: every change ends the operator's sessions at once."""
    from .auth import check_name

    action = args.action
    if action != "list":
        check_name(args.name or "")
    if action in ("add", "set-role") and not args.role:
        raise GateError(f"console-user {action}: give --role tracer|operator|supervisor")
    hashed = _password(args.name) if action in ("add", "set-password") else None
    store = open_store(existing(args.db, args.create and action == "add"))
    try:
        if action == "list":
            for u in store.users():
                state = "disabled" if u["disabled"] else "enabled"
                print(f"{u['name']:<24} {u['role']:<11} {state:<9} {u['sessions']} sessions")
            return 0
        if action == "add":
            assert hashed is not None
            store.put_user(args.name, args.role, hashed)
        else:
            store.console_schema()
            changes: dict[str, object] = {
                "remove": {"remove": True},
                "disable": {"disabled": True},
                "enable": {"disabled": False},
                "set-role": {"role": args.role},
                "set-password": {"password_hash": hashed},
            }[action]
            if not store.change_user(args.name, **changes):  # type: ignore[arg-type]
                raise GateError(f"console-user {action}: no operator named {args.name}")
    finally:
        store.close()
    print(f"console-user: {args.name} {ACTIONS[action].format(role=args.role)}")
    return 0


def listen_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise GateError(f"--listen {text!r}: give HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), int(port)


def console(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import Console, build
    from .clock import Clock, zone
    from .measures import Link

    host, port = listen_address(args.listen)
    clock = Clock(zone(args.zone))
    broker = args.broker if (args.broker_given or args.config) else None
    link = Link.make(broker, args.prefix, args.key)
    store = open_store(existing(args.db))
    try:
        store.user("-")
        try:
            store.console_schema()  # the sessions' table, in a collection from before it
        except Exception:  # a role that may not create tables: fine if they are there
            store.session("-", 1.0, 1.0)
    except Exception:  # the driver's "no such table": nobody can sign in yet
        store.close()
        raise GateError(
            f"console: {args.db} has no console operators yet: add one with "
            "`gate central console-user add NAME --role tracer|operator|supervisor --db …`"
        ) from None
    c = Console(
        store,
        link,
        refresh_s=args.refresh,
        secure_cookies=args.secure_cookies,
        offline_min=args.offline_minutes,
        stale_hours=args.stale_cache_hours,
        clock=clock,
        tracing_store=open_store(args.db),
        fleet_store=open_store(args.db),
    )
    if not c.htmx:
        log.warning("console: htmx is not installed (./install.sh --dev): the fleet page updates only on reload")
    if link is None:
        log.warning("console: no --broker/--config and --key: measures and lane commands are off")
    print(f"console: http://{host}:{port}/ (store {args.db})", flush=True)
    try:
        trusted = args.trusted_proxy
        proxied = {"proxy_headers": bool(trusted), "forwarded_allow_ips": trusted or None}
        uvicorn.run(build(c), host=host, port=port, log_level="warning", **proxied)  # type: ignore[arg-type]
    finally:
        c.fleet.close()
        if c.commands is not None:
            c.commands.close()
        for extra in {c.tracing_store, c.fleet_store} - {store}:
            extra.close()
        store.close()
    return 0
