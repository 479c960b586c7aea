"""`gate central publish-delta --follow`: deltas read line by line from stdin, signed, on one kept MQTT connection."""

from __future__ import annotations

import argparse
import json
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import Any, BinaryIO, TextIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gate.core.errors import CodeError, GateError
from gate.decide.codes import check_token
from gate.decide.passcache import Row
from gate.decide.passimport import MAX_LINE_BYTES, to_row

ACK_TIMEOUT = 30.0  # seconds a delta may wait for its PUBACK (paho reconnecting meanwhile) before the feed gives up
FIELDS = ("base_version", "seq", "upserts", "deletes")
MAX_VERSION = 2**63 - 1  # what the gates' SQLite stores


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


@dataclass(frozen=True)
class Delta:
    base_version: int
    seq: int
    upserts: tuple[Row, ...]
    deletes: tuple[str, ...]

    def body(self) -> dict[str, Any]:
        """What is signed: the same body as one-shot publish-delta's."""
        upserts = [list(r) for r in self.upserts]
        return {"base_version": self.base_version, "seq": self.seq, "upserts": upserts, "deletes": list(self.deletes)}

    def summary(self) -> str:
        """The line printed once the broker acknowledged it (as one-shot publish-delta prints)."""
        counts = {"upserts": len(self.upserts), "deletes": len(self.deletes)}
        return json.dumps({"base_version": self.base_version, "seq": self.seq, **counts})


def _whole(doc: dict[str, Any], name: str, lo: int) -> int:
    value = doc.get(name)
    if value is None:
        raise ValueError(f"{name} is missing")
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= MAX_VERSION:
        raise ValueError(f"{name} {value!r} is not an integer in {lo}..{MAX_VERSION}")
    return value


def parse(raw: bytes) -> Delta | None:
    """One line of the feed (None for a blank one); ValueError says what is wrong with it."""
    if len(raw) > MAX_LINE_BYTES:
        raise ValueError(f"longer than {MAX_LINE_BYTES} bytes: split the change into several deltas")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})") from None
    if not text.strip():
        return None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg})") from None
    except RecursionError:
        raise ValueError("not a delta (nested too deeply)") from None
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    unknown = set(doc) - set(FIELDS)
    if unknown:
        names = ", ".join(repr(k)[:40] for k in sorted(unknown)[:3])
        raise ValueError(f"unknown field(s) {names} (a delta has {', '.join(FIELDS)})")
    base, seq = _whole(doc, "base_version", 0), _whole(doc, "seq", 1)
    records, tokens = doc.get("upserts", []), doc.get("deletes", [])
    if not isinstance(records, list) or not isinstance(tokens, list):
        raise ValueError("upserts and deletes must be lists (pass records; tokens)")
    upserts = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise ValueError(f"upserts[{i}] is not a pass record (a JSON object)")
        try:
            upserts.append(to_row(rec))
        except ValueError as exc:
            raise ValueError(f"upserts[{i}]: {exc}") from None
    for i, token in enumerate(tokens):
        if not isinstance(token, str):
            raise ValueError(f"deletes[{i}] {token!r} is not a token (a string)")
        try:
            check_token(token)
        except CodeError as exc:
            raise ValueError(f"deletes[{i}]: {exc}") from None
    seen: set[str] = set()
    for token in [r[0] for r in upserts] + tokens:
        if token in seen:  # the gates would apply both, in an order the line does not show
            raise ValueError(f"token {token} appears twice in one delta")
        seen.add(token)
    return Delta(base, seq, tuple(upserts), tuple(tokens))


class Order:
    """Versions only move forward: every line on the base in force at start, each seq above the last."""

    def __init__(self, in_force: int | None) -> None:
        self.base, self.from_broker = in_force, in_force is not None
        self.last: int | None = None

    def check(self, delta: Delta) -> None:
        if self.base is not None and delta.base_version != self.base:
            where = "the snapshot in force" if self.from_broker else "the base of this feed's first delta"
            raise ValueError(f"base_version {delta.base_version} is not {where} ({self.base})")
        if self.last is not None and delta.seq <= self.last:
            raise ValueError(f"seq {delta.seq} is not above the previous delta's ({self.last})")

    def advance(self, delta: Delta) -> None:
        self.base, self.last = delta.base_version, delta.seq


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
    """One MQTT connection for the whole feed (paho reconnects it, re-sending what was unacknowledged)."""

    def __init__(self, broker: Any, timeout: float) -> None:
        from gate.central.mqtt import connect

        self.timeout = timeout
        self._acks: queue.Queue[tuple[int, Any]] = queue.Queue()
        self.client = connect(broker)  # several [mqtt] hosts: the first that answers, as one-shot's deltas
        self.client.on_publish = lambda c, u, mid, rc, p: self._acks.put((mid, rc))  # paho's thread: enqueue only

    def publish(self, topic: str, payload: bytes, seq: int) -> None:
        """QoS 1, not retained; returns once the broker acknowledged it."""
        info = self.client.publish(topic, payload, qos=1, retain=False)  # not connected: queued, sent on reconnect
        deadline = time.monotonic() + self.timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                mid, rc = self._acks.get(timeout=left)
            except queue.Empty:
                break
            if mid != info.mid:
                continue
            if getattr(rc, "is_failure", False):
                raise GateError(f"publish-delta --follow: the broker refused delta seq {seq}: {rc}")
            return
        raise GateError(
            f"publish-delta --follow: delta seq {seq} was not acknowledged within {self.timeout:g}s (broker "
            "unreachable?); every delta before it was, nothing after it was read"
        )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


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
