"""`gate central provision`: least-privilege broker identities for gates and central programs (mosquitto)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from gate.core.errors import GateError
from gate.decide.keys import generate_keypair

ROLES = ("gate", "collector", "publisher")


def mosquitto_hash(password: str) -> str:
    """mosquitto 2's password-file hash: PBKDF2-SHA512, 101 rounds, 12-byte salt (`$7$`), as mosquitto_passwd."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101, 64)
    return f"$7$101${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def acl(name: str, role: str, prefix: str) -> list[str]:
    """What each identity may do: a gate writes only its own topics and reads only central's and its commands;
    a collector only reads what gates report; only the publisher writes central's topics and commands."""
    p = prefix
    if role == "gate":
        own = ("availability", "state", "checkin", "alarm", "telemetry", "resync", "reply", "replies/#")
        return [*(f"topic write {p}/{name}/{t}" for t in own),
                f"topic read {p}/central/policy", f"topic read {p}/central/keys", f"topic read {p}/central/passes/#",
                f"topic read {p}/{name}/command",
                f"topic write homeassistant/+/gate_{name}/#"]  # its own Home Assistant device only  # fmt: skip
    if role == "collector":
        return [f"topic read {p}/+/{t}" for t in ("checkin", "alarm", "state", "telemetry", "availability")]
    return [f"topic write {p}/central/#", f"topic write {p}/+/command", f"topic read {p}/+/replies/#",
            f"topic read {p}/+/reply", f"topic read {p}/+/resync", f"topic read {p}/+/state",
            f"topic read {p}/+/availability"]  # fmt: skip


@dataclass(frozen=True)
class Provisioned:
    name: str
    role: str
    password_file: Path
    device_key: Path | None  # a gate's Ed25519 key that signs its check-ins and alarms


class BrokerDir:
    """The broker's identities, kept in one folder: `identities.json` (the registry), `passwd` and `acl`
    (both rewritten whole from it), `mosquitto.conf` that includes them, and each identity's secrets
    under `credentials/<name>/` (mode 0600), with gates' public device keys under `devices/`."""

    def __init__(self, path: Path, prefix: str = "gate") -> None:
        self.path, self.prefix = path, prefix
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)
        self.registry = path / "identities.json"

    def identities(self) -> dict[str, dict[str, str]]:
        if not self.registry.exists():
            return {}
        data = json.loads(self.registry.read_text())
        return {str(k): dict(v) for k, v in data.items()}

    def provision(self, name: str, role: str) -> Provisioned:
        if role not in ROLES:
            raise GateError(f"provision: role must be one of {', '.join(ROLES)}")
        if not name or any(c in name for c in "/+#:\0 ") or len(name) > 64:
            raise GateError(f"provision: {name!r} cannot be a broker user name (no / + # : or spaces)")
        ids = self.identities()
        if name in ids and ids[name]["role"] != role:
            raise GateError(f"provision: {name} is already a {ids[name]['role']}")
        creds = self.path / "credentials" / name
        for d in (creds.parent, creds):
            d.mkdir(exist_ok=True, mode=0o700)
            os.chmod(d, 0o700)
        secret = secrets.token_urlsafe(24)
        pw_file = creds / "mqtt-password"
        _write_private(pw_file, secret + "\n")
        device_key = None
        if role == "gate":
            _, priv, pub = generate_keypair(creds)
            device_key = creds / "device.key"
            os.replace(priv, device_key)
            devices = self.path / "devices"
            devices.mkdir(exist_ok=True)
            os.replace(pub, devices / f"{name}.pub")
        ids[name] = {"role": role, "hash": mosquitto_hash(secret)}
        _write_private(self.registry, json.dumps(ids, indent=1, sort_keys=True))
        self._write_broker_files(ids)
        return Provisioned(name, role, pw_file, device_key)

    def _write_broker_files(self, ids: dict[str, dict[str, str]]) -> None:
        _write_private(self.path / "passwd", "".join(f"{n}:{v['hash']}\n" for n, v in sorted(ids.items())))
        lines = ["# written by `gate central provision`: edit identities with it, not here"]
        for n, v in sorted(ids.items()):
            lines += ["", f"user {n}", *acl(n, v["role"], self.prefix)]
        _write_private(self.path / "acl", "\n".join(lines) + "\n")
        conf = self.path / "mosquitto.conf"
        text = (
            "# written by `gate central provision`; add a `listener` (and TLS) in your own file, or run\n"
            "# `mosquitto -c mosquitto.conf -p PORT`\n"
            "allow_anonymous false\n"
            f"password_file {self.path / 'passwd'}\n"
            f"acl_file {self.path / 'acl'}\n"
            "# a client id is its user name: no identity can take over another's session\n"
            "use_username_as_clientid true\n"
        )
        _write_private(conf, text)


def _write_private(path: Path, text: str) -> None:
    """Atomically, mode 0600 from the start: secrets are never world-readable, even for an instant."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
