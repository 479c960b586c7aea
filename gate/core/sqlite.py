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
    """One SQLite connection that belongs to one thread. It names its owner (`owner`: the role of the thread
    meant to use it, "lane", "outbox-drain", "central-sync") when it is made, and opens on that thread's first
    use, which binds it there. Any other thread gets `WrongThread`, even after the owner has ended: ownership
    moves only through `release()` (the owner gives it up; the next first use binds again). Other threads ask
    the owner through a queue or read a snapshot it publishes; `close()` may come from any thread once the
    owner is done with it."""

    def __init__(self, path: Path, setup: Setup, owner: str, timeout: float = 10.0, name: str | None = None) -> None:
        self.path = path
        self._setup = setup
        self._timeout = timeout
        self.owner = owner
        self.name = name or path.name
        self._db: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # guards opening, releasing and closing only, never a query

    @property
    def db(self) -> sqlite3.Connection:
        me = threading.current_thread()
        if self._thread is not me:
            self._claim(me)
        assert self._db is not None
        return self._db

    @property
    def thread(self) -> threading.Thread | None:
        """The thread this connection is bound to (None until its first use, or after `release()`)."""
        return self._thread

    def _claim(self, me: threading.Thread) -> None:
        """Open and bind on first use; a connection bound to another thread is refused."""
        with self._lock:
            if self._thread is not None and self._thread is not me:
                raise WrongThread(
                    f"{self.name}: this connection belongs to the {self.owner} thread "
                    f"({self._thread.name!r}), not {me.name!r}"
                )
            if self._db is None:
                self._db = self._open()
            self._thread = me

    def _open(self) -> sqlite3.Connection:
        private(self.path)
        db = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None, check_same_thread=False)
        try:
            self._setup(db)
        except BaseException:
            db.close()
            raise
        return db

    def release(self) -> None:
        """The explicit hand-over: the owner (or anyone, once the owner has ended) closes the connection and
        unbinds it; the next thread to use it opens it again and owns it."""
        me = threading.current_thread()
        owner = self._thread
        if owner is not None and owner is not me and owner.is_alive():
            raise WrongThread(f"{self.name}: only its owner {owner.name!r} may hand it over, not {me.name!r}")
        self.close()

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
            self._db = None
            self._thread = None


def header_size(path: Path) -> int | None:
    """The length a SQLite file's header says it has (page size × page count); None if it is not one."""
    with path.open("rb") as fh:
        head = fh.read(100)
    if len(head) < 100 or not head.startswith(b"SQLite format 3\0"):
        return None
    page = int.from_bytes(head[16:18], "big")
    return (65536 if page == 1 else page) * int.from_bytes(head[28:32], "big")
