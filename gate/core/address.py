"""HOST:PORT arguments for the device and the central tools alike."""

from __future__ import annotations

import argparse


def broker_address(text: str) -> tuple[str, int]:
    """argparse type for --broker HOST:PORT."""
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)
