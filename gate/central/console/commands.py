"""Lane commands in flight: each sent on a worker with a timeout, never under the store's lock, so a gate that
does not answer holds up only the page that asked it. Each command's status is in central's database (written
before it goes on the wire and when its outcome is known), so whichever console process serves its page shows
"sent, waiting for the gate" and then the reply."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from gate.central.commandlog import Sent
from gate.core.errors import GateError

# No outcome this long after sending: the console process that sent it stopped before recording one.
LOST_S = 120.0
Send = Callable[[str, str], dict[str, Any] | None]  # (gate_id, name) -> the gate's reply or None
Audit = Callable[[str, str, str, bool], None]  # (operator, gate_id, name, answered)


@dataclass(frozen=True)
class Log:
    """Where commands' statuses are written (the store, under the console's lock)."""

    sent: Callable[[Sent], None]
    done: Callable[[Sent], None]


def as_of(sent: Sent | None, now: float) -> Sent | None:
    """A command's status as its page shows it: one still "sent" long after its timeout was lost with the
    console process that sent it, and says so rather than waiting for ever."""
    if sent is not None and not sent.done and now - sent.at > LOST_S:
        why = "no outcome was recorded: the console that sent it stopped (the fleet page shows the gate's mode)"
        return replace(sent, done=True, error=why)
    return sent


class Commands:
    """At most `workers` commands on the wire at once; the rest queue (each bounded by the link's timeout)."""

    def __init__(self, send: Send, audit: Audit, log: Log, workers: int = 8) -> None:
        self._send = send
        self._audit = audit
        self._log = log
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="console-command")

    def send(self, gate_id: str, name: str, by: str) -> str:
        """Record the command (its page exists from now on, in every console process), then send it."""
        sent = Sent(secrets.token_urlsafe(12), gate_id, name, by, time.time())
        self._log.sent(sent)
        self._pool.submit(self._run, sent)
        return sent.id

    def _run(self, sent: Sent) -> None:
        reply, error = None, None
        try:
            reply = self._send(sent.gate_id, sent.name)
            if reply is None:
                error = "no reply from the gate within 10 s: it may be offline (the fleet page shows when it was seen)"
        except (GateError, OSError, RuntimeError) as exc:
            error = f"the broker could not be reached: {str(exc)[:200]}"
        try:
            self._audit(sent.by, sent.gate_id, sent.name, reply is not None)
        finally:
            self._log.done(replace(sent, done=True, reply=reply, error=error))

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
