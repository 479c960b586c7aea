"""RabbitMQ definitions (`rabbitmqctl import_definitions FILE`) from the broker folder's identities: users,
permissions and topic permissions matching the client ids the tools use, and the check-ins' quorum queue."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

CHECKIN_QUEUE = "gate-checkins"  # the quorum queue collect-amqp consumers share
VHOST = "/"
SESSION_EXPIRY_MS = 7 * 86400 * 1000  # an MQTT session queue nobody consumed for a week goes
# RabbitMQ names an MQTT client's session queue "mqtt-subscription-<client id>qos0|qos1".
SESSION = "mqtt-subscription-"
OTHERS = SESSION + "(?!gate-).*"  # central tools and Home Assistant: any id but a gate's or a collector's


def rabbit_hash(password: str) -> str:
    """RabbitMQ's default password hash (rabbit_password_hashing_sha256): base64(salt + sha256(salt + pw))."""
    salt = os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def routing(prefix: str) -> str:
    """The regex for a topic prefix as RabbitMQ's MQTT plugin routes it: `/` becomes `.`."""
    return re.escape(prefix.replace("/", "."))


def queue_permissions(name: str, role: str) -> tuple[str, str, str]:
    """(configure, write, read) over queues and exchanges: each client may make and use only its own MQTT
    session queues; a collector also reads the check-in queue."""
    if role == "gate":
        own = f"{SESSION}gate-{re.escape(name)}qos[01]"
    elif role == "collector":  # collect's default client id, or its --client-id NAME
        own = f"{SESSION}(gate-collect-.*|{re.escape(name)}qos[01])"
    else:
        own = OTHERS
    read = f"^(amq\\.topic|{own}|{CHECKIN_QUEUE})$" if role == "collector" else f"^(amq\\.topic|{own})$"
    return f"^{own}$", f"^(amq\\.topic|{own})$", read


def topic_permissions(name: str, role: str, prefix: str, ha_prefix: str | None) -> tuple[str, str]:
    """(write, read) over amq.topic routing keys: the same rules as mosquitto's ACL (docs/broker.md)."""
    p, g = routing(prefix), re.escape(name)
    ha = routing(ha_prefix) if ha_prefix else None
    if role == "gate":
        own = f"{p}\\.{g}\\.(availability|state|checkin|alarm|telemetry|resync|reply|replies\\..+)"
        discovery = f"|{ha}\\.[^.]+\\.gate_{g}\\..+" if ha else ""  # its own Home Assistant device's
        return f"^({own}{discovery})$", f"^{p}\\.(central\\.(policy|keys|passes\\..+)|{g}\\.command)$"
    if role == "collector":
        return "^$", f"^{p}\\.[^.]+\\.(checkin|alarm|state|telemetry|availability)$"
    if role == "homeassistant":
        reads = f"{p}\\.[^.]+\\.(state|availability|telemetry)"
        return (f"^{ha}\\.status$", f"^({reads}|{ha}\\..+)$") if ha else ("^$", f"^{reads}$")
    replies = "[^.]+\\.(replies\\..+|reply|resync|state|availability)"
    return f"^{p}\\.(central\\..+|[^.]+\\.command)$", f"^{p}\\.(central\\..+|{replies})$"


def _accounts(
    identities: dict[str, str], passwords: dict[str, str], prefix: str, ha_prefix: str | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Each identity's user, its queue permissions and its topic permissions, in name order."""
    users: list[dict[str, Any]] = []
    perms: list[dict[str, Any]] = []
    topics: list[dict[str, Any]] = []
    for name, role in sorted(identities.items()):
        users.append(
            {
                "name": name,
                "password_hash": rabbit_hash(passwords[name]),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": [],
            }
        )
        configure, write, read = queue_permissions(name, role)
        perms.append({"user": name, "vhost": VHOST, "configure": configure, "write": write, "read": read})
        twrite, tread = topic_permissions(name, role, prefix, ha_prefix)
        topics.append({"user": name, "vhost": VHOST, "exchange": "amq.topic", "write": twrite, "read": tread})
    return users, perms, topics


def definitions(
    identities: dict[str, str], passwords: dict[str, str], prefix: str, ha_prefix: str | None = "homeassistant"
) -> dict[str, Any]:
    """identities: name -> role; passwords: name -> its password (hashed here). Home Assistant's topics are
    permitted (`ha_prefix`) only when an identity has the homeassistant role."""
    if "homeassistant" not in identities.values():
        ha_prefix = None
    users, perms, topics = _accounts(identities, passwords, prefix, ha_prefix)
    checkins = f"{prefix.replace('/', '.')}.*.checkin"
    return {
        "rabbit_version": "3.10.8",
        "users": users,
        "vhosts": [{"name": VHOST}],
        "permissions": perms,
        "topic_permissions": topics,
        "queues": [
            {
                "name": CHECKIN_QUEUE,
                "vhost": VHOST,
                "durable": True,
                "auto_delete": False,
                "arguments": {"x-queue-type": "quorum"},
            }
        ],
        "exchanges": [],
        "bindings": [
            {
                "source": "amq.topic",
                "vhost": VHOST,
                "destination": CHECKIN_QUEUE,
                "destination_type": "queue",
                "routing_key": checkins,
                "arguments": {},
            }
        ],
        "policies": [
            {
                "vhost": VHOST,
                "name": "gate-mqtt-sessions",
                "pattern": f"^{SESSION}",
                "apply-to": "queues",
                "priority": 0,
                "definition": {"expires": SESSION_EXPIRY_MS},
            }
        ],
    }


def write_definitions(folder: Path, identities: dict[str, str], prefix: str) -> Path:
    """`<folder>/rabbitmq/definitions.json` (mode 0600: it holds password hashes), from each identity's
    `credentials/<name>/mqtt-password`."""
    passwords = {n: (folder / "credentials" / n / "mqtt-password").read_text().strip() for n in identities}
    out = folder / "rabbitmq" / "definitions.json"
    out.parent.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(out.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(definitions(identities, passwords, prefix), f, indent=1)
    os.replace(out.with_suffix(".tmp"), out)
    return out


def rabbit_toml(text: str, server_names: list[str], tls_port: int) -> str:
    """A provisioned gate.toml for a RabbitMQ cluster: `hosts` = every --server-name (the nodes), MQTT 3.1.1."""
    hosts = ", ".join(f'"{n}:{tls_port}"' for n in server_names)
    lines = [ln for ln in text.splitlines() if not ln.startswith(("host = ", "port = ", "protocol = "))]
    at = lines.index("[mqtt]") + 1
    lines[at:at] = [f"hosts = [{hosts}]  # the cluster's nodes, tried in turn", 'protocol = "3.1.1"  # RabbitMQ 3']
    return "\n".join(lines) + "\n"
