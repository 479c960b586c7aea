"""The pass-status cache (SQLite), its imports, and the policy document (TinyDB, atomic)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from gate.config.policy import Policy
from gate.core.errors import ConfigError, ImportRowError
from gate.decide.codes import Status
from gate.decide.passcache import CacheEntry, PassCache
from gate.decide.passimport import read_file
from gate.decide.policy import PolicyStore


def rows(n: int, status: int = 0, prefix: str = "tok") -> list[tuple[str, int, None, int, None]]:
    return [(f"{prefix}-{i:08d}", status, None, 0, None) for i in range(n)]


def test_lookup_returns_the_cached_entry(tmp_path: Path) -> None:
    with PassCache(tmp_path / "p.db") as c:
        c.replace_all([CacheEntry("tok-aaaaaa", Status.RED, 123, True, 2).as_row()], version=7, synced_at=5.0)
        assert c.lookup("tok-aaaaaa") == CacheEntry("tok-aaaaaa", Status.RED, 123, True, 2)
        assert c.lookup("tok-missing") is None
        info = c.info()
        assert (info.version, info.count, info.synced_at, info.seq) == (7, 1, 5.0, 0)


def test_the_lanes_kept_lookup_cursor_holds_no_snapshot_between_lookups(tmp_path: Path) -> None:
    """The lane keeps one cursor for its lookups. If a statement stayed open between them, the lane would go on
    reading the old snapshot (a revocation would not reach it) and the WAL could never be checkpointed."""
    db = tmp_path / "p.db"
    with PassCache(db) as writer, PassCache(db) as lane:
        writer.replace_all(rows(3, status=0), version=1)
        assert lane.lookup("tok-00000001") == ("tok-00000001", Status.GREEN, None, False, None)
        assert lane.lookup("tok-missing") is None
        writer.apply_delta([("tok-00000001", 2, None, 1, None)], ["tok-00000002"], seq=1)
        assert lane.lookup("tok-00000001") == CacheEntry("tok-00000001", Status.RED, None, True, None)
        assert lane.lookup("tok-00000002") is None
        busy, wal_pages, done = writer._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        assert busy == 0 and wal_pages == done == 0  # no reader pinned an old snapshot


def test_snapshot_swap_is_atomic_for_a_concurrent_reader(tmp_path: Path) -> None:
    db = tmp_path / "p.db"
    with PassCache(db) as writer:
        writer.replace_all(rows(50_000, status=0), version=1)
        reader = PassCache(db)
        seen: list[Status | None] = []
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                entry = reader.lookup("tok-00049999")
                seen.append(entry.status if entry else None)

        t = threading.Thread(target=read)
        t.start()
        writer.replace_all(rows(50_000, status=2), version=2)
        stop.set()
        t.join()
        assert None not in seen  # never an empty or half-built table
        assert set(seen) <= {Status.GREEN, Status.RED} and seen[-1] is Status.RED
        reader.hand_over()  # the reading thread has ended: this one takes the connection over, explicitly
        assert reader.info().version == 2
        reader.close()


def test_delta_upserts_and_deletes_in_one_transaction(tmp_path: Path) -> None:
    with PassCache(tmp_path / "p.db") as c:
        c.replace_all(rows(3), version=1)
        c.apply_delta([("tok-00000000", 2, None, 0, None)], ["tok-00000001"], seq=4)
        assert c.lookup("tok-00000000").status is Status.RED
        assert c.lookup("tok-00000001") is None
        assert (c.info().seq, c.info().count) == (4, 2)


def test_csv_import_reports_every_bad_row_by_line_number(tmp_path: Path) -> None:
    f = tmp_path / "passes.csv"
    f.write_text(
        "token,status,valid_until,revoked,companions\n"
        "tok-good01,green,,0,\n"
        "13812345678,green,,0,\n"
        "tok-good02,purple,,0,\n"
        "tok-good03,red,soon,0,\n"
        "tok-good04,red,,maybe,99\n"
    )
    with pytest.raises(ImportRowError) as exc:
        read_file(f)
    lines = [n for n, _ in exc.value.problems]
    assert lines == [3, 4, 5, 6]
    assert "phone or ID-card" in str(exc.value) and "purple" in str(exc.value) and "soon" in str(exc.value)


def test_ndjson_import_reads_all_fields(tmp_path: Path) -> None:
    f = tmp_path / "passes.ndjson"
    f.write_text(
        '{"token": "tok-nd0001", "status": "yellow", "valid_until": 99, "revoked": true, "companions": 2}\n'
        "\n"
        '{"token": "tok-nd0002", "status": "green"}\n'
    )
    assert read_file(f) == [("tok-nd0001", 1, 99, 1, 2), ("tok-nd0002", 0, None, 0, None)]
    f.write_text('{"token": "tok-nd0001", "status": "green"}\nnot json\n[1]\n{"token": "tok-x00001", "extra": 1}\n')
    with pytest.raises(ImportRowError) as exc:
        read_file(f)
    assert [n for n, _ in exc.value.problems] == [2, 3, 4]


def _gate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gate", *args], capture_output=True, text=True, timeout=60)


def test_cache_commands_import_stats_and_lookup(tmp_path: Path) -> None:
    db, f = tmp_path / "passes.db", tmp_path / "p.csv"
    f.write_text("token,status\ntok-cli001,red\ntok-cli002,green\n")
    assert _gate("cache", "--db", str(db), "import", str(f)).returncode == 0
    stats = json.loads(_gate("cache", "--db", str(db), "stats").stdout)
    assert (stats["entries"], stats["version"]) == (2, 1)
    found = json.loads(_gate("cache", "--db", str(db), "lookup", "tok-cli001").stdout)
    assert found["status"] == "red"
    missing = _gate("cache", "--db", str(db), "lookup", "tok-nope01")
    assert missing.returncode == 1 and json.loads(missing.stdout)["found"] is False
    f.write_text("token,status\ntok-cli003,bogus\n")
    bad = _gate("cache", "--db", str(db), "import", str(f))
    assert bad.returncode == 1 and "line 2" in bad.stderr and "Traceback" not in bad.stderr
    assert json.loads(_gate("cache", "--db", str(db), "stats").stdout)["entries"] == 2  # nothing applied


def test_policy_store_starts_from_defaults_and_keeps_newer_versions(tmp_path: Path) -> None:
    store = PolicyStore(tmp_path / "device.json", Policy(passback_seconds=10))
    assert store.load().passback_seconds == 10
    store.save(Policy(version=3, passback_seconds=99))
    assert PolicyStore(tmp_path / "device.json", Policy()).load() == Policy(version=3, passback_seconds=99)
    assert not list(tmp_path.glob(".device.json.*"))  # no temp files left behind


def test_corrupt_stored_policy_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "device.json").write_text('{"policy": {"1": {"version": "x"}}}')
    with pytest.raises(ConfigError, match="stored policy is invalid"):
        PolicyStore(tmp_path / "device.json", Policy()).load()
