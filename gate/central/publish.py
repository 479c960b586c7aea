"""Publishing to the gates: signed snapshots, deltas, policy, trust keys and commands."""

from __future__ import annotations

import argparse
import base64
import json
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gate.central.deltafeed import follow
from gate.central.deltaline import Delta
from gate.central.mqtt import publisher, request, retained
from gate.core.errors import GateError
from gate.decide.keys import load_private_key
from gate.decide.passimport import read_file
from gate.sync.envelope import sign
from gate.sync.passsync import rows_digest
from gate.sync.worker import central_topics


def _publish(args: argparse.Namespace, messages: list[tuple[str, bytes, bool]]) -> None:
    with publisher(args.broker) as pub:
        for topic, payload, retain in messages:
            pub(topic, payload, retain)


def _previous_manifest(broker: Any, topic: str) -> tuple[int, int] | None:
    """(version, chunks) of the snapshot the broker retains now, read before a new one replaces it."""
    payload = retained(broker, topic)
    try:
        body = json.loads(json.loads(payload)["msg"]) if payload else None
        return None if body is None else (int(body["version"]), int(body["chunks"]))
    except (ValueError, KeyError, TypeError):
        return None  # not ours to read: nothing to clear


class BackwardsError(GateError):
    """A version at or below the one the broker holds: the gates (and any gate that joins later) would split."""


_publishing = threading.Lock()  # one console's publishers take turns between the version check and the publish


def signed_body(payload: bytes | None, key: Ed25519PrivateKey) -> dict[str, Any] | None:
    """The body of an envelope central's key signed (as the gates check it); None for anything else."""
    try:
        env = json.loads(payload) if payload else None
        if env is None:
            return None
        key.public_key().verify(base64.b64decode(env["sig"], validate=True), env["msg"].encode())
        body = json.loads(env["msg"])
        return body if isinstance(body, dict) else None
    except (ValueError, KeyError, TypeError, AttributeError, InvalidSignature):
        return None


def in_force(broker: Any, topic: str, key: Ed25519PrivateKey) -> int | None:
    """The version of the message central's key signed that the broker retains on `topic` (None if none): what
    a gate joining now would take. A message another key signed is no gate's version, so it does not count."""
    body = signed_body(retained(broker, topic), key)
    try:
        return None if body is None else int(body["version"])
    except (KeyError, TypeError, ValueError):
        return None


def forward(what: str, version: int, current: int | None) -> None:
    """Refuse `version` unless it is above `current`: versions only move forward."""
    if current is not None and version <= current:
        raise BackwardsError(
            f"{what}: version {version} is not above the one in force ({current}); versions only move forward"
        )


def _rows(path: Path) -> list[list[Any]]:
    return [list(r) for r in read_file(path)]


def publish_policy(
    broker: Any, prefix: str, key: Ed25519PrivateKey, doc: dict[str, Any], shown: int | None = None
) -> int:
    """Sign a policy document (with its `version`) and publish it retained; the CLI and the console both call it.
    Refused if its version is not above the one the broker holds, or (`shown`, the console's confirmation) if
    the version in force is no longer the one the person was shown."""
    doc = dict(doc)
    version = int(doc.pop("version"))
    topic = central_topics(prefix)["policy"]
    with _publishing:
        current = in_force(broker, topic, key)
        if shown is not None and (current or 0) != shown:
            raise BackwardsError(
                f"publish-policy: the policy in force is now version {current or 0}, not {shown} as this page "
                "showed: review the measures again"
            )
        forward("publish-policy", version, current)
        with publisher(broker) as pub:
            pub(topic, sign(key, "policy", {"version": version, "policy": doc}), True)
    return version


def send_command(
    broker: Any,
    prefix: str,
    key: Ed25519PrivateKey,
    gate_id: str,
    name: str,
    extra: dict[str, Any],
    timeout: float,
    epoch: int | None = None,
) -> dict[str, Any] | None:
    """A signed command to one gate; its reply, or None if none came within `timeout`. `epoch` (signed) starts
    a new order of commands at the gate when it is above the gate's (docs/operations.md, central's clock)."""
    body: dict[str, Any] = {"name": name, "correlation_id": str(uuid.uuid4()), "args": dict(extra)}
    if epoch is not None:
        body["epoch"] = epoch
    return request(broker, f"{prefix}/{gate_id}/command", body, key, gate_id, prefix, timeout)


def main(args: argparse.Namespace) -> int:
    cmd = args.central_cmd
    key = load_private_key(Path(args.key))
    topics = central_topics(args.prefix)
    if cmd == "publish-snapshot":
        rows = sorted(_rows(Path(args.file)), key=lambda r: str(r[0]))  # sorted: gates apply it as a diff
        chunks = [rows[i : i + args.chunk_size] for i in range(0, len(rows), args.chunk_size)] or [[]]
        chunk_topic = topics["chunk"].rsplit("/", 2)[0]
        msgs = [
            (
                f"{chunk_topic}/{args.version}/{i}",
                sign(key, "chunk", {"version": args.version, "index": i, "rows": c}),
                True,
            )
            for i, c in enumerate(chunks)
        ]
        manifest = {"version": args.version, "count": len(rows), "chunks": len(chunks), "sha256": rows_digest(chunks)}
        msgs.append((topics["manifest"], sign(key, "manifest", manifest), True))
        old = _previous_manifest(args.broker, topics["manifest"])
        forward("publish-snapshot", args.version, in_force(args.broker, topics["manifest"], key))
        if old is not None and old[0] != args.version:  # the last snapshot's chunks stop being retained
            msgs += [(f"{chunk_topic}/{old[0]}/{i}", b"", True) for i in range(old[1])]
        _publish(args, msgs)
        print(json.dumps({**manifest, "cleared_chunks_of_version": old[0] if old else None}))
        return 0
    if cmd == "publish-delta":
        base = in_force(args.broker, topics["manifest"], key)
        if args.follow:  # deltas from stdin on one kept connection (gate/central/deltafeed.py)
            return follow(args.broker, topics["delta"], key, base, sys.stdin.buffer, sys.stdout, args.ack_timeout)
        if base is not None and args.base_version != base:  # a delta on another snapshot: gates would resync
            msg = f"publish-delta: base version {args.base_version} is not the snapshot in force ({base})"
            raise BackwardsError(msg)
        upserts = tuple(read_file(Path(args.file))) if args.file else ()
        delta = Delta(args.base_version, args.seq, upserts, tuple(args.delete))
        _publish(args, [(topics["delta"], sign(key, "delta", delta.body()), False)])
        print(delta.summary())
        return 0
    if cmd == "publish-policy":
        version = publish_policy(args.broker, args.prefix, key, json.loads(Path(args.file).read_text()))
        print(json.dumps({"policy_version": version}))
        return 0
    if cmd == "publish-keys":
        entries = []
        for spec in args.keys:
            path, _, window = spec.partition("@")
            start, _, end = window.partition(":")
            pem = Path(path).read_text()
            entries.append({"pem": pem, "not_before": float(start or 0), "not_after": float(end or 0)})
        forward("publish-keys", args.version, in_force(args.broker, topics["keys"], key))
        _publish(args, [(topics["keys"], sign(key, "keys", {"version": args.version, "keys": entries}), True)])
        print(json.dumps({"keys_version": args.version, "keys": len(entries)}))
        return 0
    if cmd == "command":
        extra: dict[str, Any] = {}
        if args.name == "open":
            if not args.operator:
                raise GateError("command open needs --operator ID")
            extra["operator"] = args.operator
        if args.name == "free-pass":
            extra["state"] = args.state
        if args.name == "set-trip":
            extra |= {"route": args.route, "run": args.run}
        return command(args, key, extra)
    raise GateError(f"gate central: unknown command {cmd}")


def command(args: argparse.Namespace, key: Ed25519PrivateKey, extra: dict[str, Any]) -> int:
    """Send, print the reply; a refusal's reason on stderr. `--new-epoch`: a command the gate refuses as out of
    order (central's clock was ahead once) is signed again in the epoch after the gate's, which resets its order."""

    def send(epoch: int | None) -> dict[str, Any] | None:
        return send_command(args.broker, args.prefix, key, args.gate_id, args.name, extra, args.timeout, epoch)

    reply = send(args.epoch)
    if reply is not None and args.new_epoch and reply.get("reason") in ("out_of_order", "old_epoch"):
        epoch = max(int(reply.get("epoch") or 0) + 1, args.epoch or 0)
        print(f"gate {args.gate_id}: {reply.get('reason')}; sending again in epoch {epoch}", file=sys.stderr)
        reply = send(epoch)
    if reply is None:
        print(f"no reply from gate {args.gate_id} within {args.timeout:.0f}s", file=sys.stderr)
        return 1
    if not reply.get("ok"):
        print(
            f"gate {args.gate_id} refused {args.name}: {reply.get('reason', 'error')}: {reply.get('error')}",
            file=sys.stderr,
        )
    print(json.dumps(reply))
    return 0 if reply.get("ok") else 1
