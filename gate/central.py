"""Reference central tools (`gate central ...`): signing keys and pass codes."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from gate.codes import Kind, Status, issue
from gate.keys import generate_keypair, load_private_key


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


def main(args: argparse.Namespace) -> int:
    if args.central_cmd == "keygen":
        kid, priv, pub = generate_keypair(Path(args.out))
        print(json.dumps({"key_id": kid, "private_key": str(priv), "public_key": str(pub)}))
        return 0
    if args.central_cmd == "issue":
        start = args.not_before if args.not_before is not None else int(time.time())
        text = issue(load_private_key(Path(args.key)), args.token, Status(args.status), start, args.valid_for,
                     Kind(args.kind), args.companions)  # fmt: skip
        if args.png:
            import segno

            segno.make(text, error="m", micro=False).save(args.png, scale=8, border=4)
        print(text)
        return 0
    raise SystemExit(f"gate central: unknown command {args.central_cmd}")
