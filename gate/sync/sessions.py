"""After a reconnect that found no session, what central sent meanwhile may be missing: ask for a resync."""

from __future__ import annotations

from collections.abc import Callable

from gate.mqtt_link import MqttLink


def watch_sessions(link: MqttLink, resync_soon: Callable[[str], None]) -> None:
    """Deltas are not retained: they wait for the gate in its broker session. A reconnect whose CONNACK says
    no session is present (another node of [mqtt] hosts that did not share it, or a broker that forgot it)
    may have lost some, so the gate sends its sequence (have_version, have_seq) in a resync request rather
    than wait for the next delta to show the gap. Runs on paho's thread: it only queues the request."""

    def up() -> None:
        if link.connects > 1 and not link.session_present:
            resync_soon(f"reconnected to {link.broker} without a session: deltas sent meanwhile may be missing")

    link.up_listeners.append(up)
