"""State files at start-up: check each one, move a corrupt one aside, and say what was done."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gate.config.model import OutboxSection
from gate.core.docstore import AtomicJSONStorage
from gate.core.errors import StateUnusable
from gate.core.sqlite import header_size
from gate.decide import passcache
from gate.decide.passcache import PassCache
from gate.deliver import outbox
from gate.deliver.outbox import Outbox, read_hwm, salvage
from gate.lane import state as lanestate
from gate.lane.state import LaneState

log = logging.getLogger(__name__)
SIDE_FILES = ("-wal", "-shm", "-journal", ".hwm")


@dataclass
class Recovery:
    """What start-up had to repair, for the alarms the lane raises once it can record them."""

    alarms: list[tuple[str, str]] = field(default_factory=list)  # (alarm name, detail)

    def note(self, name: str, detail: str) -> None:
        log.critical("%s: %s", name, detail)
        self.alarms.append((name, detail))


def move_aside(path: Path) -> Path:
    """Rename `path` (and its SQLite side files) to `<name>.corrupt-<UTC time>`, kept for a post-mortem."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    os.replace(path, target)
    for side in SIDE_FILES:
        extra = path.with_name(path.name + side)
        if extra.exists():
            os.replace(extra, target.with_name(target.name + side))
    return target


def sqlite_problem(path: Path, setup: Callable[[sqlite3.Connection], None], thorough: bool = True) -> str | None:
    """None if the file opens, has our schema and passes SQLite's quick check (or, not `thorough`, a check that
    costs nothing at any size: the header's page count against the file's length); else the evidence of damage.
    A file that cannot be used for a reason outside it (a full disk, permissions, a directory in its place)
    raises StateUnusable: that is no evidence, and such a file is never moved aside."""
    if path.exists() and not path.is_file():
        raise StateUnusable(errno.EISDIR, "not a regular file; move it away", str(path))
    if not path.exists():
        return None
    if not thorough and (cut := _cut_short(path)) is not None:
        return cut
    db = None
    try:
        db = sqlite3.connect(path, timeout=10)
        setup(db)
        if not thorough:
            return None
        rows = db.execute("PRAGMA quick_check").fetchall()
        if rows != [("ok",)]:
            return "; ".join(str(r[0]) for r in rows[:3])
        return None
    except sqlite3.OperationalError as exc:  # full, read-only, locked, cannot open: the file is not the problem
        raise StateUnusable(errno.EIO, f"cannot be used now ({exc}); nothing was moved", str(path)) from exc
    except sqlite3.Error as exc:
        return str(exc)
    finally:
        if db is not None:
            db.close()


def _cut_short(path: Path) -> str | None:
    """The header's length against the file's. While the write-ahead log holds frames the main file may be
    shorter (a checkpoint stopped by a full disk): that is no evidence, and SQLite's own open decides."""
    want = header_size(path)  # None: not a database at all, and opening it says so
    size = path.stat().st_size
    wal = path.with_name(path.name + "-wal")
    if want is None or size >= want or (wal.exists() and wal.stat().st_size > 0):
        return None
    return f"cut short: {size} of {want} bytes"


def check_device_doc(path: Path, recovery: Recovery) -> None:
    """device.json (policy, central's trust keys, command nonces): unreadable means moved aside."""
    try:
        data = AtomicJSONStorage(path).read()
        if data is not None and not all(isinstance(v, dict) for v in data.values()):
            raise ValueError("not a document store")
        return
    except (ValueError, AttributeError) as exc:
        problem = f"{type(exc).__name__}: {str(exc)[:80]}"
    aside = move_aside(path)
    recovery.note(
        "state_file_corrupt",
        f"{path.name} unreadable ({problem}); moved to {aside.name}; the policy "
        "comes from the config and central's keys from the config until central sends them again",
    )


def open_pass_cache(path: Path, recovery: Recovery) -> bool:
    """True if passes.db had to be moved aside: the gate starts empty and asks central for a snapshot."""
    problem = sqlite_problem(path, passcache.setup, thorough=False)  # a 10M-pass cache: no full scan at start
    if problem is None:
        return False
    aside = move_aside(path)
    recovery.note(
        "state_file_corrupt",
        f"{path.name} unreadable ({problem[:80]}); moved to {aside.name}; "
        "starting with an empty pass cache and asking central for a snapshot",
    )
    return True


def open_outbox(path: Path, cfg: OutboxSection, recovery: Recovery) -> Outbox:
    """A corrupt outbox is moved aside and every readable row salvaged into a fresh one, in order."""
    problem = sqlite_problem(path, outbox.setup)
    if problem is not None:
        aside = move_aside(path)
        box = Outbox(path, cfg)
        saved, bad = salvage(aside, box, read_hwm(aside.with_name(aside.name + ".hwm")))
        box.hand_over_writer()  # salvaged on the building thread; the lane thread's first append owns it
        lost = "an unknown number of rows could not be read" if bad is None else f"{bad} could not be read"
        recovery.note(
            "state_file_corrupt",
            f"{path.name} unreadable ({problem[:80]}); moved to {aside.name}; "
            f"{saved} undelivered events saved into a fresh outbox, {lost}",
        )
        return box
    box = Outbox(path, cfg)
    if box.lost_at_start:
        recovery.note(
            "outbox_gap",
            f"{path.name} ends at event {box.last_seq_at_start} but events up to "
            f"{box.hwm_at_start} were written: {box.lost_at_start} undelivered events were lost "
            "with a damaged write-ahead log",
        )
    return box


def check_lane_state(path: Path, recovery: Recovery) -> bool:
    """lane.db before any connection is made: True if it was corrupt and moved aside (the remote mode is
    unknown, and the lane starts out of service)."""
    problem = sqlite_problem(path, lanestate.setup)
    if problem is None:
        return False
    aside = move_aside(path)
    recovery.note(
        "state_file_corrupt",
        f"{path.name} unreadable ({problem[:80]}); moved to {aside.name}; the "
        "remote mode is unknown, so the lane starts out of service until an in-service command",
    )
    return True


def prove_lane_state(state: LaneState, recovery: Recovery) -> bool:
    """On the lane thread, before the first scan: True if lane.db holds less than its seal (then neither the
    remote mode nor the passages can be trusted, and the lane starts out of service)."""
    unproven = state.unproven()
    if unproven is None:
        return False
    recovery.note(
        "state_unproven",
        f"{unproven}; the remote mode and anti-passback cannot be proven, so the lane starts out of "
        "service until an in-service command",
    )
    return True


def prove_cache(cache: PassCache, recovery: Recovery, lost: bool) -> bool:
    """On the lane thread: a cache that holds less than its seal (or was lost) may have lost a revocation:
    until central's next snapshot it is treated as stale, and a code alone admits no one."""
    problem = cache.unproven()
    if problem is None:
        return False
    cache.distrust()
    if not lost:  # a lost cache has its own alarm already
        recovery.note("state_unproven", f"{problem}; treated as stale until central's next snapshot")
    return True


@dataclass
class Startup:
    """What `build()` found in the state files (before any connection), for `Gate.start()` to act on."""

    recovery: Recovery
    cache_lost: bool = False  # passes.db was moved aside: the gate starts empty and asks for a snapshot
    lane_lost: bool = False  # lane.db was moved aside: the lane starts out of service
