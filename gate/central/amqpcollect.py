"""`gate central collect-amqp`: competing consumers of the check-ins' quorum queue (RabbitMQ, AMQP 0-9-1 with
pika), each message acknowledged only after the batch holding it is committed (the same Collector as collect)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import paho.mqtt.client as mqtt

from gate.central.collect import BATCH_ROWS, BATCH_SECONDS, Checks, Collector
from gate.central.db import open_store
from gate.central.rabbitdefs import CHECKIN_QUEUE
from gate.core.errors import GateError

log = logging.getLogger(__name__)
PREFETCH = BATCH_ROWS  # unacknowledged deliveries a consumer holds at once: one batch
RECONNECT_SECONDS = 1.0


def delivery(routing_key: str, body: bytes, tag: int) -> mqtt.MQTTMessage:
    """An AMQP delivery as the paho message Collector.on_message reads; its mid is the delivery tag."""
    msg = mqtt.MQTTMessage(mid=tag, topic=topic_of(routing_key).encode())
    msg.payload, msg.qos = body, 1
    return msg


class ChannelAcks:
    """What Collector.flush calls after its commit: `ack(mid, qos)` becomes basic_ack on the same thread."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel

    def ack(self, mid: int, qos: int) -> None:
        self.channel.basic_ack(delivery_tag=mid)


def topic_of(routing_key: str) -> str:
    """RabbitMQ's MQTT plugin routes `gate/lane-01/checkin` as `gate.lane-01.checkin`; ids and prefixes have no
    dots, so the way back is exact."""
    return routing_key.replace(".", "/")


def parameters(urls: list[str], password_file: str | None) -> list[Any]:
    import pika

    secret = None
    if password_file:
        try:
            secret = Path(password_file).read_text().strip()
        except OSError as exc:
            raise GateError(f"collect-amqp: cannot read --password-file: {exc}") from None
    params = []
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps") or not parts.hostname:
            raise GateError(f"collect-amqp: --amqp {url!r} is not amqp://USER@HOST:PORT/VHOST")
        if secret is not None and "@" in parts.netloc:  # the password from the file, never on the command line
            user, host = parts.netloc.rsplit("@", 1)
            url = urlunsplit(parts._replace(netloc=f"{user.split(':')[0]}:{quote(secret, safe='')}@{host}"))
        params.append(pika.URLParameters(url))
    for p in params:
        p.heartbeat = 30
        p.blocked_connection_timeout = 60
        p.connection_attempts = 1
        p.socket_timeout = 5
    return params


class AmqpCollector:
    """One thread: consume, commit a batch (at BATCH_ROWS, or BATCH_SECONDS after the last commit), then ack
    each message in it. A lost connection drops what was not committed: the broker gives it to another
    consumer (or to this one when it is back), and the store is idempotent by event_id."""

    def __init__(self, col: Collector, params: list[Any], queue: str = CHECKIN_QUEUE) -> None:
        self.col = col
        self.params = params
        self.queue = queue
        self.node = ""

    def run(self, count: int | None, idle_timeout: float | None) -> None:
        import pika.exceptions

        while not self._done(count, idle_timeout):
            try:
                self._consume(count, idle_timeout)
            except (pika.exceptions.AMQPError, OSError) as exc:
                self.col._inbox.clear()  # uncommitted: their delivery tags died with the channel; redelivered
                log.warning(
                    "collect-amqp: lost %s (%s: %s); reconnecting", self.node or "the broker", type(exc).__name__, exc
                )
                time.sleep(RECONNECT_SECONDS)

    def _done(self, count: int | None, idle_timeout: float | None) -> bool:
        if count is not None and self.col.stats["stored"] >= count:
            return True
        return idle_timeout is not None and time.monotonic() - self.col.last_message > idle_timeout

    def _consume(self, count: int | None, idle_timeout: float | None) -> None:
        import pika

        conn = pika.BlockingConnection(self.params)  # tries each node in turn
        try:
            reached = getattr(conn._impl, "params", None)  # which node of the list it reached
            self.node = f"{reached.host}:{reached.port}" if reached is not None else "the broker"
            channel = conn.channel()
            channel.basic_qos(prefetch_count=PREFETCH)
            self.col.client = ChannelAcks(channel)
            print(f"collect-amqp: consuming {self.queue} on {self.node}", file=sys.stderr, flush=True)
            last_flush = time.monotonic()
            for method, _props, body in channel.consume(self.queue, inactivity_timeout=BATCH_SECONDS):
                if method is not None:
                    self.col.on_message(None, None, delivery(method.routing_key, body, method.delivery_tag))
                full = len(self.col._inbox) >= BATCH_ROWS
                if full or method is None or time.monotonic() - last_flush >= BATCH_SECONDS:
                    while not self.col.flush():  # the database is down: keep the batch, ack nothing, retry
                        conn.sleep(1.0)
                    last_flush = time.monotonic()
                    self.col.maybe_purge()
                if self._done(count, idle_timeout):
                    break
        finally:
            if conn.is_open:
                conn.close()


def collect_amqp(args: argparse.Namespace) -> int:
    if not args.devices and not args.accept_unsigned:
        raise GateError("collect-amqp: give --devices DIR (the gates' device keys), or --accept-unsigned in a lab")
    if args.devices and not Path(args.devices).is_dir():
        raise GateError(f"collect-amqp: --devices {args.devices} is not a folder")
    checks = Checks.from_dir(Path(args.devices) if args.devices else None, args.accept_unsigned)
    if not getattr(args, "verbose", False):  # pika narrates every connection at INFO; ours say what matters
        logging.getLogger("pika").setLevel(logging.WARNING)
    params = parameters(args.amqp, args.password_file)
    store = open_store(args.db)
    col = Collector(store, checks, args.retention_days or None)
    try:
        AmqpCollector(col, params, args.queue).run(args.count, args.idle_timeout)
    except KeyboardInterrupt:
        pass
    finally:
        store.close()
        s = col.stats
        print(
            f"received {s['received']}, stored {s['stored']} new, duplicates {s['duplicates']}, "
            f"quarantined {s['quarantined']}",
            file=sys.stderr,
            flush=True,
        )
    return 0


def add_parser(sub: Any) -> None:
    """`gate central collect-amqp`, registered by gate/central/cli.py."""
    help = "consume the check-ins' quorum queue (RabbitMQ cluster) as one of any number of competing collectors"
    ca = sub.add_parser("collect-amqp", help=help, description=help)
    ca.add_argument(
        "--amqp",
        action="append",
        required=True,
        metavar="URL",
        help="amqp://USER@HOST:5672/%%2F; repeat for each node (tried in turn)",
    )
    ca.add_argument("--password-file", help="the identity's password (credentials/<name>/mqtt-password)")
    ca.add_argument("--queue", default=CHECKIN_QUEUE, help=f"the quorum queue ({CHECKIN_QUEUE})")
    ca.add_argument("--db", required=True, help="a SQLite file path or postgresql://user@host/dbname")
    ca.add_argument("--devices", help="folder of the gates' device public keys, <gate_id>.pub (from provision)")
    ca.add_argument("--accept-unsigned", action="store_true", help="store unsigned check-ins too (a lab)")
    ca.add_argument("--retention-days", type=float, default=28.0, help="delete check-ins older than this (28)")
    ca.add_argument("--count", type=int, help="stop after storing this many new check-ins")
    ca.add_argument("--idle-timeout", type=float, help="stop after this many seconds with no message")
