"""Lane commands sent from the console, in central's database: any console process behind one proxy shows any
command's status (sent, answered with the reply, or failed with why), whichever process sent it."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# A command's id (the status page's URL), its gate, name, who sent it and when; then its state and outcome.
COMMANDS_SQL = (
    "CREATE TABLE IF NOT EXISTS console_commands "
    "(id TEXT PRIMARY KEY, gate_id TEXT NOT NULL, name TEXT NOT NULL, sent_by TEXT NOT NULL, "
    "sent_at DOUBLE PRECISION NOT NULL, state TEXT NOT NULL, reply TEXT, error TEXT, done_at DOUBLE PRECISION)"
)
KEEP_DAYS = 30  # a command's status page lives this long; the audit log keeps that it was sent
STATES = ("sent", "answered", "failed")


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

    @property
    def state(self) -> str:
        return "sent" if not self.done else "failed" if self.error else "answered"


class CommandLog:
    """The commands' queries; `_run` is the store's (its driver's placeholders)."""

    def _run(self, sql: str, params: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    def command_sent(self, sent: Sent) -> None:
        """A command about to go on the wire (and the log kept to KEEP_DAYS)."""
        self._run("DELETE FROM console_commands WHERE sent_at < ?", (time.time() - KEEP_DAYS * 86400,))
        self._run(
            "INSERT INTO console_commands (id, gate_id, name, sent_by, sent_at, state) VALUES (?, ?, ?, ?, ?, ?)",
            (sent.id, sent.gate_id, sent.name, sent.by, sent.at, "sent"),
        )

    def command_done(self, sent: Sent) -> None:
        """Its outcome: the gate's reply, or why there is none."""
        reply = None if sent.reply is None else json.dumps(sent.reply, sort_keys=True)
        self._run(
            "UPDATE console_commands SET state = ?, reply = ?, error = ?, done_at = ? WHERE id = ?",
            (sent.state, reply, sent.error, time.time(), sent.id),
        )

    def command_status(self, cid: str) -> Sent | None:
        row = self._run(
            "SELECT id, gate_id, name, sent_by, sent_at, state, reply, error FROM console_commands WHERE id = ?",
            (cid,),
        ).fetchone()
        if row is None:
            return None
        reply = json.loads(row[6]) if row[6] else None
        return Sent(row[0], row[1], row[2], row[3], row[4], row[5] != "sent", reply, row[7])
