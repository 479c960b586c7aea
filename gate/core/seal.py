"""Seals: what a state file must hold at least, kept beside it where damage to the file cannot hide it.

A seal (`<file>.seal`) is a small JSON document with a SHA-256 over its facts, written whole (temp file, fsync,
rename, directory fsync) by the file's writer right after each commit that changes safety state. SQLite drops a
torn write-ahead log silently, and a file can be rolled back or replaced whole; then the file holds less than its
seal says, and the gate knows it cannot prove its state. A seal that is itself damaged proves nothing either.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from gate.core.docstore import AtomicJSONStorage

SUFFIX = ".seal"


class SealDamaged(ValueError):
    """The seal exists but cannot be read or does not match its own checksum."""


def seal_path(path: Path) -> Path:
    return path.with_name(path.name + SUFFIX)


def _digest(facts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(facts, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def write_seal(path: Path, facts: dict[str, Any]) -> None:
    """Seal `path` with `facts` (JSON values). Raises OSError when it cannot be written (a full disk)."""
    AtomicJSONStorage(seal_path(path)).write({"seal": {"facts": facts, "sha256": _digest(facts)}})


def read_seal(path: Path) -> dict[str, Any] | None:
    """The facts sealed for `path`, None when there is no seal; SealDamaged when there is one that is unreadable."""
    target = seal_path(path)
    try:
        doc = AtomicJSONStorage(target).read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise SealDamaged(f"{target.name}: {type(exc).__name__}: {str(exc)[:80]}") from None
    if doc is None:
        if target.exists():
            raise SealDamaged(f"{target.name}: empty")
        return None
    try:
        seal = doc["seal"]
        facts, digest = seal["facts"], seal["sha256"]
    except (KeyError, TypeError):
        raise SealDamaged(f"{target.name}: not a seal") from None
    if not isinstance(facts, dict) or digest != _digest(facts):
        raise SealDamaged(f"{target.name}: its checksum does not match")
    return facts
