"""Central collection: check-ins from every gate into SQLite or PostgreSQL, in batches, acknowledged to the
broker only once committed; the fleet's retained state and telemetry beside them; retention applied daily."""

from __future__ import annotations

import json
import logging
import math
import random
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gate.central.db import open_store
from gate.central.identity import check_role, identity_of, probe
from gate.central.mqtt import connect_session
from gate.central.store import Quarantined, Row, Store, row_of
from gate.central.subscribe import plan, subscribe
from gate.config.model import MqttSection
from gate.decide.keys import load_public_key
from gate.deliver.sealing import SealError, unseal

log = logging.getLogger(__name__)
BATCH_ROWS = 2000  # a batch is committed at this many messages ...
BATCH_SECONDS = 0.1  # ... or this long after its first, whichever comes first
SESSION_EXPIRY = 7 * 86400  # un-acked check-ins wait at the broker this long for a collector that died
PURGE_EVERY = 86400.0
# A database that fails (a PostgreSQL failover takes ~10-30 s) is tried again after a backoff that doubles up to
# RETRY_MAX, with jitter so that several collectors do not reconnect in step; meanwhile nothing is acknowledged.
RETRY_FIRST, RETRY_MAX = 0.2, 2.0
FLEET_KINDS = ("state", "telemetry", "availability")
# Messages waiting for the database. Acknowledged ones (QoS 1) are bounded by the broker's in-flight window;
# past this many waiting, QoS 0 fleet reports (nothing to acknowledge, the next one supersedes) are refused.
INBOX_LIMIT = 20_000


@dataclass(frozen=True)
class Checks:
    """What makes a check-in genuine: a payload signed by the device key registered for the gate the topic names."""

    keys: dict[str, Ed25519PublicKey]  # gate id -> its device public key (`<gate>.pub` in --devices)
    accept_unsigned: bool = False  # a lab without device keys: unsigned check-ins stored, still per-topic checked

    @classmethod
    def from_dir(cls, devices: Path | None, accept_unsigned: bool) -> Checks:
        keys = {p.stem: load_public_key(p) for p in sorted(devices.glob("*.pub"))} if devices else {}
        return cls(keys, accept_unsigned)

    def check(self, topic: str, payload: bytes) -> dict[str, Any]:
        gate_id = topic.rsplit("/", 2)[-2] if topic.count("/") >= 2 else ""
        try:
            body = unseal(payload, self.keys, gate_id).body
        except SealError as exc:
            if not (exc.reason == "unsigned" and self.accept_unsigned):
                raise
            body = json.loads(payload)
            if body.get("gate_id") != gate_id:
                raise SealError("wrong_gate", f"payload gate {str(body.get('gate_id'))[:40]!r} on {topic}") from None
        if not isinstance(body.get("event_id"), str):
            raise SealError("malformed", "no event_id")
        t = body.get("time")
        if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
            raise SealError("malformed", "no time")
        return body


Item = tuple[str, Any, int]  # ("row" | "quarantine" | "fleet", what, message id to ack; 0 for QoS 0: no ack)


class Collector:
    """paho's thread checks each message and appends it to a deque (no lock: a writer that had to win a lock
    from paho's busy thread would wait for a whole burst); the writer commits up to BATCH_ROWS of them in one
    transaction, then acknowledges each. A collector killed before its commit acknowledged nothing: the
    broker keeps those messages for its session and delivers them again when it reconnects with the same id."""

    def __init__(
        self, store: Store, checks: Checks, retention_days: float | None = 28.0, inbox_limit: int = INBOX_LIMIT
    ) -> None:
        self.store = store
        self.checks = checks
        self.retention_days = retention_days
        self.inbox_limit = inbox_limit
        self.client: Any = None
        self.stats = {"received": 0, "stored": 0, "duplicates": 0, "quarantined": 0, "purged": 0, "refused": 0}
        self._refusing = False
        self._inbox: deque[Item] = deque()
        self._wake = threading.Event()
        self._last_purge = -PURGE_EVERY  # the first step purges: monotonic time starts near 0 at boot
        self._retry = 0.0  # the current backoff while the store fails; 0 while it works
        self.last_message = time.monotonic()

    def on_message(self, c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        self.last_message = time.monotonic()
        payload, topic = bytes(msg.payload), msg.topic
        kind = topic.rsplit("/", 1)[-1]
        mid = msg.mid if msg.qos > 0 else 0  # telemetry comes at QoS 0: there is nothing to acknowledge
        if not mid and len(self._inbox) >= self.inbox_limit:
            self._refuse(topic)
            return
        if kind in FLEET_KINDS:
            self._inbox.append(("fleet", self._fleet(topic, kind, payload), mid))
        else:
            try:
                ev = self.checks.check(topic, payload)
                self._inbox.append(("row", row_of(ev, payload), mid))
                stop = (ev.get("position") or {}).get("stop") if isinstance(ev.get("position"), dict) else None
                if isinstance(stop, dict):  # a bus at a stop: the fleet view shows its last one
                    seen = {"id": stop.get("id"), "name": stop.get("name"), "time": ev["time"]}
                    self._inbox.append(("fleet", (ev["gate_id"], "last_stop", seen, time.time()), 0))
            except (SealError, ValueError, TypeError, AttributeError) as exc:
                reason = exc.reason if isinstance(exc, SealError) else "malformed"
                self._inbox.append(("quarantine", (topic, reason, str(exc)[:200], time.time(), payload), mid))
        if len(self._inbox) >= BATCH_ROWS:
            self._wake.set()

    def _refuse(self, topic: str) -> None:
        self.stats["refused"] += 1
        if not self._refusing:
            self._refusing = True
            log.error(
                "collect: %d messages wait for the database; QoS 0 reports refused (first: %s)", len(self._inbox), topic
            )

    @staticmethod
    def _fleet(topic: str, kind: str, payload: bytes) -> tuple[str, str, dict[str, Any], float] | None:
        gate_id = topic.rsplit("/", 2)[-2]
        try:
            body = {"status": payload.decode()} if kind == "availability" else json.loads(payload)
        except (UnicodeDecodeError, ValueError):
            return None
        return (gate_id, kind, body, time.time()) if isinstance(body, dict) and payload else None

    def flush(self) -> bool:
        """Commit what has arrived (up to BATCH_ROWS), then acknowledge it; False (nothing acknowledged) if
        the store failed: the batch goes back to the front and is tried again."""
        batch: list[Item] = []
        while self._inbox and len(batch) < BATCH_ROWS:
            batch.append(self._inbox.popleft())
        if not batch:
            return True
        rows: list[Row] = [w for k, w, _ in batch if k == "row"]
        quarantined: list[Quarantined] = [w for k, w, _ in batch if k == "quarantine"]
        try:
            new = self.store.write(rows, quarantined)
            stops = {w[0]: w for k, w, _ in batch if k == "fleet" and w is not None and w[1] == "last_stop"}
            for k, w, _ in batch:
                if k == "fleet" and w is not None and (w[1] != "last_stop" or stops[w[0]] is w):
                    self.store.seen(*w)  # of a bus's stops in one batch, only the last
        except Exception as exc:  # the database is down or refused the batch: keep it, retry, ack nothing
            log.error("collect: cannot store %d messages (%s: %s); retrying", len(batch), type(exc).__name__, exc)
            self._inbox.extendleft(reversed(batch))
            return False
        for _, _, mid in batch:
            if mid:
                self.client.ack(mid, 1)
        if self._refusing and len(self._inbox) < self.inbox_limit // 2:
            self._refusing = False
            log.warning("collect: the backlog is draining; %d QoS 0 reports refused so far", self.stats["refused"])
        self.stats["received"] += len(rows) + len(quarantined)
        self.stats["stored"] += new
        self.stats["duplicates"] += len(rows) - new
        self.stats["quarantined"] += len(quarantined)
        return True

    def maybe_purge(self) -> None:
        if self.retention_days is None or time.monotonic() - self._last_purge < PURGE_EVERY:
            return
        self._last_purge = time.monotonic()
        cutoff = time.time() - self.retention_days * 86400
        try:
            gone = self.store.purge(cutoff)
        except Exception as exc:  # the database is away: purge on a later day, keep collecting
            log.error("collect: retention purge failed (%s: %s); tried again tomorrow", type(exc).__name__, exc)
            return
        self.stats["purged"] += gone
        log.info("collect: retention %g days: %d check-ins older than %.0f deleted", self.retention_days, gone, cutoff)

    def step(self) -> None:
        """The writer: commit at most BATCH_SECONDS after the last commit, or at once when a batch is full."""
        if len(self._inbox) < BATCH_ROWS:
            self._wake.wait(BATCH_SECONDS)
        self._wake.clear()
        if self.flush():
            self._retry = 0.0
        else:
            self._retry = min(RETRY_MAX, self._retry * 2 or RETRY_FIRST)
            time.sleep(self._retry * random.uniform(0.5, 1.0))
            return
        self.maybe_purge()


def collect(
    broker: MqttSection,
    prefix: str,
    db: str,
    group: str,
    count: int | None,
    idle_timeout: float | None,
    checks: Checks,
    share: str = "auto",
    client_id: str | None = None,
    retention_days: float | None = 28.0,
    broker_dir: Path | None = None,
) -> int:
    """Subscribe (shared where the broker has shared subscriptions: `gate.central.subscribe.plan`) with a
    persistent session and manual acks; store genuine check-ins (idempotent by event_id) and quarantine the
    rest with a reason: unsigned, unknown_gate, wrong_gate, wrong_key, bad_signature, malformed. The fleet
    topics are subscribed by every collector (retained messages are never sent on shared subscriptions).
    A subscription the broker refuses or grants below QoS 1 ends it with GateError: it never runs receiving
    nothing."""
    cid = client_id or f"gate-collect-{group}-{socket.gethostname()}"
    name = identity_of(broker, cid)
    checked = check_role(broker_dir, name) if broker_dir is not None else None
    store = open_store(db)
    col = Collector(store, checks, retention_days)
    try:
        client, connack = connect_session(
            broker, client_id=cid, manual_ack=True, session_expiry=SESSION_EXPIRY, on_message=col.on_message
        )
    except BaseException:
        store.close()
        raise
    col.client = client
    try:
        checked = checked or probe(client, connack, prefix, name)
        how = plan(connack, share, group)
        topic = f"{prefix}/+/checkin"
        if how.shared:
            topic = f"$share/{group}/{topic}"
        subscribe(client, [(topic, 1), *((f"{prefix}/+/{k}", 1) for k in FLEET_KINDS)], {topic})
    except BaseException:
        client.disconnect()
        client.loop_stop()
        store.close()
        raise
    print(
        f"collect: subscribed to {topic} into {store.url.split('@')[-1]}: {how.note}; as identity {name} "
        f"({checked}) in group {group!r}",
        file=sys.stderr,
        flush=True,
    )

    tty = sys.stderr.isatty()  # one line rewritten in place on a terminal; a line each in a log or a pipe

    def progress(end: str) -> None:
        s = col.stats
        print(
            f"{chr(13) if tty else ''}received {s['received']}, stored {s['stored']} new, "
            f"duplicates {s['duplicates']}, quarantined {s['quarantined']}",
            end=end if tty else "\n",
            file=sys.stderr,
            flush=True,
        )

    shown = time.monotonic()
    try:
        while count is None or col.stats["stored"] < count:
            col.step()
            if time.monotonic() - shown >= 1.0:
                shown = time.monotonic()
                progress("")
            if idle_timeout is not None and time.monotonic() - col.last_message > idle_timeout:
                break
    except KeyboardInterrupt:
        pass
    finally:
        while col._inbox and col.flush():
            pass
        client.disconnect()
        client.loop_stop()
        progress("\n")
        store.close()
    return 0
