"""`gate central provision`: least-privilege broker identities for gates and central programs (mosquitto)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gate.central import brokertls
from gate.central.brokerconf import Settings, broker_folder, conf_text, private_folder, write_file
from gate.core.errors import GateError
from gate.decide.keys import generate_keypair

ROLES = ("gate", "collector", "publisher", "homeassistant")
# Names that would collide with central's topics (<p>/central/...), Home Assistant's, or collectors' default
# client ids: no identity may take them.
RESERVED = ("central", "homeassistant", "replies", "command", "collectors")
RESERVED_PREFIXES = ("$", "gate-collect-")
GATE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # gate.toml's [gate] id


def mosquitto_hash(password: str) -> str:
    """mosquitto 2's password-file hash: PBKDF2-SHA512, 101 rounds, 12-byte salt (`$7$`), as mosquitto_passwd."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101, 64)
    return f"$7$101${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def acl(name: str, role: str, prefix: str) -> list[str]:
    """What each identity may do: a gate writes only its own topics and reads only central's and its commands;
    a collector only reads what gates report; only the publisher writes central's topics and commands; Home
    Assistant only reads the gates' state and discovery."""
    p = prefix
    if role == "gate":
        own = ("availability", "state", "checkin", "alarm", "telemetry", "resync", "reply", "replies/#")
        return [
            *(f"topic write {p}/{name}/{t}" for t in own),
            f"topic read {p}/central/policy",
            f"topic read {p}/central/keys",
            f"topic read {p}/central/passes/#",
            f"topic read {p}/{name}/command",
            f"topic read {p}/{name}/state",  # its own, on (re)connection
            f"topic write homeassistant/+/gate_{name}/#",  # its own Home Assistant device only
        ]
    if role == "collector":  # and its probe: `collect` proves it is a collector before it takes a share
        return [
            *(f"topic read {p}/+/{t}" for t in ("checkin", "alarm", "state", "telemetry", "availability")),
            f"topic write {p}/collectors/{name}/probe",
        ]
    if role == "homeassistant":  # reads what its dashboards show; writes only its own birth message
        return [
            *(f"topic read {p}/+/{t}" for t in ("state", "availability", "telemetry")),
            "topic read homeassistant/#",
            "topic write homeassistant/status",
            "topic write homeassistant/gate/+/requested_mode/set",  # its select, for `ha-bridge`
        ]
    return [
        f"topic write {p}/central/#",
        f"topic write {p}/+/command",
        f"topic read {p}/+/replies/#",
        f"topic read {p}/+/reply",
        f"topic read {p}/+/resync",
        f"topic read {p}/+/state",
        f"topic read {p}/+/availability",  # and as `gate central ha-bridge`, Home Assistant's select:
        "topic read homeassistant/gate/+/requested_mode/set",
        "topic write homeassistant/gate/+/requested_mode/state",
    ]


@dataclass(frozen=True)
class Provisioned:
    name: str
    role: str
    password_file: Path
    device_key: Path | None  # a gate's Ed25519 key that signs its check-ins and alarms
    client_cert: Path | None = None  # with client_cert.with_name("client.key")


def check_name(name: str, role: str) -> None:
    if not name or any(c in name for c in "/+#:\0 ") or len(name) > 64:
        raise GateError(f"provision: {name!r} cannot be a broker user name (no / + # : or spaces)")
    if name.lower() in RESERVED or name.lower().startswith(RESERVED_PREFIXES):
        raise GateError(f"provision: {name!r} is reserved (it would collide with central's or a collector's names)")
    if role == "gate" and not GATE_ID.match(name):
        raise GateError(f"provision: {name!r} is not a gate id (1-64 of A-Z a-z 0-9 _ -)")


class BrokerDir:
    """The broker's identities and configuration, kept in one folder: `identities.json` (the registry),
    `passwd` and `acl` (both rewritten whole from it), `mosquitto.conf` with its own listeners, `broker.json`
    (ports and server names), `tls/` (a CA, the server certificate), each identity's secrets under
    `credentials/<name>/` (mode 0600), and gates' public device keys under `devices/`. What the broker reads
    is group `mosquitto`, mode 0640, where that group exists; the rest is root's alone."""

    def __init__(self, path: Path, prefix: str = "gate") -> None:
        self.path, self.prefix = path.absolute(), prefix  # the config names its files by absolute paths
        broker_folder(self.path)
        self.registry = path / "identities.json"
        self.settings_file = path / "broker.json"

    def identities(self) -> dict[str, dict[str, str]]:
        if not self.registry.exists():
            return {}
        data = json.loads(self.registry.read_text())
        return {str(k): dict(v) for k, v in data.items()}

    def settings(self) -> Settings:
        return Settings.load(self.settings_file)

    def configure(self, **changes: Any) -> Settings:
        """Change the listeners (plain_port, tls_port, server_names, require_client_certs: None keeps one);
        makes the CA once and the server certificate whenever its names change, then rewrites the config."""
        old = self.settings()
        s = old.updated(**changes)
        write_file(self.settings_file, s.text())
        tls = self.path / "tls"
        broker_folder(tls)
        if not (tls / "ca.crt").exists():
            ca_key, ca_crt = brokertls.make_ca()
            write_file(tls / "ca.key", ca_key)  # root's alone: it signs every certificate
            write_file(tls / "ca.crt", ca_crt, 0o644)
        if not (tls / "server.crt").exists() or sorted(brokertls.server_names_of(tls / "server.crt")) != sorted(
            s.server_names
        ):
            key, crt = brokertls.server_cert(
                (tls / "ca.key").read_bytes(), (tls / "ca.crt").read_bytes(), s.server_names
            )
            write_file(tls / "server.key", key, broker_reads=True)
            write_file(tls / "server.crt", crt, 0o644)
        self._write_broker_files(self.identities())
        return s

    def provision(self, name: str, role: str, client_cert: bool = False) -> Provisioned:
        if role not in ROLES:
            raise GateError(f"provision: role must be one of {', '.join(ROLES)}")
        check_name(name, role)
        ids = self.identities()
        if name in ids and ids[name]["role"] != role:
            raise GateError(f"provision: {name} is already a {ids[name]['role']}")
        if not (self.path / "tls" / "ca.crt").exists():
            self.configure()
        creds = self.path / "credentials" / name
        for d in (creds.parent, creds):
            private_folder(d)
        secret = secrets.token_urlsafe(24)
        pw_file = creds / "mqtt-password"
        write_file(pw_file, secret + "\n")
        device_key = None
        if role == "gate":
            _, priv, pub = generate_keypair(creds)
            device_key = creds / "device.key"
            os.replace(priv, device_key)
            devices = self.path / "devices"
            devices.mkdir(exist_ok=True)
            os.replace(pub, devices / f"{name}.pub")
        cert = None
        if client_cert:
            tls = self.path / "tls"
            key, crt = brokertls.client_cert((tls / "ca.key").read_bytes(), (tls / "ca.crt").read_bytes(), name)
            write_file(creds / "client.key", key)
            cert = creds / "client.crt"
            write_file(cert, crt, 0o644)
        ids[name] = {"role": role, "hash": mosquitto_hash(secret)}
        write_file(self.registry, json.dumps(ids, indent=1, sort_keys=True))
        self._write_broker_files(ids)
        return Provisioned(name, role, pw_file, device_key, cert)

    def _write_broker_files(self, ids: dict[str, dict[str, str]]) -> None:
        passwd = "".join(f"{n}:{v['hash']}\n" for n, v in sorted(ids.items()))
        write_file(self.path / "passwd", passwd, broker_reads=True)
        lines = ["# written by `gate central provision`: edit identities with it, not here"]
        for n, v in sorted(ids.items()):
            lines += ["", f"user {n}", *acl(n, v["role"], self.prefix)]
        write_file(self.path / "acl", "\n".join(lines) + "\n", broker_reads=True)
        write_file(self.path / "mosquitto.conf", conf_text(self.path, self.settings()), broker_reads=True)
