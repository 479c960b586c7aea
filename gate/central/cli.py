"""Reference central tools (`gate central ...`): keys, codes, signed publishing, commands, collection."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from gate.central import amqpcollect, deltafeed
from gate.central.console.serve import add_arguments as console_user
from gate.central.console.serve import add_console_options as console_options
from gate.central.habridge import add_arguments as ha_bridge_arguments
from gate.central.sessions import add_arguments as sessions_arguments
from gate.core.address import broker_address
from gate.core.errors import GateError
from gate.decide.codes import Kind, Status


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="central_cmd", required=True)
    kg = sub.add_parser("keygen", help="write a new Ed25519 key pair; print its id and paths as JSON")
    kg.add_argument("--out", required=True, help="directory for <key_id>.key and <key_id>.pub")
    pv = sub.add_parser("provision", help="a least-privilege broker identity (mosquitto password file and ACL)")
    pv.add_argument("name", help="the gate id, or the name of a central program")
    pv.add_argument("--broker-dir", required=True, help="folder holding mosquitto.conf, passwd, acl and secrets")
    pv.add_argument("--role", choices=["gate", "collector", "publisher", "homeassistant"], default="gate")
    pv.add_argument("--prefix", default="gate", help="topic prefix (mqtt.topic_prefix of the gates)")
    pv.add_argument("--port", type=int, help="the broker's plain MQTT port, on 127.0.0.1 only (1883; kept)")
    pv.add_argument("--tls-port", type=int, help="the broker's TLS port, on every interface (8883; kept)")
    pv.add_argument(
        "--server-name",
        action="append",
        help="a host name or address gates reach the broker by, for its certificate (repeat; kept; default: "
        "this host's names and loopback)",
    )
    pv.add_argument(
        "--require-client-certs",
        action="store_true",
        help="the TLS listener refuses clients without a certificate from the folder's CA (kept)",
    )
    pv.add_argument("--client-cert", action="store_true", help="also a client certificate (CN = the name)")
    pv.add_argument("--gate-config", metavar="PATH", help="write a complete gate.toml for this gate there")
    pv.add_argument("--venue", help="the gate's [venue] id in --gate-config (default: the gate id)")
    pv.add_argument(
        "--broker",
        choices=["mosquitto", "rabbitmq"],
        default="mosquitto",
        help="rabbitmq: also write rabbitmq/definitions.json for `rabbitmqctl import_definitions` (docs/broker.md)",
    )
    iss = sub.add_parser("issue", help="sign a pass code; print its text (and write a QR PNG)")
    iss.add_argument("--key", required=True, help="private key file")
    iss.add_argument("--token", required=True, help="pseudonymous token id (6-32 of A-Z a-z 0-9 _ -)")
    iss.add_argument("--status", required=True, choices=[s.value for s in Status])
    iss.add_argument("--valid-for", type=int, required=True, metavar="SECONDS")
    iss.add_argument("--not-before", type=int, metavar="EPOCH", help="start of validity (default: now)")
    iss.add_argument("--companions", type=int, default=0)
    iss.add_argument("--kind", choices=[k.value for k in Kind], default="phone")
    iss.add_argument("--png", help="also write the QR code as a PNG file")

    def mqtt_cmd(name: str, help: str, signed: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("--broker", type=broker_address, metavar="HOST:PORT", help="or --config")
        sp.add_argument(
            "--config",
            metavar="CENTRAL_TOML",
            help="[mqtt] host, port, username, password_file, tls, protocol: as a gate's config",
        )
        sp.add_argument("--prefix", default="gate", help="topic prefix (mqtt.topic_prefix of the gates)")
        if signed:
            sp.add_argument("--key", required=True, help="central private key (its .pub is pinned on the gates)")
        return sp

    ps = mqtt_cmd("publish-snapshot", "sign and publish a full pass snapshot (chunked, retained, resumable)")
    ps.add_argument("file", help="CSV or NDJSON pass-status file")
    ps.add_argument("--version", type=int, required=True, help="snapshot version, higher than the last")
    ps.add_argument("--chunk-size", type=int, default=5000)
    pd = mqtt_cmd("publish-delta", "sign and publish an incremental change on top of a snapshot")
    pd.add_argument("file", nargs="?", help="CSV or NDJSON rows to upsert")
    pd.add_argument("--base-version", type=int, help="the snapshot version it applies to (without --follow)")
    pd.add_argument("--seq", type=int, help="1 for the first delta after the snapshot, then +1 (without --follow)")
    pd.add_argument("--delete", action="append", default=[], metavar="TOKEN")
    deltafeed.add_arguments(pd)  # --follow: the deltas from stdin instead; checks the two forms apart
    pp = mqtt_cmd("publish-policy", "sign and publish a policy (retained)")
    pp.add_argument("file", help="JSON policy document with a version (see gate.example.toml [policy])")
    pk = mqtt_cmd("publish-keys", "sign and publish the code-signing keys gates trust (retained)")
    pk.add_argument("--version", type=int, required=True)
    pk.add_argument("keys", nargs="+", metavar="PUB[@FROM:TO]", help="public key file, optional validity window")
    cm = mqtt_cmd("command", "send a signed command to a gate and print its reply")
    cm.add_argument("gate_id")
    cm.add_argument(
        "name", choices=["open", "out-of-service", "in-service", "free-pass", "resync", "status", "set-trip"]
    )
    cm.add_argument("--operator", help="staff operator id, for open")
    cm.add_argument("--state", choices=["on", "off"], default="on", help="for free-pass")
    cm.add_argument("--route", help="for set-trip: the bus's route from now on (omit: none)")
    cm.add_argument("--run", help="for set-trip: the trip (run) it is on from now on (omit: none)")
    cm.add_argument("--timeout", type=float, default=10.0)
    cm.add_argument("--epoch", type=int, help="sign the command in this epoch (above the gate's: a new order)")
    cm.add_argument(
        "--new-epoch",
        action="store_true",
        help="if the gate refuses the command as out of order (central's clock was ahead once), send it again "
        "in the epoch after the gate's, which resets the gate's command order",
    )
    db_help = "a SQLite file path (one machine) or postgresql://user@host/dbname (a city)"
    co = mqtt_cmd("collect", "store every gate's check-ins in SQLite or PostgreSQL (batched, deduplicated)", False)
    co.add_argument("--db", required=True, help=db_help)
    co.add_argument(
        "--retention-days", type=float, default=28.0, help="delete check-ins older than this, once a day (28)"
    )
    co.add_argument("--group", default="collectors", help="shared-subscription group")
    co.add_argument(
        "--client-id",
        help="this collector's MQTT client id, stable across restarts so the broker resends what it had not "
        "acknowledged (default gate-collect-GROUP-HOSTNAME; give each collector on one host its own)",
    )
    co.add_argument("--count", type=int, help="stop after storing this many new check-ins")
    co.add_argument("--idle-timeout", type=float, help="stop after this many seconds with no message")
    co.add_argument("--devices", help="folder of the gates' device public keys, <gate_id>.pub (from provision)")
    co.add_argument(
        "--broker-dir",
        help="the broker folder (from provision): refuse to run unless this identity is a collector there "
        "(without it, a probe the broker answers under MQTT 5 checks it)",
    )
    co.add_argument(
        "--accept-unsigned",
        action="store_true",
        help="store unsigned check-ins too (a lab without device keys); forged gate ids still refused",
    )
    sh = co.add_mutually_exclusive_group()
    sh.add_argument(
        "--share",
        dest="share",
        action="store_const",
        const="on",
        default="auto",
        help="a shared subscription even where MQTT 3.1.1 cannot confirm the broker has them (default: shared "
        "only where the MQTT 5 CONNACK offers them)",
    )
    sh.add_argument(
        "--no-share",
        dest="share",
        action="store_const",
        const="off",
        help="a plain subscription: this collector receives every check-in",
    )
    sessions_arguments(sub, mqtt_cmd)
    ha_bridge_arguments(sub, mqtt_cmd)
    amqpcollect.add_parser(sub)
    tr = sub.add_parser("trace", help="a token's check-ins across gates and time, or a venue's in a window")
    tr.add_argument("token", nargs="?")
    tr.add_argument("--venue")
    ct = sub.add_parser("contacts", help="every other code at the same venue within +/- a window of a token's visits")
    ct.add_argument("token")
    ct.add_argument("--window", type=float, default=30.0, metavar="MINUTES", help="+/- minutes (30)")
    fmt = ct.add_mutually_exclusive_group()
    fmt.add_argument("--json", dest="fmt", action="store_const", const="json", default="text")
    fmt.add_argument("--csv", dest="fmt", action="store_const", const="csv")
    for q in (tr, ct):
        q.add_argument("--db", required=True, help=db_help)
        q.add_argument("--operator", required=True, help="who is asking: written to the audit table")
        q.add_argument("--from", dest="t_from", type=when, default=0.0, metavar="TIME", help="epoch or ISO 8601")
        q.add_argument("--to", dest="t_to", type=when, default=float("inf"), metavar="TIME")
    tr.add_argument("--json", action="store_true")
    cs = mqtt_cmd("console", "the staff's web console: tracing, fleet, measures, audit (docs/console.md)", False)
    console_options(cs, db_help)
    console_user(sub, db_help)
    pu = sub.add_parser("purge", help="delete check-ins past their retention (whole days in PostgreSQL)")
    pu.add_argument("--db", required=True, help=db_help)
    pu.add_argument("--retention-days", type=float, default=28.0)
    fl = sub.add_parser("fleet", help="every gate seen: availability, mode, outbox, cache, policy, clock, flags")
    fl.add_argument("--db", required=True, help=db_help)
    fl.add_argument("--offline-minutes", type=float, default=5.0, help="flag a gate silent for longer (5)")
    fl.add_argument("--stale-cache-hours", type=float, default=24.0, help="flag an older pass cache (24)")
    fl.add_argument("--json", action="store_true")


def when(text: str) -> float:
    """An epoch number, or an ISO 8601 time (UTC unless it says otherwise)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither epoch seconds nor an ISO 8601 time") from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gate central", description="reference central tools: keys, codes, publishing, collection"
    )
    add_arguments(p)
    return p


def main(argv: list[str]) -> int:
    """`gate central …`: the rest of the command line is parsed here, so the device never loads this package."""
    args = build_parser().parse_args(argv)
    if hasattr(args, "check_arguments"):
        args.check_arguments(args)
    try:
        return _dispatch(args)
    except Exception as exc:
        if not type(exc).__module__.startswith("psycopg"):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        hint = " (the role's grants: docs/operations.md, PostgreSQL layout)" if "permission denied" in first else ""
        raise GateError(f"{args.central_cmd}: PostgreSQL refused: {first}{hint}") from None


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.central_cmd
    if cmd == "console-user":
        from gate.central.console.serve import user_add

        return user_add(args)
    if hasattr(args, "config"):  # a command that talks to the broker
        from gate.central.mqtt import broker_from

        args.broker_given = args.broker is not None
        if cmd != "console" or args.broker or args.config:
            args.broker = broker_from(args.broker, args.config)
    if cmd == "console":
        from gate.central.console.serve import console

        return console(args)
    if cmd == "provision":
        from gate.central import provision as prov

        return prov.provision(args)
    if cmd in ("keygen", "issue"):
        from gate.central import provision

        return provision.main(args)
    if cmd in ("trace", "contacts", "purge", "fleet"):
        return _query(cmd, args)
    if cmd == "ha-bridge":
        from gate.central.habridge import ha_bridge

        return ha_bridge(args)
    if cmd == "sessions":
        from gate.central.sessions import sessions

        return sessions(args)
    if cmd == "collect-amqp":
        return amqpcollect.collect_amqp(args)
    if cmd == "collect":
        from gate.central.collect import Checks, collect

        check_collect_args(args)
        checks = Checks.from_dir(Path(args.devices) if args.devices else None, args.accept_unsigned)
        return collect(
            args.broker,
            args.prefix,
            args.db,
            args.group,
            args.count,
            args.idle_timeout,
            checks,
            share=args.share,
            client_id=args.client_id,
            retention_days=args.retention_days or None,
            broker_dir=Path(args.broker_dir) if args.broker_dir else None,
        )
    from gate.central import publish

    return publish.main(args)


def _query(cmd: str, args: argparse.Namespace) -> int:
    from gate.central import tracing
    from gate.central.db import open_store

    if "://" not in args.db and not Path(args.db).exists():
        raise GateError(f"{cmd}: no collection database at {args.db}")
    store = open_store(args.db)
    try:
        if cmd == "trace":
            return tracing.trace(store, args.operator, args.token, args.venue, args.t_from, args.t_to, args.json)
        if cmd == "contacts":
            return tracing.contacts(store, args.operator, args.token, args.t_from, args.t_to, args.window, args.fmt)
        if cmd == "purge":
            return tracing.purge(store, args.retention_days)
        return tracing.fleet(store, args.offline_minutes, args.stale_cache_hours, args.json)
    finally:
        store.close()


def check_collect_args(args: argparse.Namespace) -> None:
    """One line for what would make collect run wrong: no device keys, a missing folder, a group that is no name."""
    if not args.devices and not args.accept_unsigned:
        raise GateError("collect: give --devices DIR (the gates' device keys), or --accept-unsigned in a lab")
    if args.devices and not Path(args.devices).is_dir():
        raise GateError(f"collect: --devices {args.devices}: no such folder (the broker folder's devices/)")
    if not args.group or any(c in args.group for c in "/+#$"):
        raise GateError(f"collect: --group {args.group!r}: give a name without / + # $ (it is `$share/GROUP/…`)")
