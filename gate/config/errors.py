"""Config validation errors as one short line per problem: key path, what is wrong, never a secret."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

SECRET_KEYS = ("password", "secret", "key_file")
SHOWN_CHARS = 40


def shown(value: Any, path: str) -> str:
    """How a bad value appears in a message: never a secret, never more than SHOWN_CHARS characters."""
    if any(k in path for k in SECRET_KEYS):
        return "(value hidden)"
    text = repr(value)
    if len(text) > SHOWN_CHARS:
        text = f"{text[:SHOWN_CHARS]}… ({len(text)} characters)"
    return f"(got {text})"


def describe(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required value is missing"
        elif "input" in err and not isinstance(err["input"], dict):
            msg += f" {shown(err['input'], path)}"
        lines.append(f"{source}: {path}: {msg}")
    return "\n".join(lines[:20]) + (f"\n{source}: … and {len(lines) - 20} more" if len(lines) > 20 else "")
