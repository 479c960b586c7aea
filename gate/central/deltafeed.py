"""`gate central publish-delta --follow`: deltas read line by line from stdin, signed, on one kept MQTT connection."""

from __future__ import annotations

import argparse
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gate.central.deltaline import Delta, Order, parse
from gate.core.errors import GateError
from gate.decide.passimport import MAX_LINE_BYTES

if TYPE_CHECKING:  # paho is loaded with the connection, not by every `gate central` command
    import paho.mqtt.client as mqtt

FAILOVER_AFTER = 5.0  # seconds a node of several [mqtt] hosts may be gone while a delta waits before the next
ACK_TIMEOUT = 30.0  # seconds a delta may wait for its PUBACK (paho reconnecting meanwhile) before the feed gives up


def add_arguments(pd: argparse.ArgumentParser) -> None:
    """--follow and its options on `publish-delta`; without --follow, --base-version and --seq stay required."""
    pd.add_argument(
        "--follow",
        action="store_true",
        help='read deltas from standard input, one JSON line each ({"base_version", "seq", "upserts", "deletes"}), '
        "and publish each as it arrives on one connection kept open until end of input",
    )
    pd.add_argument(
        "--ack-timeout",
        type=float,
        metavar="SECONDS",
        help=f"with --follow: give up (exit 1) if the broker has not acknowledged a delta by then ({ACK_TIMEOUT:g})",
    )
    pd.set_defaults(check_arguments=lambda args: _check(pd, args))
    where = "(--broker HOST:PORT | --config CENTRAL_TOML) [--prefix PREFIX] --key KEY"
    pd.usage = (
        f"%(prog)s [FILE] --base-version N --seq N [--delete TOKEN ...] {where}\n"
        f"       %(prog)s --follow [--ack-timeout SECONDS] {where} < deltas.ndjson"
    )


def _check(pd: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.follow:
        mixed = [name for name, given in _one_shot(args) if given]
        if mixed:
            pd.error(f"--follow reads every delta from standard input: leave out {', '.join(mixed)}")
        if args.ack_timeout is None:
            args.ack_timeout = ACK_TIMEOUT
        if not args.ack_timeout > 0:
            pd.error("--ack-timeout must be above 0")
        return
    if args.ack_timeout is not None:
        pd.error("--ack-timeout is for --follow (one-shot publish-delta waits 30 s)")
    missing = [name for name in ("--base-version", "--seq") if getattr(args, name[2:].replace("-", "_")) is None]
    if missing:
        pd.error(f"the following arguments are required: {', '.join(missing)}")


def _one_shot(args: argparse.Namespace) -> list[tuple[str, bool]]:
    return [
        ("FILE", args.file is not None),
        ("--base-version", args.base_version is not None),
        ("--seq", args.seq is not None),
        ("--delete", bool(args.delete)),
    ]


def numbered(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of each line as it arrives, read in a bounded piece: a longer line is never read whole
    (what `parse` gets is then over the limit, and refused)."""
    n = 0
    while raw := stream.readline(MAX_LINE_BYTES + 1):
        n += 1
        yield n, raw


class FeedError(GateError):
    """A line refused: it and everything after it unpublished, everything before it acknowledged."""

    def __init__(self, line: int, what: str) -> None:
        what = what if len(what) <= 300 else f"{what[:150]}…{what[-150:]}"  # a 64 KiB value quoted whole: no
        super().__init__(f"publish-delta --follow: line {line}: {what}")
        self.line = line


class Stopped(GateError):
    """SIGTERM: the feed stops between deltas or while one waits for its acknowledgement."""


class Link:
    """One MQTT connection for the whole feed. paho reconnects it by itself, re-sending what was unacknowledged;
    with several [mqtt] hosts, a node gone for FAILOVER_AFTER seconds while a delta waits is left for the next."""

    def __init__(self, broker: Any, timeout: float) -> None:
        from gate.central.mqtt import Broker, nodes

        self.timeout = timeout
        self.nodes: list[Any] = nodes(broker) if isinstance(broker, Broker) else [broker]
        self.at = -1
        self.client, self._acks = self._next()  # the first that answers, as one-shot's deltas

    def _next(self) -> tuple[mqtt.Client, queue.Queue[tuple[int, Any]]]:
        """A connection to the next node that answers, after the current one; its own PUBACK queue."""
        from gate.central.mqtt import connect

        failures = []
        for step in range(1, len(self.nodes) + 1):
            i = (self.at + step) % len(self.nodes)
            try:
                client = connect(self.nodes[i])
            except GateError as exc:
                failures.append(str(exc))
                continue
            acks: queue.Queue[tuple[int, Any]] = queue.Queue()
            client.on_publish = _enqueue(acks)
            self.at = i
            return client, acks
        raise GateError("; ".join(failures))

    def publish(self, topic: str, payload: bytes, seq: int) -> None:
        """QoS 1, not retained; returns once the broker acknowledged it."""
        info = self.client.publish(topic, payload, qos=1, retain=False)  # not connected: queued, sent on reconnect
        deadline, lost = time.monotonic() + self.timeout, None
        while (left := deadline - time.monotonic()) > 0:
            try:
                mid, rc = self._acks.get(timeout=min(left, 0.5))
            except queue.Empty:
                lost = None if self.client.is_connected() else lost or time.monotonic()
                if lost is not None and time.monotonic() - lost > FAILOVER_AFTER and len(self.nodes) > 1:
                    info, lost = self._failover(topic, payload, info), None
                continue
            if mid != info.mid:
                continue
            if getattr(rc, "is_failure", False):
                raise GateError(f"publish-delta --follow: the broker refused delta seq {seq}: {rc}")
            return
        raise GateError(
            f"publish-delta --follow: delta seq {seq} was not acknowledged within {self.timeout:g}s (broker "
            "unreachable?); every delta before it was, nothing after it was read"
        )

    def _failover(self, topic: str, payload: bytes, info: mqtt.MQTTMessageInfo) -> mqtt.MQTTMessageInfo:
        """The delta again on the next node that answers (the gates drop a second copy: its seq is not newer);
        if none does, the old connection keeps trying its own node."""
        try:
            client, acks = self._next()
        except GateError as exc:
            print(f"publish-delta --follow: no other node answers: {exc}", file=sys.stderr)
            return info
        self.close()
        self.client, self._acks = client, acks
        node = self.nodes[self.at]
        print(f"publish-delta --follow: connection lost; now on {node.host}:{node.port}", file=sys.stderr)
        return self.client.publish(topic, payload, qos=1, retain=False)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _enqueue(acks: queue.Queue[tuple[int, Any]]) -> Any:
    return lambda c, u, mid, rc, p: acks.put((mid, rc))  # paho's thread: enqueue only


def follow(
    broker: Any,
    topic: str,
    key: Ed25519PrivateKey,
    in_force: int | None,
    stream: BinaryIO,
    out: TextIO,
    timeout: float = ACK_TIMEOUT,
) -> int:
    """Publish each line of `stream` as it arrives; print its summary to `out` once acknowledged. A bad line
    raises FeedError (nothing from it on published, everything before it acknowledged); 0 at end of input."""
    order, link = Order(in_force), Link(broker, timeout)
    done, waiting = 0, None
    try:
        with _terminated_raises():
            for n, raw in numbered(stream):
                try:
                    delta = parse(raw)
                    if delta is None:
                        continue  # a blank line
                    order.check(delta)
                except ValueError as exc:
                    raise FeedError(n, f"{exc}; {_refused(done)}") from None
                waiting = delta.seq
                link.publish(topic, _sign(key, delta), delta.seq)
                order.advance(delta)
                waiting, done = None, done + 1
                print(delta.summary(), file=out, flush=True)
    except (Stopped, KeyboardInterrupt) as exc:
        unsure = f"; delta seq {waiting} was sent but not yet acknowledged" if waiting is not None else ""
        print(f"publish-delta --follow: stopped after {_count(done)}, each acknowledged{unsure}", file=sys.stderr)
        return 143 if isinstance(exc, Stopped) else 130
    finally:
        link.close()
    return 0


def _sign(key: Ed25519PrivateKey, delta: Delta) -> bytes:
    from gate.sync.envelope import sign

    return sign(key, "delta", delta.body())


def _count(done: int) -> str:
    return f"{done} delta{'' if done == 1 else 's'}"


def _refused(done: int) -> str:
    return f"nothing from this line on was published ({_count(done)} before it, each acknowledged)"


@contextmanager
def _terminated_raises() -> Iterator[None]:
    """SIGTERM raises Stopped in the main thread while the feed runs, so the connection is closed cleanly."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers are the main thread's only
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_stopped)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped("SIGTERM")
