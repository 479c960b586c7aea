"""Lane commands in flight: each sent on a worker with a timeout, never under the store's lock, so a gate that
does not answer holds up only the page that asked it; the page then shows the reply when it comes."""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from gate.core.errors import GateError

KEEP = 500  # the last commands' outcomes kept for their pages; older ones say "no longer known"
Send = Callable[[str, str], dict[str, Any] | None]  # (gate_id, name) -> the gate's reply or None
Audit = Callable[[str, str, str, bool], None]  # (operator, gate_id, name, answered)


@dataclass(frozen=True)
class Sent:
    """One command as its page shows it: waiting, answered (the reply), or not (why)."""

    id: str
    gate_id: str
    name: str
    by: str
    at: float
    done: bool = False
    reply: dict[str, Any] | None = None
    error: str | None = None


class Commands:
    """At most `workers` commands on the wire at once; the rest queue (each bounded by the link's timeout)."""

    def __init__(self, send: Send, audit: Audit, workers: int = 8) -> None:
        self._send, self._audit = send, audit
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="console-command")
        self._sent: OrderedDict[str, Sent] = OrderedDict()
        self._lock = threading.Lock()

    def send(self, gate_id: str, name: str, by: str) -> str:
        sent = Sent(secrets.token_urlsafe(12), gate_id, name, by, time.time())
        with self._lock:
            self._sent[sent.id] = sent
            while len(self._sent) > KEEP:
                self._sent.popitem(last=False)
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
            with self._lock:
                if sent.id in self._sent:
                    self._sent[sent.id] = replace(sent, done=True, reply=reply, error=error)

    def get(self, sid: str) -> Sent | None:
        with self._lock:
            return self._sent.get(sid)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
