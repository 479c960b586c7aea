"""A paho client's credentials from the config: user name, password and TLS, the same for gates and central."""

from __future__ import annotations

import ssl

import paho.mqtt.client as mqtt

from gate.config.model import MqttSection, secret_path
from gate.core.errors import ConfigError


def authenticate(client: mqtt.Client, cfg: MqttSection) -> None:
    """Username, password and TLS from the config. A CA, certificate or key that cannot be loaded is named by
    its key and path (ssl says only "[Errno 2] No such file or directory")."""
    password = cfg.resolved_password()
    if cfg.username is not None:
        client.username_pw_set(cfg.username, password)
    tls = cfg.tls
    if tls is None:
        return
    ca = str(tls.ca_file) if tls.ca_file else None
    cert = str(tls.cert_file) if tls.cert_file else None
    key = str(secret_path(tls.key_file)) if tls.key_file else None  # relative: a credential
    try:
        ssl.create_default_context(cafile=ca)  # what tls_set loads, tried first to say which file failed
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"mqtt.tls.ca_file {ca}: cannot load: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        client.tls_set(ca_certs=ca, certfile=cert, keyfile=key, cert_reqs=ssl.CERT_REQUIRED)
    except (OSError, ssl.SSLError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"mqtt.tls.cert_file {cert} / key_file {key}: cannot load: {why}") from None
    client.tls_insecure_set(tls.insecure)
