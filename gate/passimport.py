"""Reading pass-status files (CSV or NDJSON) into cache rows, reporting bad rows by line number."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gate.codes import MAX_COMPANIONS, Status, check_token
from gate.errors import CodeError, ImportRowError
from gate.passcache import Row

_STATUSES = [s.value for s in Status]
FIELDS = ("token", "status", "valid_until", "revoked", "companions")


def _opt_int(value: Any, name: str, lo: int, hi: int) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{name} must be an integer")
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{name} {value!r} is not an integer") from None
    if not lo <= n <= hi:
        raise ValueError(f"{name} {n} is out of range {lo}..{hi}")
    return n


def _bool(value: Any) -> bool:
    if value in (True, False):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("", "0", "false", "no"):
        return False
    if text in ("1", "true", "yes"):
        return True
    raise ValueError(f"revoked {value!r} is not a boolean")


def check_row(token: Any, status: Any, until: Any, revoked: Any, companions: Any) -> Row:
    """The one validation of a cache row, whatever it was read from; ValueError names the field."""
    if not isinstance(token, str):
        raise ValueError("token is missing")
    try:
        check_token(token)
    except CodeError as exc:
        raise ValueError(str(exc)) from None
    if status not in (0, 1, 2) or isinstance(status, bool):
        raise ValueError(f"status {status!r} is not 0, 1 or 2")
    if revoked not in (0, 1):
        raise ValueError(f"revoked {revoked!r} is not a boolean")
    for name, value, hi in (("valid_until", until, 2**40), ("companions", companions, MAX_COMPANIONS)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= hi):
            raise ValueError(f"{name} {value!r} is not an integer in 0..{hi}")
    return (token, status, until, int(revoked), companions)


def to_row(rec: dict[str, Any]) -> Row:
    """Validate one record; ValueError says which field is wrong."""
    unknown = set(rec) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join(sorted(unknown))}")
    status = rec.get("status")
    if status not in _STATUSES:
        raise ValueError(f"status {status!r} is not one of {', '.join(_STATUSES)}")
    until = _opt_int(rec.get("valid_until"), "valid_until", 0, 2**40)
    companions = _opt_int(rec.get("companions"), "companions", 0, MAX_COMPANIONS)
    return check_row(
        rec.get("token"), _STATUSES.index(status), until, int(_bool(rec.get("revoked", False))), companions
    )


def _records(text: str, ndjson: bool) -> Iterator[tuple[int, dict[str, Any] | str]]:
    if ndjson:
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                yield n, f"not JSON ({exc.msg})"
                continue
            yield n, rec if isinstance(rec, dict) else "not a JSON object"
        return
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "token" not in reader.fieldnames:
        yield 1, f"CSV header must name the columns {','.join(FIELDS)}"
        return
    for rec in reader:
        if None in rec:
            yield reader.line_num, "too many columns"
            continue
        yield reader.line_num, dict(rec)


def read_rows(text: str, ndjson: bool) -> tuple[list[Row], list[tuple[int, str]]]:
    rows, problems = [], []
    for n, rec in _records(text, ndjson):
        if isinstance(rec, str):
            problems.append((n, rec))
            continue
        try:
            rows.append(to_row(rec))
        except ValueError as exc:
            problems.append((n, str(exc)))
    return rows, problems


def read_file(path: Path) -> list[Row]:
    """All rows of a .csv or .ndjson/.jsonl file; ImportRowError lists every bad line."""
    text = path.read_text(encoding="utf-8")
    ndjson = path.suffix.lower() in (".ndjson", ".jsonl", ".json")
    rows, problems = read_rows(text, ndjson)
    if problems:
        raise ImportRowError(problems)
    return rows
