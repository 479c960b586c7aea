"""Reading pass-status files (CSV or NDJSON) into cache rows, reporting bad rows by line number."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from gate.core.errors import CodeError, GateError, ImportRowError
from gate.decide.codes import MAX_COMPANIONS, Status, check_token
from gate.decide.passcache import Row

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


MAX_LINE_BYTES = 64 * 1024  # a pass row is under 200 bytes; a longer line is refused, never read whole
MAX_PROBLEMS = 1000  # past this many bad lines the file is refused without reading on
_BOMS = {b"\xff\xfe\x00\x00": "UTF-32", b"\x00\x00\xfe\xff": "UTF-32", b"\xff\xfe": "UTF-16", b"\xfe\xff": "UTF-16"}


def _lines(fh: BinaryIO, problems: list[tuple[int, str]]) -> Iterator[tuple[int, str]]:
    """Decoded lines with their numbers, read in bounded pieces; UTF-8 only (a UTF-8 BOM is allowed)."""
    head = fh.read(4)
    for bom, name in _BOMS.items():
        if head.startswith(bom):
            problems.append((1, f"the file is {name} (it starts with a {name} byte-order mark): save it as UTF-8"))
            return
    fh.seek(3 if head.startswith(b"\xef\xbb\xbf") else 0)
    n = 0
    while len(problems) < MAX_PROBLEMS:
        raw = fh.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        n += 1
        if len(raw) > MAX_LINE_BYTES:
            problems.append((n, f"longer than {MAX_LINE_BYTES} bytes: not a pass row (is this the right file?)"))
            return
        try:
            yield n, raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            problems.append((n, f"not UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1}): save as UTF-8"))


def _records(fh: BinaryIO, ndjson: bool, problems: list[tuple[int, str]]) -> Iterator[tuple[int, dict[str, Any]]]:
    lines = _lines(fh, problems)
    if ndjson:
        for n, line in lines:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                problems.append((n, f"not JSON ({exc.msg})"))
                continue
            except RecursionError:
                problems.append((n, "not a pass row (nested too deeply)"))
                continue
            if isinstance(rec, dict):
                yield n, rec
            else:
                problems.append((n, "not a JSON object"))
        return
    numbered = iter(lines)
    current = [0]

    def text() -> Iterator[str]:
        for n, line in numbered:
            current[0] = n
            yield line

    reader = csv.reader(text())  # not DictReader: a third of the parsing time at ten million rows
    try:
        fields = next(reader, None)
    except csv.Error as exc:
        problems.append((current[0] or 1, f"not CSV ({exc})"))
        return
    if fields is None:
        return
    if "token" not in fields:
        problems.append((1, f"CSV header must name the columns {','.join(FIELDS)}"))
        return
    width = len(fields)
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            problems.append((current[0], f"not CSV ({exc})"))
            return
        if len(values) > width:
            problems.append((current[0], "too many columns"))
            continue
        if values:  # DictReader skipped empty lines too
            yield current[0], dict(zip(fields, values, strict=False))


def open_rows(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except OSError as exc:
        raise GateError(f"{path}: cannot read: {exc.strerror}") from None


def iter_rows(path: Path, opened: BinaryIO | None = None) -> Iterator[tuple[int, Row]]:
    """(line, row) for every good row, streamed; when the file has bad lines, ImportRowError lists them all
    after the last row (so a caller that stages rows must not apply them before the end). `opened`: the file
    already open (by root, before `sudo gate cache import` acts as the service's user)."""
    ndjson = path.suffix.lower() in (".ndjson", ".jsonl", ".json")
    problems: list[tuple[int, str]] = []
    fh = opened or open_rows(path)
    with fh:
        for n, rec in _records(fh, ndjson, problems):
            try:
                yield n, to_row(rec)
            except ValueError as exc:
                problems.append((n, str(exc)))
    if problems:
        raise ImportRowError(problems)


STRICTNESS = "revoked DESC, status DESC, line DESC"  # a revocation beats red beats yellow beats green


def strictest(a: Row, b: Row) -> Row:
    """Of two rows for one token, the one that admits less (ties: the later, b)."""
    return a if (a[3], a[1]) > (b[3], b[1]) else b


def read_file(path: Path, on_duplicate: str | None = None) -> list[Row]:
    """All rows of a file, in memory (central's tools). Rows that repeat a token identically are merged;
    rows that disagree are refused unless `on_duplicate` says how: `last` or `strictest`."""
    rows: dict[str, Row] = {}
    lines: dict[str, int] = {}
    conflicts: list[tuple[int, str]] = []
    for n, row in iter_rows(path):
        old = rows.get(row[0])
        if old is not None and old != row:
            if on_duplicate is None:
                conflicts.append((n, f"token {row[0]} is also on line {lines[row[0]]} with different values"))
                continue
            row = row if on_duplicate == "last" else strictest(old, row)
        rows[row[0]], lines[row[0]] = row, n
    if conflicts:
        raise ImportRowError(conflicts, hint="use --on-duplicate last|strictest (strictest keeps a revocation)")
    return list(rows.values())
