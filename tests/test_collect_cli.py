"""`gate central collect` as docs/mqtt.md writes it runs; a missing --devices folder and an empty --group are
refused with one line; its progress rewrites one line only on a terminal."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def central(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gate", "central", *args], capture_output=True, text=True, timeout=300, cwd=cwd
    )


def test_the_documented_sqlite_collect_runs_as_written(broker, tmp_path) -> None:
    line = next(x for x in (ROOT / "docs/mqtt.md").read_text().splitlines() if x.startswith("gate central collect"))
    command = line.split("#")[0].split()[1:]
    assert central("provision", "lane-01", "--broker-dir", str(tmp_path / "broker")).returncode == 0
    shutil.copytree(tmp_path / "broker" / "devices", tmp_path / "devices")  # the broker folder's devices/
    argv = [a if a != "..." else f"{broker.host}:{broker.port}" for a in command]
    proc = subprocess.Popen(
        [sys.executable, "-m", "gate", *argv], cwd=tmp_path, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        first = proc.stderr.readline() if proc.stderr else ""
        assert "collect: subscribed to" in first, first + (proc.stderr.read() if proc.poll() is not None else "")
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) in (0, 130)  # stopped by Ctrl-C
    assert (tmp_path / "checkins.db").exists()


def test_a_missing_devices_folder_is_refused_in_one_line(tmp_path) -> None:
    r = central("collect", "--broker", "127.0.0.1:1", "--db", str(tmp_path / "c.db"), "--devices", str(tmp_path / "no"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert f"--devices {tmp_path / 'no'}: no such folder" in r.stderr


@pytest.mark.parametrize("group", ["", "a/b", "+"])
def test_an_empty_or_impossible_group_is_refused_in_one_line(tmp_path, group) -> None:
    (tmp_path / "devices").mkdir()
    r = central(
        "collect", "--broker", "127.0.0.1:1", "--db", "c.db", "--devices", "devices", "--group", group, cwd=tmp_path
    )
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "--group" in r.stderr, r.stderr


def test_progress_is_a_line_each_when_not_on_a_terminal(broker, tmp_path) -> None:
    (tmp_path / "devices").mkdir()
    address = f"{broker.host}:{broker.port}"
    options = ["--db", "c.db", "--devices", "devices", "--idle-timeout", "2.5"]
    r = central("collect", "--broker", address, *options, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr
    progress = [x for x in r.stderr.splitlines() if re.match(r"received \d+, stored", x)]
    assert len(progress) >= 2, r.stderr
