"""Snapshots applied in a child process: as a difference when sorted, else swapped whole; the same result."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gate.decide.keys import TrustStore
from gate.decide.passcache import PassCache, Row
from gate.sync.envelope import Verifier, sign
from gate.sync.passsync import rows_text
from gate.sync.snapapply import SnapshotRefused, apply, apply_in_child, merge


def stage(cache: PassCache, version: int, rows: list[list[object]], per_chunk: int = 3) -> int:
    chunks = [rows[i : i + per_chunk] for i in range(0, len(rows), per_chunk)] or [[]]
    for i, c in enumerate(chunks):
        cache.staging.stage(version, i, json.dumps(c, separators=(",", ":")))
    return len(chunks)


def content(cache: PassCache) -> dict[str, tuple[object, ...]]:
    return {r[0]: tuple(r) for r in cache._db.execute("SELECT * FROM passes")}


def row(i: int, status: int = 0) -> Row:
    return (f"tok-{i:08d}", status, None, 0, None)


def test_a_sorted_snapshot_is_applied_as_a_difference_and_only_changes_are_written(tmp_path: Path) -> None:
    with PassCache(tmp_path / "p.db") as cache:
        cache.replace_all([row(i) for i in range(200)], version=1)
        new = [list(row(i, 2 if i == 7 else 0)) for i in range(201)]  # one changed, one added
        chunks = stage(cache, 2, new, per_chunk=50)
        before = cache._db.total_changes
        assert merge(cache, 2, chunks, len(new), synced_at=123.0) == 201
        info = cache.info()
        assert (info.version, info.count, info.synced_at, info.seq) == (2, 201, 123.0, 0)
        changed = cache.lookup("tok-00000007")
        assert changed is not None and changed.status.value == "red"
        assert cache._db.total_changes - before <= 2 + 4  # two rows written (plus the meta rows)


def test_a_resync_that_repeats_the_cache_puts_nothing_on_disk_until_its_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The child flushes the WAL every FLUSH_EVERY rows of a long write; with nothing written there is nothing
    to flush, and each fdatasync would only cost the lane's outbox a turn at the disk."""
    import os

    import gate.sync.snapapply

    monkeypatch.setattr(gate.sync.snapapply, "FLUSH_EVERY", 10)
    with PassCache(tmp_path / "p.db") as cache:
        cache.replace_all([row(i) for i in range(200)], version=1)
        synced: list[int] = []
        real = os.fdatasync
        monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])
        same = [list(row(i)) for i in range(200)]
        assert merge(cache, 2, stage(cache, 2, same, per_chunk=50), 200, synced_at=1.0) == 200
        assert synced == []  # 20 flush points, no row changed
        changed = [list(row(i, 2 if i < 50 else 0)) for i in range(200)]
        assert merge(cache, 3, stage(cache, 3, changed, per_chunk=50), 200, synced_at=2.0) == 200
        assert synced  # rows were written: the WAL was flushed on the way


def test_a_snapshot_that_drops_passes_or_is_unsorted_is_swapped_whole(tmp_path: Path) -> None:
    with PassCache(tmp_path / "p.db") as cache:
        cache.replace_all([row(i) for i in range(10)], version=1)
        dropped = [list(row(i)) for i in range(1, 10)]
        assert merge(cache, 2, stage(cache, 2, dropped), 9, synced_at=1.0) is None
        assert cache.info().version == 1 and len(content(cache)) == 10  # nothing changed by the attempt
        unsorted = [list(row(i)) for i in (3, 1, 2)]
        assert merge(cache, 3, stage(cache, 3, unsorted), 3, synced_at=1.0) is None
    assert apply(tmp_path / "p.db", 2, 3, 9, synced_at=1.0) == 9
    with PassCache(tmp_path / "p.db") as cache:
        assert set(content(cache)) == {f"tok-{i:08d}" for i in range(1, 10)}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    old=st.dictionaries(st.integers(0, 40), st.integers(0, 2), max_size=30),
    new=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 2)), max_size=30),
    sort=st.booleans(),
)
def test_any_snapshot_leaves_exactly_its_rows_whichever_way_it_is_applied(
    tmp_path_factory: pytest.TempPathFactory, old: dict[int, int], new: list[tuple[int, int]], sort: bool
) -> None:
    path = tmp_path_factory.mktemp("c") / "p.db"
    if sort:
        new = sorted(dict(new).items())
    with PassCache(path) as cache:
        cache.replace_all([row(i, s) for i, s in old.items()], version=1)
        chunks = stage(cache, 2, [list(row(i, s)) for i, s in new])
    apply(path, 2, chunks, len(new), synced_at=5.0)
    with PassCache(path) as cache:
        expected = {r[0]: r for r in (row(i, s) for i, s in new)}  # a token twice: the last one counts
        assert content(cache) == expected
        assert (cache.info().version, cache.info().count) == (2, len(expected))


def test_a_bad_row_is_refused_by_the_child_naming_it_and_the_cache_is_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    with PassCache(path) as cache:
        cache.replace_all([row(1)], version=1)
        chunks = stage(cache, 2, [list(row(1)), ["tok-00000002", 7, None, 0, None]])
        good = stage(cache, 3, [list(row(1)), list(row(2))])
    with pytest.raises(SnapshotRefused, match="status 7 is not 0, 1 or 2"):
        apply_in_child(path, 2, chunks, 2, synced_at=time.time())
    with pytest.raises(SnapshotRefused, match="it has 2 rows, its manifest says 5"):
        apply_in_child(path, 3, good, 5, synced_at=time.time())
    with PassCache(path) as cache:
        assert cache.info().version == 1 and set(content(cache)) == {"tok-00000001"}


def test_a_chunks_rows_are_staged_as_central_hashed_them(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    verifier = Verifier(TrustStore.of([key.public_key()]), "g1", max_bytes=1 << 20, max_age=60)
    rows = [["tok-00000001", 0, None, 0, None], ["tok-00000002", 2, 99, 1, 3]]
    msg = verifier.open(sign(key, "chunk", {"version": 2, "index": 0, "rows": rows}), "chunk")
    assert rows_text(msg) == json.dumps(rows, separators=(",", ":"))
    reordered = msg.__class__(msg.type, msg.gate, msg.ts, msg.nonce, {"rows": rows, "version": 2}, "{}")
    assert rows_text(reordered) == json.dumps(rows, separators=(",", ":"))  # not last: written again


def children_of(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def test_the_snapshot_child_dies_with_a_killed_daemon_and_leaves_the_cache_whole(tmp_path: Path) -> None:
    """Only the daemon's PID is killed (as outside systemd): the kernel kills its child at once, and the cache is
    the old version or the whole new one, never part of it."""
    import os
    import signal
    import subprocess
    import sys

    from conftest import wait_until

    path = tmp_path / "p.db"
    with PassCache(path) as cache:
        cache.replace_all([row(i) for i in range(10)], version=1)
        n = 200_000
        chunks = stage(cache, 2, [list(row(i)) for i in range(n)], per_chunk=20_000)
    code = (
        "import sys; from pathlib import Path; from gate.sync.snapapply import apply_in_child; "
        f"apply_in_child(Path({str(path)!r}), 2, {chunks}, {n}, 1.0)"
    )
    daemon = subprocess.Popen([sys.executable, "-c", code])
    try:
        child = wait_until(lambda: children_of(daemon.pid), 20)
        assert child, "no snapshot child started"
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait(10)
        assert wait_until(lambda: not Path(f"/proc/{child[0]}").exists(), 10), "the child outlived its daemon"
    finally:
        if daemon.poll() is None:
            daemon.kill()
    with PassCache(path) as cache:
        info = cache.info()
        assert (info.version, info.count) in ((1, 10), (2, n)), info
        assert cache.unproven() is None


def test_a_snapshot_child_whose_daemon_is_already_gone_applies_nothing(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    path = tmp_path / "p.db"
    with PassCache(path) as cache:
        cache.replace_all([row(i) for i in range(10)], version=1)
        chunks = stage(cache, 2, [list(row(i)) for i in range(20)])
    env = {**os.environ, "GATE_SNAPSHOT_PARENT": "1"}  # not its parent: the daemon that started it is gone
    argv = [sys.executable, "-m", "gate.sync.snapapply", str(path), "2", str(chunks), "20", "1.0"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert proc.returncode == 1 and "nothing applied" in proc.stderr
    with PassCache(path) as cache:
        assert cache.info().version == 1
