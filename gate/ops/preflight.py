"""What a maintainer's command checks before it runs: whose files it may create, and what the config needs
from the system that the config file cannot say."""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import sys
from pathlib import Path

from gate.config.model import Config

log = logging.getLogger(__name__)


def act_as_state_owner(state_dir: Path) -> None:
    """Run as root (`sudo gate cache import …`), act as the user that owns the state directory (the service's
    `gate` user): a file created now (passes.db, its WAL) is one the service can write, never a root-owned file
    that leaves it with "attempt to write a readonly database". Nothing changes for any other user, or where
    the directory is missing or root's own."""
    if os.geteuid() != 0:
        return
    try:
        st = state_dir.stat()
    except OSError:
        return
    if st.st_uid == 0:
        return
    try:
        name = pwd.getpwuid(st.st_uid).pw_name
        os.initgroups(name, st.st_gid)  # its supplementary groups too (gpio, video, dialout for selftest)
    except KeyError:
        name = str(st.st_uid)
        os.setgroups([])
    os.setgid(st.st_gid)
    os.setuid(st.st_uid)
    log.info("running as %s, the owner of %s", name, state_dir)


def missing_libraries(cfg: Config) -> list[str]:
    """One line per library the configured source or decoder needs that is not importable, with the fix."""
    out = []
    if cfg.scanner.source == "camera" and importlib.util.find_spec("picamera2") is None:
        out.append(
            'scanner.source = "camera" needs picamera2, which is not importable here: the service would restart '
            "every few seconds. Fix: sudo apt install python3-picamera2 (the venv needs --system-site-packages; "
            "install.sh makes it so)"
        )
    if cfg.scanner.decoder == "zxing" and importlib.util.find_spec("zxingcpp") is None:
        out.append(
            'scanner.decoder = "zxing" needs zxing-cpp, which is not installed. Fix: pip install "gate[zxing]", '
            'or decoder = "auto" to use pyzbar (the armv7 path, docs/operations.md)'
        )
    if cfg.scanner.decoder in ("auto", "zbar") and importlib.util.find_spec("zxingcpp") is None:
        try:
            import pyzbar.pyzbar  # noqa: F401  # it loads libzbar0 here, where a missing one is reported
        except (ImportError, OSError):
            out.append("no decoder: neither zxing-cpp nor pyzbar with libzbar0. Fix: sudo apt install libzbar0")
    return out


def check_config(path: Path) -> int:
    """`gate check-config`: the file, every file it names (readable by the service's user: exit 2 naming each
    that is not), the keys, and the libraries it needs (warnings)."""
    from gate.config.files import unreadable
    from gate.config.model import load_config, secret_path
    from gate.decide.keys import TrustStore, load_private_key

    cfg = load_config(path)
    problems = unreadable(cfg)  # every file named, as the service's user will read it
    if problems:
        for line in problems:
            print(f"{path}: error: {line}", file=sys.stderr)
        return 2
    TrustStore.from_files(cfg.trust.keys)
    if cfg.gate.device_key is not None:
        load_private_key(secret_path(cfg.gate.device_key))
    cfg.mqtt.resolved_password()  # read where the service will read it: a missing file is named now
    warnings = missing_libraries(cfg)
    for w in warnings:
        print(f"{path}: warning: {w}", file=sys.stderr)
    said = f", {len(warnings)} warning(s)" if warnings else ""
    print(f"{path}: OK{said} (gate {cfg.gate.id}, venue {cfg.venue.id}, source {cfg.scanner.source})")
    return 0
