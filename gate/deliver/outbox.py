"""The durable check-in outbox: SQLite (WAL, synchronous=FULL); a row goes only after its PUBACK."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from gate.config.model import OutboxSection
from gate.core import reserve
from gate.core.errors import OutboxFull
from gate.core.sqlite import Owned, header_size, private

log = logging.getLogger(__name__)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL,
    topic TEXT NOT NULL, qos INTEGER NOT NULL DEFAULT 1, payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL, topic TEXT NOT NULL, qos INTEGER NOT NULL,
    payload BLOB NOT NULL, reason TEXT NOT NULL, moved_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS counts (k TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID;
INSERT INTO counts SELECT 'rows', (SELECT count(*) FROM outbox)
    WHERE NOT EXISTS (SELECT 1 FROM counts WHERE k = 'rows');
CREATE TRIGGER IF NOT EXISTS outbox_counted_in AFTER INSERT ON outbox
    BEGIN UPDATE counts SET n = n + 1 WHERE k = 'rows'; END;
CREATE TRIGGER IF NOT EXISTS outbox_counted_out AFTER DELETE ON outbox
    BEGIN UPDATE counts SET n = n - 1 WHERE k = 'rows'; END;
"""
# The depth is kept by triggers inside each insert's and delete's own statement, so opening reads one row at
# any depth (a count(*) took 85 ms at a million rows). A file from before `counts` existed is counted once.


def setup(db: sqlite3.Connection) -> None:
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # each commit is on disk before we open the relay
    db.executescript(_SCHEMA)


def setup_writer(db: sqlite3.Connection) -> None:
    """The lane's connection: every append is fsync'd; it checkpoints only as a safety net (a WAL of about
    40 MB, when nothing is delivered for a long time), so the lane does not pay for checkpoints."""
    setup(db)
    db.execute("PRAGMA wal_autocheckpoint=10000")


def setup_reader(db: sqlite3.Connection) -> None:
    """The drainer's connection: its deletes are not fsync'd (WAL, synchronous=NORMAL keeps the file
    consistent; a power cut may forget the last acks, and those events are sent again, which at-least-once
    delivery allows). It holds the write lock for microseconds instead of an fsync, so the lane's append
    seldom waits for it, and it runs the routine checkpoints."""
    setup(db)
    db.execute("PRAGMA synchronous=NORMAL")


def last_seq(db: sqlite3.Connection) -> int:
    """The highest seq ever appended (AUTOINCREMENT keeps it after rows are deleted)."""
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
    return 0 if row is None else int(row[0])


class Outbox:
    """Two connections, each owned by one thread: the lane appends, the drainer fetches and deletes.
    The depth is derived from counters that each side alone increments, so no lock is shared. Beside
    the database, `outbox.db.hwm` holds the last seq appended, so rows lost with a damaged WAL are seen."""

    def __init__(self, path: Path, cfg: OutboxSection | None = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.cfg = path, cfg or OutboxSection()
        self._writer = Owned(path, setup_writer, "lane", name=f"{path.name} (writer)")
        self._reader = Owned(path, setup_reader, "outbox-drain", name=f"{path.name} (reader)")
        private(path)
        probe = sqlite3.connect(path, timeout=10)
        try:
            setup(probe)
            self._initial = int(probe.execute("SELECT n FROM counts WHERE k = 'rows'").fetchone()[0])
            self.last_seq_at_start = last_seq(probe)
            self.dead_letters_at_start = int(probe.execute("SELECT count(*) FROM dead_letters").fetchone()[0])
        finally:
            probe.close()
        self.hwm_path = path.with_name(path.name + ".hwm")
        self.hwm_at_start = read_hwm(self.hwm_path)
        self.acked_at_start = read_hwm(self.hwm_path, line=1)
        self._hwm = os.open(self.hwm_path, os.O_RDWR | os.O_CREAT, 0o600)
        self.appended = self.dropped = 0  # the writer's counters
        self.acked = self.dead_lettered = 0  # the reader's counters
        self._disk_low = False
        self._drop_episode = 0  # rows dropped since the outbox last became full (drop_oldest)

    @property
    def lost_at_start(self) -> int:
        """Undelivered rows appended before the last stop that the database no longer knows of (a damaged WAL):
        those after the last row it still has, less those the broker had acknowledged (delivered in order)."""
        return max(0, self.hwm_at_start - max(self.last_seq_at_start, self.acked_at_start))

    @property
    def depth(self) -> int:
        return self._initial + self.appended - self.dropped - self.acked - self.dead_lettered

    def oldest_age(self, now: float) -> float | None:
        """Seconds since the oldest undelivered record was made (its payload's `time`); None when empty."""
        row = self._writer.db.execute("SELECT payload FROM outbox ORDER BY seq LIMIT 1").fetchone()  # lane thread
        if row is None:
            return None
        try:
            return round(max(0.0, now - float(json.loads(row[0])["time"])), 1)
        except (ValueError, KeyError, TypeError):
            return None

    def free_mb(self) -> float:
        st = os.statvfs(self.path.parent)
        return st.f_bavail * st.f_frsize / 1e6

    def check_space(self) -> bool:
        """Measure free disk now (the lane on a timer, the drainer after acks); True if it is low."""
        given_back = (r := reserve.of(self.path)) is not None and r.given_back
        # While the reserve is given back the disk counts as full: what is left is for safety writes.
        self._disk_low = given_back or self.free_mb() < self.cfg.min_free_mb
        return self._disk_low

    @property
    def full(self) -> bool:
        return self.depth >= self.cfg.max_events or self._disk_low

    def append(self, event_id: str, topic: str, payload: bytes, qos: int = 1, reserved: bool = False) -> int:
        """The lane thread: commit one event durably; raise OutboxFull only if SQLite itself cannot write.
        `reserved`: a passage or an alarm, which may draw on the state directory's reserve on a full disk
        (a decision may not: one that cannot be recorded is a denial)."""

        def insert() -> sqlite3.Cursor:
            return self._writer.db.execute(
                "INSERT INTO outbox (event_id, topic, qos, payload) VALUES (?, ?, ?, ?)",
                (event_id, topic, qos, payload),
            )

        try:
            cur = reserve.write(self.path, insert) if reserved else insert()
        except sqlite3.Error as exc:
            raise OutboxFull(f"outbox {self.path}: cannot write ({exc})") from exc
        seq = int(cur.lastrowid or 0)
        self.appended += 1
        with contextlib.suppress(OSError):  # a hint for the next start; the row itself is committed
            os.pwrite(self._hwm, b"%020d\n" % seq, 0)
        if self.cfg.on_full == "drop_oldest" and self.depth >= self.cfg.max_events:
            self._drop_oldest()
        return seq

    def _drop_oldest(self) -> None:
        excess = max(1, self.depth - self.cfg.max_events + 1)
        with self._writer.transaction() as db:
            # rowcount, not total_changes: the depth triggers' own updates would be counted too
            gone = db.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)", (excess,)
            ).rowcount
        if not self._drop_episode:
            log.critical("outbox full: dropping the oldest undelivered events to make room (on_full=drop_oldest)")
        self.dropped += gone
        self._drop_episode += gone

    def end_drop_episode(self) -> int:
        """The outbox is no longer full: how many rows this episode dropped (logged once, here)."""
        n, self._drop_episode = self._drop_episode, 0
        if n:
            log.critical(
                "outbox no longer full: %d oldest undelivered events were dropped (%d in all)", n, self.dropped
            )
        return n

    def fetch(self, after: int, limit: int) -> list[tuple[int, str, str, int, bytes]]:
        """The drainer: up to `limit` rows with seq > after, oldest first: (seq, event_id, topic, qos, payload)."""
        return self._reader.db.execute(
            "SELECT seq, event_id, topic, qos, payload FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
            (after, limit),
        ).fetchall()

    def ack(self, seqs: Iterable[int]) -> int:
        """The drainer: delete acknowledged rows in one transaction; returns how many went."""
        batch = json.dumps(list(seqs))
        if batch == "[]":
            return 0
        # One autocommit statement: SQLite takes the write lock, deletes and commits inside a single call
        # that runs without the GIL. Row by row, the lock would be held across hundreds of GIL hand-overs,
        # each up to the interpreter's switch interval, while the lane's append waited for it.
        gone = reserve.write(  # a delete needs room in the write-ahead log: on a full disk, the reserve's
            self.path,
            lambda: (
                self._reader.db.execute(
                    "DELETE FROM outbox WHERE seq IN (SELECT value FROM json_each(?))", (batch,)
                ).rowcount
            ),
        )
        self.acked += gone
        with contextlib.suppress(OSError):  # the hint's second line: the last seq the broker acknowledged
            os.pwrite(self._hwm, b"%020d\n" % max(json.loads(batch)), HWM_LINE)
        return gone

    def dead_letter(self, seqs: list[int], reason: str) -> int:
        """The drainer: move rows the broker keeps refusing out of the way, kept for an operator."""
        marks = ",".join("?" * len(seqs))
        with self._reader.transaction() as db:
            db.execute(
                f"INSERT OR REPLACE INTO dead_letters SELECT seq, event_id, topic, qos, payload, ?, ? FROM outbox"
                f" WHERE seq IN ({marks})",
                (reason, time.time(), *seqs),
            )
            gone = db.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", seqs).rowcount
        self.dead_lettered += gone
        return gone

    @property
    def dead_letters(self) -> int:
        return self.dead_letters_at_start + self.dead_lettered

    def hand_over_writer(self) -> None:
        """The explicit hand-over of the writer (its owner has ended): the next thread to append owns it."""
        self._writer.release()

    def close(self) -> None:
        self._writer.close()
        self._reader.close()
        with contextlib.suppress(OSError):
            os.close(self._hwm)


HWM_LINE = 21  # bytes per line of outbox.db.hwm: the last seq appended, then the last seq acknowledged


def read_hwm(path: Path, line: int = 0) -> int:
    try:
        return int(path.read_bytes().split()[line])
    except (OSError, ValueError, IndexError):
        return 0


def salvage(corrupt: Path, into: Outbox, upper: int = 0) -> tuple[int, int | None]:
    """Copy every readable row of a corrupt outbox into a fresh one, in order: (saved, unreadable or None
    when unknown). A scan in order first; where it breaks, row by row up to `upper` (the last seq written)."""
    readable = _padded(corrupt)
    db = sqlite3.connect(f"file:{readable}?mode=ro", uri=True, timeout=10)
    saved = 0
    last = 0
    bad = 0
    try:
        try:
            for seq, event_id, topic, qos, payload in db.execute(
                "SELECT seq, event_id, topic, qos, payload FROM outbox ORDER BY seq"
            ):
                if _keep(into, event_id, topic, qos, payload):
                    saved += 1
                else:
                    bad += 1
                last = seq
            return saved, bad
        except sqlite3.Error:
            pass
        if upper <= last:
            return saved, None
        for seq in range(last + 1, upper + 1):  # one bad page costs only its own rows
            try:
                row = db.execute("SELECT event_id, topic, qos, payload FROM outbox WHERE seq = ?", (seq,)).fetchone()
            except sqlite3.Error:
                bad += 1
                continue
            if row is not None:
                if _keep(into, *row):
                    saved += 1
                else:
                    bad += 1
        return saved, bad
    finally:
        db.close()
        if readable != corrupt:
            readable.unlink(missing_ok=True)


def _keep(into: Outbox, event_id: object, topic: object, qos: object, payload: object) -> bool:
    """Salvage one row if it is whole (a zeroed page can read back as a row of nulls)."""
    if not (isinstance(event_id, str) and isinstance(topic, str) and qos in (0, 1, 2) and isinstance(payload, bytes)):
        return False
    into.append(event_id, topic, payload, int(qos))
    return True


def _padded(path: Path) -> Path:
    """A cut file reads as malformed throughout; padded back to its header's size, its intact pages read."""
    want = header_size(path)
    if want is None or want <= path.stat().st_size:
        return path
    padded = path.with_name(path.name + ".padded")
    shutil.copyfile(path, padded)
    os.truncate(padded, want)  # the missing pages read as zeros (sparse: no disk used)
    return padded
