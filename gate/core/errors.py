"""Exception hierarchy: each error subclasses GateError and the builtin it behaves like."""


class GateError(Exception):
    """Base of every error gate raises on purpose."""


class ConfigError(GateError, ValueError):
    """The configuration file is missing, unreadable or invalid; the message names the key path."""


class CodeError(GateError, ValueError):
    """A scanned payload is not a valid gate code; `reason` is the decision reason it maps to."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ImportRowError(GateError, ValueError):
    """A pass-status import file has bad rows; `problems` lists (line number, message)."""

    def __init__(self, problems: list[tuple[int, str]], hint: str = "") -> None:
        self.problems = problems
        shown = "; ".join(f"line {n}: {m[:120]}" for n, m in problems[:20])
        more = f" (and {len(problems) - 20} more)" if len(problems) > 20 else ""
        tail = f"; {hint}" if hint else ""
        super().__init__(f"{len(problems)} bad row(s), nothing imported: {shown}{more}{tail}")


class DeviceError(GateError, RuntimeError):
    """A GPIO device, camera or serial port could not be opened or driven."""


class OutboxFull(GateError, RuntimeError):
    """The outbox hit its configured bound and its policy is to refuse new events."""


class StateUnusable(GateError, OSError):
    """A state file cannot be used now for a reason outside it (a full disk, permissions, a directory in its
    place): no evidence of damage, so it is never moved aside; the gate says which file and why."""
