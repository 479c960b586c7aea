"""Central collection of check-ins into SQLite, and the contact trace they exist for."""

from __future__ import annotations

import json
import sqlite3
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gate.central.mqtt import connect
from gate.config import MqttSection
from gate.keys import load_public_key
from gate.sealing import SealError, unseal
from gate.sqlite import private

_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkins (
    event_id TEXT PRIMARY KEY, type TEXT, gate_id TEXT, venue_id TEXT, venue_name TEXT, token TEXT, kind TEXT,
    decision TEXT, reason TEXT, companions INTEGER, companion_index INTEGER, outcome TEXT, decision_id TEXT,
    operator TEXT, time REAL, clock_synced INTEGER, payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS checkins_token ON checkins (token, time);
CREATE INDEX IF NOT EXISTS checkins_venue ON checkins (venue_id, time);
"""
_COLS = (
    "event_id",
    "type",
    "gate_id",
    "venue_id",
    "venue_name",
    "token",
    "kind",
    "decision",
    "reason",
    "companions",
    "companion_index",
    "outcome",
    "decision_id",
    "operator",
    "time",
    "clock_synced",
)


def open_db(path: Path) -> sqlite3.Connection:
    private(path)  # the collection holds token ids: owner-only, whatever the umask
    db = sqlite3.connect(path, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(_SCHEMA)
    return db


def _row(ev: dict[str, Any], raw: bytes) -> tuple[Any, ...]:
    venue = ev.get("venue") or {}
    vals = {**ev, "venue_id": venue.get("id"), "venue_name": venue.get("name")}
    return (*(vals.get(c) for c in _COLS), raw.decode())


CREATE_QUARANTINE = """
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY, topic TEXT NOT NULL, reason TEXT NOT NULL, detail TEXT NOT NULL,
    received_at REAL NOT NULL, payload BLOB NOT NULL
);
"""


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
        return body


def collect(
    broker: MqttSection,
    prefix: str,
    db_path: Path,
    group: str,
    count: int | None,
    idle_timeout: float | None,
    checks: Checks,
    share: bool = True,
    client_id: str | None = None,
) -> int:
    """Subscribe (shared by default); store genuine check-ins, INSERT OR IGNORE by event_id, and quarantine the
    rest with a reason: unsigned, unknown_gate, wrong_gate, wrong_key, bad_signature, malformed."""
    db = open_db(db_path)
    db.executescript(CREATE_QUARANTINE)
    lock = threading.Lock()
    stats = {"received": 0, "stored": 0, "duplicates": 0, "quarantined": 0}
    last = [time.monotonic()]
    done = threading.Event()

    def on_message(c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        last[0] = time.monotonic()
        payload = bytes(msg.payload)
        with lock:
            stats["received"] += 1
            try:
                row = _row(checks.check(msg.topic, payload), payload)
            except (SealError, ValueError, TypeError, AttributeError) as exc:
                reason = exc.reason if isinstance(exc, SealError) else "malformed"
                db.execute(
                    "INSERT INTO quarantine (topic, reason, detail, received_at, payload) VALUES (?, ?, ?, ?, ?)",
                    (msg.topic, reason, str(exc)[:200], time.time(), payload),
                )
                db.commit()
                stats["quarantined"] += 1
                return
            cur = db.execute(f"INSERT OR IGNORE INTO checkins VALUES ({','.join('?' * 17)})", row)
            db.commit()
            stats["stored" if cur.rowcount else "duplicates"] += 1
        if count is not None and stats["stored"] >= count:
            done.set()

    client = connect(broker, client_id=client_id or f"gate-collect-{group}")
    client.on_message = on_message
    topic = f"{prefix}/+/checkin"
    if share:
        topic = f"$share/{group}/{topic}"
    client.on_subscribe = lambda *a: print(f"collect: subscribed to {topic}", file=sys.stderr, flush=True)
    client.subscribe(topic, qos=1)

    def progress(end: str) -> None:
        print(
            f"\rreceived {stats['received']}, stored {stats['stored']} new, duplicates {stats['duplicates']}, "
            f"quarantined {stats['quarantined']}",
            end=end,
            file=sys.stderr,
            flush=True,
        )

    try:
        while not done.wait(1.0):
            progress("")
            if idle_timeout is not None and time.monotonic() - last[0] > idle_timeout:
                break
    except KeyboardInterrupt:
        pass
    finally:
        client.disconnect()
        client.loop_stop()
        progress("\n")
        db.close()
    return 0


def trace(db_path: Path, token: str | None, venue: str | None, t_from: float, t_to: float, as_json: bool) -> int:
    """A token's check-ins (decisions and passages) in time order, or a venue's within a window."""
    if not db_path.exists():
        print(f"trace: no collection database at {db_path}", file=sys.stderr)
        return 1
    if not token and not venue:
        print("trace: give a TOKEN or --venue", file=sys.stderr)
        return 2
    db = open_db(db_path)
    where = ["time >= ?", "time <= ?"]
    params: list[float | str] = [t_from, t_to if t_to != float("inf") else 1e18]
    if token:
        where.append("token = ?")
        params.append(token)
    if venue:
        where.append("venue_id = ?")
        params.append(venue)
    rows = db.execute(
        f"SELECT {', '.join(_COLS)} FROM checkins WHERE {' AND '.join(where)} ORDER BY time", params
    ).fetchall()
    db.close()
    for r in rows:
        rec = dict(zip(_COLS, r, strict=True))
        if as_json:
            print(json.dumps(rec))
        else:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(rec["time"]))
            what = rec["outcome"] if rec["type"] == "passage" else f"{rec['decision']} ({rec['reason']})"
            who = rec["token"] or "-"
            print(f"{when}Z  {rec['venue_id']:<14} gate {rec['gate_id']:<10} {who:<20} {rec['type']:<8} {what}")
    return 0 if rows else 1
