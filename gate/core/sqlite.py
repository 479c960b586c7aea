"""SQLite connections that belong to one thread, and transactions that always end."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

Setup = Callable[[sqlite3.Connection], None]


def private(path: Path) -> None:
    """Owner-only, whatever the umask the gate was started with: create the database file 0600 before SQLite
    does (SQLite gives its -wal and -shm files the main file's mode), and take group and world access away
    from any of the three that has it. These files hold token ids."""
    # Never open and close a descriptor of a database this process may already have open: closing any
    # descriptor of a file drops every POSIX lock the process holds on it, SQLite's included
    # (sqlite.org/howtocorrupt.html, 2.2). So: create it exclusively (nobody can hold locks on a file that
    # did not exist), and change the mode of existing files by path.
    with suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for side in ("", "-wal", "-shm"):
        with suppress(FileNotFoundError):
            extra = Path(f"{path}{side}")
            if extra.stat().st_mode & 0o077:
                extra.chmod(0o600)


class WrongThread(RuntimeError):
    """A connection was used by a thread other than its owner: a design bug, never a runtime condition."""


class Owned:
    """One SQLite connection, opened by the first thread that uses it and usable only by that thread
    (or, once that thread has ended, by the next one). Other threads ask the owner through a queue or
    read a snapshot it publishes; `close()` may come from any thread once the owner is done with it."""

    def __init__(self, path: Path, setup: Setup, timeout: float = 10.0, name: str | None = None) -> None:
        self.path, self._setup, self._timeout = path, setup, timeout
        self.name = name or path.name
        self._db: sqlite3.Connection | None = None
        self._owner: threading.Thread | None = None
        self._lock = threading.Lock()  # guards opening and closing only, never a query

    @property
    def db(self) -> sqlite3.Connection:
        me = threading.current_thread()
        if self._owner is not me:
            self._claim(me)
        assert self._db is not None
        return self._db

    def _claim(self, me: threading.Thread) -> None:
        """Open on first use; ownership passes on only when the owner thread has ended."""
        with self._lock:
            if self._owner is not None and self._owner is not me and self._owner.is_alive():
                raise WrongThread(
                    f"{self.name}: this connection belongs to thread {self._owner.name!r}, not {me.name!r}"
                )
            if self._db is None:
                private(self.path)
                db = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False)
                try:
                    self._setup(db)
                except BaseException:
                    db.close()
                    raise
                self._db = db
            self._owner = me

    @property
    def is_open(self) -> bool:
        return self._db is not None

    @contextmanager
    def transaction(self, immediate: bool = True) -> Iterator[sqlite3.Connection]:
        """BEGIN … COMMIT, or ROLLBACK on any exception: the connection is never left inside a transaction."""
        db = self.db
        db.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
        try:
            yield db
            db.execute("COMMIT")  # a failed COMMIT (disk full) rolls back below too
        except BaseException:
            if db.in_transaction:
                with suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        """Safe to call twice, and from any thread once the owner is done with it."""
        with self._lock:
            if self._db is not None:
                self._db.close()
            self._db, self._owner = None, None


def header_size(path: Path) -> int | None:
    """The length a SQLite file's header says it has (page size × page count); None if it is not one."""
    with path.open("rb") as fh:
        head = fh.read(100)
    if len(head) < 100 or not head.startswith(b"SQLite format 3\0"):
        return None
    page = int.from_bytes(head[16:18], "big")
    return (65536 if page == 1 else page) * int.from_bytes(head[28:32], "big")
