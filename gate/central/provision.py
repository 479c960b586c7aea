"""Provisioning: signing keys, pass codes and broker identities."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from gate.central.broker import BrokerDir
from gate.decide.codes import Kind, Status, issue
from gate.decide.keys import generate_keypair, load_private_key


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


def provision(broker_dir: Path, name: str, role: str, prefix: str) -> int:
    p = BrokerDir(broker_dir, prefix).provision(name, role)
    print(f"# {role} {name}: broker identity written to {broker_dir} (restart or HUP mosquitto to load it)")
    if role == "gate":
        print(f"# copy {p.password_file} to /etc/gate/credentials/mqtt-password (mode 0600, owner root)")
        print(
            f"# and {p.device_key} to /etc/gate/credentials/device.key; central verifies with "
            f"{broker_dir / 'devices' / (name + '.pub')}"
        )
        print(
            f'[gate]\nid = "{name}"\n[mqtt]\nusername = "{name}"\npassword_file = "mqtt-password"\n'
            'protocol = "5"  # so that a refused publish is seen (dead letters), not lost'
        )
    else:
        print(f"# the password is in {p.password_file} (mode 0600)")
        print(f'username = "{name}"\npassword_file = "{p.password_file}"')
    return 0
