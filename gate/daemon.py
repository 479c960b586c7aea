"""`gate run`: the daemon's life: start-up, signals, clean stop with the relay safe."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType

from gate.app import build
from gate.config import load_config

log = logging.getLogger(__name__)


def run_daemon(config_path: Path) -> int:
    cfg = load_config(config_path)
    logging.getLogger().setLevel(cfg.gate.log_level.upper())
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    gate = build(cfg)
    log.info("gate %s started at venue %s (source %s)", cfg.gate.id, cfg.venue.id, cfg.scanner.source)
    try:
        gate.run(stop)
    except Exception:
        log.exception("unhandled error: relay to its safe state, exiting for systemd to restart")
        gate.actuator.safe()
        return 1
    finally:
        gate.close()
    log.info("gate stopped cleanly")
    return 0
