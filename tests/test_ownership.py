"""One owner per SQLite connection: cross-thread use is refused, transactions always end, and the lane's
state can be read while the sync worker applies snapshots (tests/test_sync.py)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading

import pytest

from gate.core.sqlite import Owned, WrongThread, private
from gate.decide.passcache import PassCache
from gate.deliver.outbox import Outbox


def on_thread(fn):
    """Run `fn` on a fresh thread; return its result or raise its exception here."""
    out: list = []

    def run() -> None:
        try:
            out.append(("ok", fn()))
        except BaseException as exc:
            out.append(("err", exc))

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    kind, value = out[0]
    if kind == "err":
        raise value
    return value


def test_a_connection_used_by_a_second_thread_is_refused(tmp_path) -> None:
    cache = PassCache(tmp_path / "passes.db")
    cache.info()  # this thread now owns it
    with pytest.raises(WrongThread, match=r"passes\.db"):
        on_thread(cache.info)
    cache.close()


def test_ownership_passes_on_only_by_an_explicit_hand_over(tmp_path) -> None:
    cache = PassCache(tmp_path / "passes.db")
    on_thread(cache.info)  # owned by a thread that has now ended
    with pytest.raises(WrongThread, match="belongs to the lane thread"):
        cache.info()  # its end hands nothing over by itself
    cache.hand_over()
    assert cache.info().version == 0  # now this thread owns it
    with pytest.raises(WrongThread, match="only its owner"):
        on_thread(lambda: Owned.release(cache._conn))  # and only it may hand it on while it runs
    cache.close()


def test_a_wrong_thread_is_raised_by_faults_never_counted_as_an_episode(tmp_path) -> None:
    from gate.core.faults import Faults

    episodes: list[str] = []
    faults = Faults(on_episode=lambda what, on, detail: episodes.append(what))
    cache = PassCache(tmp_path / "passes.db")
    cache.info()
    with pytest.raises(WrongThread):
        on_thread(lambda: faults.run("reading", cache.info))
    assert faults.snapshot() == {} and episodes == []
    cache.close()


def test_a_failed_transaction_rolls_back_and_leaves_the_connection_usable(tmp_path) -> None:
    conn = Owned(
        tmp_path / "t.db", lambda db: db.execute("CREATE TABLE IF NOT EXISTS t (x INTEGER PRIMARY KEY)"), "test"
    )
    with pytest.raises(sqlite3.IntegrityError), conn.transaction() as db:
        db.execute("INSERT INTO t VALUES (1)")
        db.execute("INSERT INTO t VALUES (1)")
    assert not conn.db.in_transaction
    assert conn.db.execute("SELECT count(*) FROM t").fetchone()[0] == 0  # the first insert went too
    with conn.transaction() as db:
        db.execute("INSERT INTO t VALUES (2)")
    assert conn.db.execute("SELECT count(*) FROM t").fetchone()[0] == 1
    conn.close()


def test_outbox_appends_and_acks_from_their_own_threads_keep_an_exact_depth(tmp_path) -> None:
    box = Outbox(tmp_path / "outbox.db")
    seqs = [box.append(f"e{i}", "t", b"x") for i in range(50)]

    def drain() -> int:
        rows = box.fetch(0, 100)
        return box.ack([r[0] for r in rows[:20]])

    assert on_thread(drain) == 20
    assert box.depth == 30 and len(seqs) == 50
    box.close()
    assert Outbox(tmp_path / "outbox.db").depth == 30  # and it agrees with the file


def test_files_holding_tokens_are_owner_only_whatever_the_umask(tmp_path) -> None:
    """Started with umask 000 (by hand, from a shell with a careless profile), the cache, its staging, the
    outbox and their -wal/-shm files still come out 0600; a cache left group- and world-readable is closed."""
    old = os.umask(0)
    try:
        (tmp_path / "passes.db").touch(mode=0o666)
        os.chmod(tmp_path / "passes.db", 0o666)
        cache, outbox = PassCache(tmp_path / "passes.db"), Outbox(tmp_path / "outbox.db")
        cache.import_rows([(2, ("tok-00000001", 0, None, 0, None))], version=1)
        cache.staging.stage(2, 0, "[]")
        outbox.append("e1", "gate/x/checkin", b"{}")
        files = [p for p in tmp_path.iterdir() if p.is_file()]
        assert {p.name for p in files} >= {"passes.db", "passes.db-wal", "passes.db.staging", "outbox.db-wal"}
        assert {p.name: oct(p.stat().st_mode & 0o777) for p in files} == {p.name: "0o600" for p in files}
        cache.close()
        outbox.close()
    finally:
        os.umask(old)


def test_making_an_open_database_private_keeps_sqlites_locks(tmp_path) -> None:
    """Closing any descriptor of a file drops all of the process's POSIX locks on it, SQLite's included:
    `private()` must never open a database that exists. A writer here holds a RESERVED lock; another
    process must still be unable to take the write lock after `private()` ran."""
    db_path = tmp_path / "held.db"
    held = sqlite3.connect(db_path, isolation_level=None)
    held.execute("CREATE TABLE t (x)")
    held.execute("BEGIN IMMEDIATE")
    held.execute("INSERT INTO t VALUES (1)")
    os.chmod(db_path, 0o644)
    private(db_path)
    assert db_path.stat().st_mode & 0o777 == 0o600
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], timeout=0.2, isolation_level=None)\n"
            "try:\n c.execute('BEGIN IMMEDIATE'); print('took the lock')\n"
            "except sqlite3.OperationalError as e: print(e)",
            str(db_path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    held.execute("ROLLBACK")
    assert probe.stdout.strip() == "database is locked"
