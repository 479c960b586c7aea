"""`gate run`: the daemon's life: start-up, sd_notify, SIGHUP reload, clean stop with the relay safe."""

from __future__ import annotations

import logging
import signal
import sqlite3
import threading
from pathlib import Path
from types import FrameType

from gate.config.model import Config, load_config
from gate.core.errors import ConfigError, GateError
from gate.core.sdnotify import Notifier
from gate.lane.wiring import build

log = logging.getLogger(__name__)


class Signals:
    """SIGTERM/SIGINT ask to stop, SIGHUP to reload; a stop is never forgotten, even during a reload."""

    def __init__(self) -> None:
        self.stop = threading.Event()  # also set for a reload, to leave the scan loop
        self.terminate = False
        self.reload = False
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on)

    def _on(self, signum: int, frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        if signum == signal.SIGHUP:
            self.reload = True
        else:
            self.terminate = True
        self.stop.set()

    def next_round(self) -> bool:
        """After a reload: True to start again, False if a stop arrived meanwhile."""
        self.reload = False
        if self.terminate:
            return False
        self.stop.clear()
        if self.terminate:  # arrived between the check and the clear
            self.stop.set()
            return False
        return True


def _reload(path: Path, current: Config) -> Config:
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        log.error("config reload failed; keeping the running configuration:\n%s", exc)
        return current
    log.info("reloaded configuration from %s", path)
    return cfg


def run_daemon(config_path: Path) -> int:
    cfg = load_config(config_path)
    signals = Signals()
    notifier = Notifier()
    while True:
        logging.getLogger().setLevel(cfg.gate.log_level.upper())
        try:
            gate = build(cfg, heartbeat=notifier.heartbeat)
            gate.start()  # this (main) thread is the lane thread: it proves the state files and owns them
        except GateError as exc:  # a key file or device that cannot be used: one line naming it
            log.critical("cannot start: %s", exc)
            notifier.stopping()
            return 1
        except (OSError, sqlite3.Error) as exc:  # a state file no repair can fix: say which, and what to do
            where = getattr(exc, "filename", None) or cfg.gate.state_dir
            log.critical(
                "cannot start: %s: %s; check that %s exists, is writable by this user and the disk is healthy",
                where,
                exc,
                cfg.gate.state_dir,
            )
            notifier.stopping()
            return 1
        notifier.ready(f"gate {cfg.gate.id} scanning ({cfg.scanner.source})")
        log.info("gate %s started at venue %s (source %s)", cfg.gate.id, cfg.venue.id, cfg.scanner.source)
        try:
            gate.run(signals.stop)
        except Exception:
            log.exception("unhandled error: relay to its safe state, exiting for systemd to restart")
            gate.actuator.safe()
            notifier.stopping()
            gate.close("error")
            return 1
        if not signals.reload or signals.terminate:
            notifier.stopping()
            gate.close()
            log.info("gate stopped cleanly")
            return 0
        notifier.reloading()
        gate.close("reload")  # relay safe while the new configuration starts
        cfg = _reload(config_path, cfg)
        if not signals.next_round():
            notifier.stopping()
            log.info("gate stopped cleanly (stop requested during a reload)")
            return 0
