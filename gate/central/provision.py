"""Provisioning: signing keys and pass codes."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from gate.codes import Kind, Status, issue
from gate.keys import generate_keypair, load_private_key


def main(args: argparse.Namespace) -> int:
    if args.central_cmd == "keygen":
        kid, priv, pub = generate_keypair(Path(args.out))
        print(json.dumps({"key_id": kid, "private_key": str(priv), "public_key": str(pub)}))
        return 0
    start = args.not_before if args.not_before is not None else int(time.time())
    text = issue(
        load_private_key(Path(args.key)),
        args.token,
        Status(args.status),
        start,
        args.valid_for,
        Kind(args.kind),
        args.companions,
    )
    if args.png:
        import segno

        segno.make(text, error="m", micro=False).save(args.png, scale=8, border=4)
    print(text)
    return 0
