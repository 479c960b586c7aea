"""Reference central tools (`gate central ...`): keys, codes, signed publishing, commands, collection."""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from gate.central_mqtt import broker_address
from gate.codes import Kind, Status, issue
from gate.control import sign
from gate.errors import GateError
from gate.keys import generate_keypair, load_private_key
from gate.passimport import read_file
from gate.sync import central_topics, rows_digest


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="central_cmd", required=True)
    kg = sub.add_parser("keygen", help="write a new Ed25519 key pair; print its id and paths as JSON")
    kg.add_argument("--out", required=True, help="directory for <key_id>.key and <key_id>.pub")
    iss = sub.add_parser("issue", help="sign a pass code; print its text (and write a QR PNG)")
    iss.add_argument("--key", required=True, help="private key file")
    iss.add_argument("--token", required=True, help="pseudonymous token id (6-32 of A-Z a-z 0-9 _ -)")
    iss.add_argument("--status", required=True, choices=[s.value for s in Status])
    iss.add_argument("--valid-for", type=int, required=True, metavar="SECONDS")
    iss.add_argument("--not-before", type=int, metavar="EPOCH", help="start of validity (default: now)")
    iss.add_argument("--companions", type=int, default=0)
    iss.add_argument("--kind", choices=[k.value for k in Kind], default="phone")
    iss.add_argument("--png", help="also write the QR code as a PNG file")

    def mqtt_cmd(name: str, help: str, signed: bool = True) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("--broker", required=True, type=broker_address, metavar="HOST:PORT")
        sp.add_argument("--prefix", default="gate", help="topic prefix (mqtt.topic_prefix of the gates)")
        if signed:
            sp.add_argument("--key", required=True, help="central private key (its .pub is pinned on the gates)")
        return sp

    ps = mqtt_cmd("publish-snapshot", "sign and publish a full pass snapshot (chunked, retained, resumable)")
    ps.add_argument("file", help="CSV or NDJSON pass-status file")
    ps.add_argument("--version", type=int, required=True, help="snapshot version, higher than the last")
    ps.add_argument("--chunk-size", type=int, default=5000)
    pd = mqtt_cmd("publish-delta", "sign and publish an incremental change on top of a snapshot")
    pd.add_argument("file", nargs="?", help="CSV or NDJSON rows to upsert")
    pd.add_argument("--base-version", type=int, required=True, help="the snapshot version it applies to")
    pd.add_argument("--seq", type=int, required=True, help="1 for the first delta after the snapshot, then +1")
    pd.add_argument("--delete", action="append", default=[], metavar="TOKEN")
    pp = mqtt_cmd("publish-policy", "sign and publish a policy (retained)")
    pp.add_argument("file", help="JSON policy document with a version (see gate.example.toml [policy])")
    pk = mqtt_cmd("publish-keys", "sign and publish the code-signing keys gates trust (retained)")
    pk.add_argument("--version", type=int, required=True)
    pk.add_argument("keys", nargs="+", metavar="PUB[@FROM:TO]", help="public key file, optional validity window")
    cm = mqtt_cmd("command", "send a signed command to a gate and print its reply")
    cm.add_argument("gate_id")
    cm.add_argument("name", choices=["open", "out-of-service", "in-service", "free-pass", "resync", "status"])
    cm.add_argument("--operator", help="staff operator id, for open")
    cm.add_argument("--state", choices=["on", "off"], default="on", help="for free-pass")
    cm.add_argument("--timeout", type=float, default=10.0)
    co = mqtt_cmd("collect", "store every gate's check-ins in SQLite (shared subscription, deduplicated)", False)
    co.add_argument("--db", required=True)
    co.add_argument("--group", default="collectors", help="shared-subscription group")
    co.add_argument("--count", type=int, help="stop after storing this many new check-ins")
    co.add_argument("--idle-timeout", type=float, help="stop after this many seconds with no message")
    tr = sub.add_parser("trace", help="a token's check-ins across gates and time, or a venue's in a window")
    tr.add_argument("token", nargs="?")
    tr.add_argument("--db", required=True)
    tr.add_argument("--venue")
    tr.add_argument("--from", dest="t_from", type=float, default=0.0, metavar="EPOCH")
    tr.add_argument("--to", dest="t_to", type=float, default=float("inf"), metavar="EPOCH")
    tr.add_argument("--json", action="store_true")



def _publish(args: argparse.Namespace, messages: list[tuple[str, bytes, bool]]) -> None:
    from gate.central_mqtt import publisher

    with publisher(args.broker) as pub:
        for topic, payload, retain in messages:
            pub(topic, payload, retain)


def _rows(path: Path) -> list[list[Any]]:
    return [list(r) for r in read_file(path)]


def main(args: argparse.Namespace) -> int:
    cmd = args.central_cmd
    if cmd == "keygen":
        kid, priv, pub = generate_keypair(Path(args.out))
        print(json.dumps({"key_id": kid, "private_key": str(priv), "public_key": str(pub)}))
        return 0
    if cmd == "issue":
        start = args.not_before if args.not_before is not None else int(time.time())
        text = issue(load_private_key(Path(args.key)), args.token, Status(args.status), start, args.valid_for,
                     Kind(args.kind), args.companions)  # fmt: skip
        if args.png:
            import segno

            segno.make(text, error="m", micro=False).save(args.png, scale=8, border=4)
        print(text)
        return 0
    if cmd == "trace":
        from gate.collect import trace

        return trace(Path(args.db), args.token, args.venue, args.t_from, args.t_to, args.json)
    if cmd == "collect":
        from gate.collect import collect

        return collect(args.broker, args.prefix, Path(args.db), args.group, args.count, args.idle_timeout)
    key = load_private_key(Path(args.key))
    topics = central_topics(args.prefix)
    if cmd == "publish-snapshot":
        rows = _rows(Path(args.file))
        chunks = [rows[i : i + args.chunk_size] for i in range(0, len(rows), args.chunk_size)] or [[]]
        chunk_topic = topics["chunk"].rsplit("/", 2)[0]
        msgs = [(f"{chunk_topic}/{args.version}/{i}",
                 sign(key, "chunk", {"version": args.version, "index": i, "rows": c}), True)
                for i, c in enumerate(chunks)]  # fmt: skip
        manifest = {"version": args.version, "count": len(rows), "chunks": len(chunks), "sha256": rows_digest(chunks)}
        msgs.append((topics["manifest"], sign(key, "manifest", manifest), True))
        _publish(args, msgs)
        print(json.dumps(manifest))
        return 0
    if cmd == "publish-delta":
        upserts = _rows(Path(args.file)) if args.file else []
        delta = {"base_version": args.base_version, "seq": args.seq, "upserts": upserts, "deletes": args.delete}
        _publish(args, [(topics["delta"], sign(key, "delta", delta), False)])
        print(json.dumps({"base_version": args.base_version, "seq": args.seq, "upserts": len(upserts),
                          "deletes": len(args.delete)}))  # fmt: skip
        return 0
    if cmd == "publish-policy":
        doc = json.loads(Path(args.file).read_text())
        version = int(doc.pop("version"))
        _publish(args, [(topics["policy"], sign(key, "policy", {"version": version, "policy": doc}), True)])
        print(json.dumps({"policy_version": version}))
        return 0
    if cmd == "publish-keys":
        entries = []
        for spec in args.keys:
            path, _, window = spec.partition("@")
            start, _, end = window.partition(":")
            pem = Path(path).read_text()
            entries.append({"pem": pem, "not_before": float(start or 0), "not_after": float(end or 0)})
        _publish(args, [(topics["keys"], sign(key, "keys", {"version": args.version, "keys": entries}), True)])
        print(json.dumps({"keys_version": args.version, "keys": len(entries)}))
        return 0
    if cmd == "command":
        from gate.central_mqtt import request

        cid = str(uuid.uuid4())
        body: dict[str, Any] = {"name": args.name, "correlation_id": cid, "args": {}}
        if args.name == "open":
            if not args.operator:
                raise GateError("command open needs --operator ID")
            body["args"]["operator"] = args.operator
        if args.name == "free-pass":
            body["args"]["state"] = args.state
        reply = request(args.broker, f"{args.prefix}/{args.gate_id}/command", body, key, args.gate_id, args.prefix,
                        args.timeout)  # fmt: skip
        if reply is None:
            print(f"no reply from gate {args.gate_id} within {args.timeout:.0f}s", file=sys.stderr)
            return 1
        print(json.dumps(reply))
        return 0 if reply.get("ok") else 1
    raise GateError(f"gate central: unknown command {cmd}")
