"""Central's commands to one lane: checked, stored, carried out by the lane, and always answered."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from gate.contracts import LaneControl, SetMode, SetTrip, Topics
from gate.core.errors import CodeError
from gate.core.reserve import disk_full
from gate.decide.codes import check_token
from gate.mqtt_link import MqttLink
from gate.sync.envelope import ControlMessage, Rejected, Verifier

log = logging.getLogger(__name__)
Reply = Callable[[dict[str, Any]], None]


class Commands:
    """Runs on the sync worker. A command whose signature holds is answered whatever happens to it: carried
    out (the lane's state), refused by the lane, or refused here with the reason (and, for ordering, both
    clocks and the gate's epoch). `resync` is the worker's own (it owns the pass cache)."""

    def __init__(
        self,
        control: LaneControl,
        link: MqttLink,
        verifier: Verifier,
        topics: Topics,
        gate_id: str,
        category: str,
        resync: Callable[[], None],
    ) -> None:
        self.control = control
        self.link = link
        self.verifier = verifier
        self.topics = topics
        self.gate_id = gate_id
        self.category = category
        self._resync = resync

    def replier(self, msg: ControlMessage) -> Reply:
        """Where and how the answer to `msg` goes: under the gate's own replies/ topics (its ACL lets it write
        only there), never where a message merely asks."""
        reply_to = str(msg.body.get("reply_to") or "")
        replies = f"{self.topics.base}/replies/"
        if not (reply_to.startswith(replies) and len(reply_to) <= 200 and not set(reply_to) & {"+", "#", "\0"}):
            reply_to = f"{self.topics.base}/reply"
        head: dict[str, Any] = {
            "correlation_id": msg.body.get("correlation_id"),
            "gate_id": self.gate_id,
            "command": str(msg.body.get("name")),
        }

        def reply(result: dict[str, Any]) -> None:  # any thread; {"error": …, "reason"?: …} when refused
            if "error" in result:
                body = {"ok": False, **{k: v for k, v in result.items() if k != "error"}, "error": result["error"]}
            else:
                body = {"ok": True, "result": result}
            self.link.publish(reply_to, json.dumps({**head, **body}).encode(), qos=1)

        return reply

    def handle(self, msg: ControlMessage) -> None:
        """A verified command: ordered and stored (or refused, with a reply), then carried out."""
        reply = self.replier(msg)
        try:
            self.verifier.fresh(msg, time.time())
        except Rejected as exc:
            reply({"error": str(exc), "reason": exc.reason, **exc.facts})
            raise
        except OSError as exc:  # the order could not be stored, so the command is not carried out
            self.verifier.rejected["not_stored"] += 1
            why = "the disk is full" if disk_full(exc) else f"{type(exc).__name__}: {exc}"[:160]
            log.error("central: command %s refused: its nonce could not be stored (%s)", msg.body.get("name"), why)
            reply(
                {"error": f"refused: the command could not be stored ({why}); nothing was done", "reason": "not_stored"}
            )
            return
        name, args = str(msg.body.get("name")), msg.body.get("args") or {}
        try:
            self._run(name, args if isinstance(args, dict) else {}, reply)
        except (ValueError, CodeError) as exc:
            reply({"error": str(exc), "reason": "invalid"})

    def _run(self, name: str, args: dict[str, Any], reply: Reply) -> None:
        if name == "open":
            self.control.open(check_token(str(args.get("operator", ""))), reply)
            return
        if (mode := SetMode.command(name, args)) is not None:
            self.control.post(mode)
            reply = applied(mode, reply)
        elif name == "set-trip":
            if self.category != "bus":
                raise ValueError(f"set-trip: this gate's venue is a {self.category}, not a bus")
            self.control.post(SetTrip.parse(args))
        elif name == "resync":
            self._resync()
        elif name != "status":
            raise ValueError(f"unknown command {name!r}")
        self.control.report(reply)  # carried out after the request above: the reply shows its effect


def applied(mode: SetMode, reply: Reply) -> Reply:
    """The lane's state after a mode request: a refusal if the requested mode is not the one asked for (the lane
    could not store it, and only out-of-service applies unstored)."""

    def check(state: dict[str, Any]) -> None:
        if "error" in state or state.get("requested_mode") in (None, mode.mode.value):
            reply(state)
            return
        reply(
            {
                "error": f"lane mode {mode.mode.value} not applied: it could not be stored; "
                f"the lane stays {state.get('requested_mode')}",
                "reason": "not_stored",
            }
        )

    return check
