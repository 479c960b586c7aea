"""HOST:PORT arguments for the device and the central tools alike."""

from __future__ import annotations

import argparse


def broker_address(text: str) -> tuple[str, int]:
    """argparse type for --broker HOST:PORT."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def broker_endpoint(text: str) -> tuple[str, int]:
    """ "host:port" (or "[v6]:port") from [mqtt] hosts; a short message naming what is wrong otherwise."""
    host, _, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in host):
        raise ValueError(f'hosts: expected "host:port", got {text!r}')
    return host, int(port)
