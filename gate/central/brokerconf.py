"""The broker folder's own files: its settings (`broker.json`), the `mosquitto.conf` that starts as written
(its own listeners, each with its own authentication), and file modes that Debian's mosquitto can read
after it drops from root to its `mosquitto` user, while nobody else can."""

from __future__ import annotations

import grp
import json
import os
import socket
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

BROKER_GROUP = "mosquitto"  # Debian's mosquitto runs as user mosquitto, group mosquitto


def _default_names() -> list[str]:
    names = [socket.getfqdn(), socket.gethostname(), "localhost", "127.0.0.1", "::1"]
    return list(dict.fromkeys(n for n in names if n))


@dataclass(frozen=True)
class Settings:
    """How the broker listens: plain MQTT on loopback only (central programs beside it), TLS on every
    interface. `server_names` go into the server certificate; `require_client_certs` makes the TLS listener
    refuse a client without a certificate from this folder's CA (the password still names the identity)."""

    plain_port: int = 1883
    tls_port: int = 8883
    server_names: list[str] = field(default_factory=_default_names)
    require_client_certs: bool = False

    @classmethod
    def load(cls, path: Path) -> Settings:
        if not path.exists():
            return cls()
        data: dict[str, Any] = json.loads(path.read_text())
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def updated(self, **changes: Any) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def text(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)


def conf_text(d: Path, s: Settings) -> str:
    auth = (
        "allow_anonymous false\n"
        f"password_file {d / 'passwd'}\n"
        f"acl_file {d / 'acl'}\n"
        "# a client id is its user name: no identity can take over another's session\n"
        "use_username_as_clientid true\n"
    )
    return (
        "# written by `gate central provision`: edit with it (--port, --tls-port, --server-name), not here.\n"
        f"# It starts as it is: mosquitto -c {d / 'mosquitto.conf'}\n"
        "# Each listener has its own authentication, so the identity binding holds on every one of them.\n"
        "per_listener_settings true\n"
        "# Collectors hold a batch's worth of un-acknowledged QoS 1 check-ins, and a stopped collector's\n"
        "# session keeps its share while it restarts.\n"
        "max_inflight_messages 0\n"
        "# bounded: with 0 (no limit), mosquitto 2.0.11 drops a client's connection after a publish it refused\n"
        "max_queued_messages 1000000\n"
        "\n"
        "# plain MQTT, this machine only: central programs beside the broker\n"
        f"listener {s.plain_port} 127.0.0.1\n"
        f"{auth}"
        "\n"
        "# TLS for gates and everything off this machine\n"
        f"listener {s.tls_port}\n"
        f"cafile {d / 'tls' / 'ca.crt'}\n"
        f"certfile {d / 'tls' / 'server.crt'}\n"
        f"keyfile {d / 'tls' / 'server.key'}\n"
        f"require_certificate {'true' if s.require_client_certs else 'false'}\n"
        f"{auth}"
    )


def broker_gid() -> int | None:
    """The broker's group, where it exists and this process may give files to it (root, or a member)."""
    try:
        gid = grp.getgrnam(BROKER_GROUP).gr_gid
    except KeyError:
        return None
    return gid if os.geteuid() == 0 or gid in os.getgroups() else None


def write_file(path: Path, data: str | bytes, mode: int = 0o600, broker_reads: bool = False) -> None:
    """Atomically, with its final mode from the start: a secret is never readable by others, even for an
    instant. `broker_reads`: group `mosquitto` may read it (mode 0640), where that group exists."""
    gid = broker_gid() if broker_reads else None
    final = 0o640 if gid is not None else mode
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if gid is not None:
            os.fchown(fd, -1, gid)
        os.fchmod(fd, final)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def broker_folder(path: Path) -> None:
    """A folder the broker may enter (group mosquitto, 0750) but others may not."""
    path.mkdir(parents=True, exist_ok=True)
    gid = broker_gid()
    if gid is not None:
        os.chown(path, -1, gid)
        os.chmod(path, 0o750)
    else:
        os.chmod(path, 0o700)


def private_folder(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
