"""Why a connection to the broker failed, named: a pure mapping from paho's exception or reason code to a reason."""

from __future__ import annotations

import logging
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("gate.mqtt_link")

# The reasons, as the state, status.json, the metric's label and Home Assistant show them
REASONS = (
    "connection_refused",  # nothing listens on the port (broker down, wrong port)
    "dns_failure",  # the host name does not resolve
    "network_unreachable",  # no route, host down, other socket errors
    "timeout",  # no TCP or TLS answer within paho's connect timeout
    "tls_unknown_ca",  # the broker's certificate is not from the configured CA
    "tls_name_mismatch",  # the certificate does not name the host we connect to
    "tls_expired",  # the certificate expired (or is not valid yet)
    "tls_failed",  # any other TLS failure (a client certificate refused, a protocol mismatch)
    "authentication_failed",  # the CONNACK refused this user name and password (or none, or the certificate)
    "not_authorized",  # connected, but the broker's ACL refused a publish or a subscription
    "protocol_refused",  # the broker closed the connection before its CONNACK (MQTT 5 to RabbitMQ 3)
    "refused",  # any other CONNACK refusal
)
# OpenSSL's X509 verification codes: https://docs.openssl.org/master/man1/openssl-verification-options/
_X509 = {
    2: "tls_unknown_ca",
    7: "tls_unknown_ca",  # signature failure: another CA by the same name (every provisioned folder's CA)
    18: "tls_unknown_ca",
    19: "tls_unknown_ca",
    20: "tls_unknown_ca",
    21: "tls_unknown_ca",
    24: "tls_unknown_ca",
    27: "tls_unknown_ca",
    9: "tls_expired",
    10: "tls_expired",
    62: "tls_name_mismatch",  # host name
    64: "tls_name_mismatch",  # IP address
}


@dataclass(frozen=True)
class LinkFailure:
    """One named failure: `reason` (one of REASONS) and a line that says what was tried and what to check."""

    reason: str
    detail: str

    def as_json(self, since: float) -> dict[str, Any]:
        return {"reason": self.reason, "detail": self.detail, "since": since}


def from_exception(exc: BaseException | None, where: str) -> LinkFailure:
    """What a failed connect raised (socket, DNS, TLS), for the broker at `where` (host:port)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = _X509.get(exc.verify_code, "tls_failed")
        if reason == "tls_failed" and "hostname" in str(exc.verify_message).lower():
            reason = "tls_name_mismatch"
        hint = {
            "tls_unknown_ca": "is mqtt.tls.ca_file the broker's CA (its tls/ca.crt)?",
            "tls_name_mismatch": "connect by a name the certificate holds (provision --server-name)",
            "tls_expired": "renew the broker's certificate, or check this clock",
        }.get(reason, "")
        return LinkFailure(reason, f"{where}: TLS verification failed: {exc.verify_message}; {hint}".rstrip("; "))
    if isinstance(exc, ssl.SSLError):
        return LinkFailure("tls_failed", f"{where}: TLS handshake failed: {getattr(exc, 'reason', None) or exc}")
    if isinstance(exc, socket.gaierror):
        return LinkFailure("dns_failure", f"{where}: the host name does not resolve ({exc.strerror})")
    if isinstance(exc, ConnectionRefusedError):
        return LinkFailure("connection_refused", f"{where}: connection refused (is the broker running, this port?)")
    if isinstance(exc, TimeoutError | socket.timeout):
        return LinkFailure("timeout", f"{where}: no answer in time (TCP or TLS handshake): {exc}")
    if isinstance(exc, OSError):
        return LinkFailure("network_unreachable", f"{where}: {exc.strerror or exc}")
    return LinkFailure("network_unreachable", f"{where}: connection failed: {exc!r}")


def from_connack(code: int, text: str, where: str) -> LinkFailure:
    """A CONNACK refusal, by its MQTT 5 reason code (paho maps 3.1.1's return codes to these) or 3.1.1 code."""
    if code in (4, 5, 0x86, 0x87, 0x8C):  # mosquitto answers a wrong password with "Not authorized"
        return LinkFailure(
            "authentication_failed", f"{where}: {text}: check mqtt.username and the password file (or certificate)"
        )
    if code in (1, 0x84):
        return LinkFailure("protocol_refused", f"{where}: {text}")
    return LinkFailure("refused", f"{where}: the broker refused the connection: {text}")


def closed_before_connack(where: str, protocol: str, pinned: bool) -> LinkFailure:
    """The broker dropped the connection before answering: RabbitMQ 3 does so to MQTT 5."""
    hint = (
        '; RabbitMQ 3 speaks MQTT 3.1.1 only: set mqtt.protocol = "auto" or "3.1.1"'
        if protocol == "5" and pinned
        else ""
    )
    return LinkFailure(
        "protocol_refused", f"{where}: closed the connection on an MQTT {protocol} CONNECT without a CONNACK{hint}"
    )


def refused_on_topic(what: str, topic: str, text: str, where: str) -> LinkFailure:
    """A SUBACK or PUBACK refusal while connected: the broker's ACL does not give this identity `topic`."""
    return LinkFailure("not_authorized", f"{where}: {what} {topic} refused ({text}): check the broker's ACL")


class FailureLog:
    """The link's current failure: one WARNING line when it first fails and on each change of reason, none
    while the same failure repeats at every retry; cleared by a successful connect. Each method is one line in
    the paho callback that calls it; `where` says which broker (host:port) is being tried. Read from any thread."""

    def __init__(self, where: Callable[[], str]) -> None:
        self.where = where
        self._lock = threading.Lock()
        self._current: LinkFailure | None = None
        self._since = 0.0

    def connect_failed(self, client: Any = None, userdata: Any = None) -> None:
        """paho's on_connect_fail, called inside its `except OSError`: the exception being handled is the cause."""
        self.note(from_exception(sys.exc_info()[1], self.where()))

    def connack(self, reason: Any) -> None:
        self.note(from_connack(reason.value, str(reason), self.where()))

    def closed(self, protocol: str, pinned: bool) -> None:
        self.note(closed_before_connack(self.where(), protocol, pinned))

    def refused(self, what: str, mid: int, reasons: Iterable[Any]) -> None:
        """A PUBACK's or SUBACK's reason codes: any failure among them is the ACL's refusal."""
        for r in reasons:
            if r.is_failure:
                self.note(refused_on_topic(what, f"(message {mid})", str(r), self.where()))

    def note(self, failure: LinkFailure) -> None:
        with self._lock:
            if self._current is not None and self._current.reason == failure.reason:
                return
            self._current, self._since = failure, time.time()
        log.warning("mqtt: %s: %s", failure.reason, failure.detail)

    def clear(self) -> None:
        with self._lock:
            self._current = None

    @property
    def reason(self) -> str | None:
        with self._lock:
            return None if self._current is None else self._current.reason

    def as_json(self) -> dict[str, Any] | None:
        with self._lock:
            return None if self._current is None else self._current.as_json(self._since)
