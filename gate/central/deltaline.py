"""One line of `publish-delta --follow`'s feed: a delta read and checked, and the order deltas must keep."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from gate.core.errors import CodeError
from gate.decide.codes import check_token
from gate.decide.passcache import Row
from gate.decide.passimport import MAX_LINE_BYTES, to_row

FIELDS = ("base_version", "seq", "upserts", "deletes")
MAX_VERSION = 2**63 - 1  # what the gates' SQLite stores


@dataclass(frozen=True)
class Delta:
    base_version: int
    seq: int
    upserts: tuple[Row, ...]
    deletes: tuple[str, ...]

    def body(self) -> dict[str, Any]:
        """What is signed, by one-shot publish-delta and the feed alike."""
        upserts = [list(r) for r in self.upserts]
        return {"base_version": self.base_version, "seq": self.seq, "upserts": upserts, "deletes": list(self.deletes)}

    def summary(self) -> str:
        """The line printed once the broker acknowledged it (one-shot and feed alike)."""
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
