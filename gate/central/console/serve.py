"""`gate central console` and `gate central console-user add`: start-up, and accounts from the command line."""

from __future__ import annotations

import argparse
import getpass
import logging
import sys

from gate.central.db import open_store
from gate.core.errors import GateError

from . import ROLES

log = logging.getLogger("gate.central.console")


def add_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser], db_help: str) -> None:
    cu = sub.add_parser("console-user", help="add or change a console operator (password from stdin or a prompt)")
    cu.add_argument("action", choices=["add"])
    cu.add_argument("name", help="the operator id written to the audit table (letters, digits, _ . @ -)")
    cu.add_argument("--role", required=True, choices=ROLES)
    cu.add_argument("--db", required=True, help=db_help)


def add_console_options(co: argparse.ArgumentParser, db_help: str) -> None:
    co.add_argument("--db", required=True, help=db_help)
    co.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT", help="(127.0.0.1:8080: loopback)")
    co.add_argument("--key", help="central's private key: publishing measures and lane commands need it")
    co.add_argument("--secure-cookies", action="store_true", help="behind a TLS reverse proxy: cookies only over https")
    co.add_argument("--refresh", type=float, default=5.0, metavar="SECONDS", help="fleet page update interval (5)")
    co.add_argument("--offline-minutes", type=float, default=5.0)
    co.add_argument("--stale-cache-hours", type=float, default=24.0)


def user_add(args: argparse.Namespace) -> int:
    from .auth import check_name, hash_password

    name = check_name(args.name)
    if sys.stdin.isatty():
        password = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != password:
            raise GateError("console-user: the passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    hashed = hash_password(password)
    store = open_store(args.db)
    try:
        store.put_user(name, args.role, hashed)
    finally:
        store.close()
    print(f"console-user: {name} is a {args.role}")
    return 0


def listen_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise GateError(f"--listen {text!r}: give HOST:PORT, e.g. 127.0.0.1:8080")
    return host.strip("[]"), int(port)


def console(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import Console, build
    from .measures import Link

    host, port = listen_address(args.listen)
    broker = args.broker if (args.broker_given or args.config) else None
    link = Link.make(broker, args.prefix, args.key)
    store = open_store(args.db)
    try:
        store.user("-")
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
    )
    if not c.htmx:
        log.warning("console: htmx is not installed (./install.sh --dev): the fleet page updates only on reload")
    if link is None:
        log.warning("console: no --broker/--config and --key: measures and lane commands are off")
    print(f"console: http://{host}:{port}/ (store {args.db})", flush=True)
    try:
        uvicorn.run(build(c), host=host, port=port, log_level="warning", proxy_headers=args.secure_cookies)
    finally:
        store.close()
    return 0
