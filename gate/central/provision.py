"""Provisioning: signing keys, pass codes and broker identities."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from gate.central.broker import BrokerDir
from gate.central.rabbitdefs import rabbit_toml, write_definitions
from gate.core.errors import GateError
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


def provision(args: argparse.Namespace) -> int:
    bdir = BrokerDir(Path(args.broker_dir), args.prefix)
    listening = {
        "plain_port": args.port,
        "tls_port": args.tls_port,
        "server_names": args.server_name or None,
        "require_client_certs": args.require_client_certs or None,
    }
    if any(v is not None for v in listening.values()) or not (bdir.path / "broker.json").exists():
        bdir.configure(**listening)
    name = args.name
    role = args.role
    d = bdir.path
    if args.gate_config and role != "gate":
        raise GateError("provision: --gate-config is for --role gate")
    p = bdir.provision(name, role, client_cert=args.client_cert or bdir.settings().require_client_certs)
    s = bdir.settings()
    rabbit = getattr(args, "broker", "mosquitto") == "rabbitmq"
    if rabbit:
        defs = write_definitions(d, {n: v["role"] for n, v in bdir.identities().items()}, args.prefix)
        print(f"# {role} {name}: broker identity written to {d}; load it: rabbitmqctl import_definitions {defs}")
    else:
        print(f"# {role} {name}: broker identity written to {d}; reload the broker: systemctl reload mosquitto")
    if role == "gate":
        print(f"# copy {p.password_file} to /etc/gate/credentials/mqtt-password (mode 0600, owner root),")
        print(f"# {p.device_key} to /etc/gate/credentials/device.key and {d / 'tls' / 'ca.crt'} to {GATE_CA}")
        if p.client_cert is not None:
            print(f"# and {p.client_cert} to {GATE_CERT}, {p.client_cert.with_name('client.key')} to {GATE_KEY}")
        text = gate_toml(name, args.prefix, s.server_names[0], s.tls_port, args.venue, p.client_cert is not None)
        if rabbit:  # every node of the cluster; RabbitMQ 3 speaks MQTT 3.1.1 only
            text = rabbit_toml(text, s.server_names, s.tls_port)
        if args.gate_config:
            Path(args.gate_config).write_text(text)
            print(f"# a complete gate.toml for it: {args.gate_config} (edit [venue] and [gpio] for the lane)")
        else:
            print(text, end="")
    else:
        print(f"# the password is in {p.password_file} (mode 0600)")
        print(
            f'[mqtt]\nhost = "127.0.0.1"\nport = {s.plain_port}\nusername = "{name}"\n'
            f'password_file = "{p.password_file}"\nprotocol = "{"3.1.1" if rabbit else "5"}"'
        )
    return 0


GATE_CA = "/etc/gate/broker-ca.crt"
GATE_CERT = "/etc/gate/mqtt-client.crt"
GATE_KEY = "mqtt-client.key"  # in /etc/gate/credentials, handed to the service by LoadCredential=


def gate_toml(name: str, prefix: str, host: str, port: int, venue: str | None, client_cert: bool) -> str:
    """A complete gate.toml for a provisioned gate: `gate check-config` accepts it as written."""
    cert = f'cert_file = "{GATE_CERT}"\nkey_file = "{GATE_KEY}"\n' if client_cert else ""
    return (
        f"# gate.toml for {name}, written by `gate central provision`; every key: /opt/gate/gate.example.toml\n"
        f'[gate]\nid = "{name}"\ndevice_key = "device.key"  # in /etc/gate/credentials (LoadCredential=)\n'
        "\n"
        f'[venue]\nid = "{venue or name}"\ncategory = "rail_station"\n'
        "\n"
        "[gpio.relay]\npin = 17\n"
        "\n"
        f'[mqtt]\nhost = "{host}"\nport = {port}\ntopic_prefix = "{prefix}"\nusername = "{name}"\n'
        'password_file = "mqtt-password"\n'
        'protocol = "5"  # so that a refused publish is seen (dead letters), not lost\n'
        "\n"
        f'[mqtt.tls]\nca_file = "{GATE_CA}"\n{cert}'
    )
