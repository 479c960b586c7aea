"""On every (re)connection: what the gate last reported (its retained state at the broker) against its state files."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

SEQ = "safety_seq"  # lane.db's counter of safety changes (gate.lane.state.SEQ; sync may not import the lane)


@dataclass(frozen=True)
class Witness:
    """What the retained state says the gate held: lane.db's safety changes and the pass cache's version."""

    safety_seq: int
    cache: tuple[int, int]  # (version, delta seq)


def witness_of(payload: bytes) -> Witness | None:
    """The witness in a retained state message; None if it is not one (or from a gate that did not say)."""
    try:
        body = json.loads(payload)
        seq = body["safety_seq"]
        version = body["cache_version"]
        delta = body["cache_seq"]
    except (ValueError, KeyError, TypeError):
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (seq, version, delta)):
        return None
    return Witness(seq, (version, delta))


def safety_seq(lane_db: Path) -> int:
    """lane.db's count of safety changes, read beside its owner (read-only; WAL readers do not block)."""
    db = sqlite3.connect(f"file:{lane_db}?mode=ro", uri=True, timeout=5)
    try:
        row = db.execute("SELECT value FROM counters WHERE name = ?", (SEQ,)).fetchone()
    finally:
        db.close()
    return 0 if row is None else int(row[0])


def behind(seen: Witness, lane_seq: int, cache: tuple[int, int]) -> tuple[str | None, str | None]:
    """(what is wrong with lane.db, with passes.db), each None if it holds at least what the gate reported."""
    lane = None
    if seen.safety_seq > lane_seq:
        lane = (
            f"lane.db holds safety change {lane_seq}, but this gate reported {seen.safety_seq} before (its retained "
            "state at the broker): an older state directory was restored; the mode and anti-passback cannot be "
            "proven, so the lane is out of service until an in-service command"
        )
    passes = None
    if seen.cache > cache:
        passes = (
            f"passes.db holds {cache[0]}.{cache[1]}, but this gate reported {seen.cache[0]}.{seen.cache[1]} before: "
            "revocations may be lost; treated as stale until central's next snapshot"
        )
    return lane, passes
