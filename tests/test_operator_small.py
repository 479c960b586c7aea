"""Small things an operator meets first: install.sh takes Debian's Python, serial lines are not decode times, and
a gate whose clock is not synchronised says why at start."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gate.core import clock
from gate.ops.telemetry import Stats
from gate.scanner import Observation

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not Path("/usr/bin/python3").exists(), reason="not Debian")
def test_install_uses_debians_python_unless_python_is_given(tmp_path) -> None:
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}  # a python3 first on PATH (pyenv, a venv)
    (tmp_path / "python3").write_text("#!/bin/sh\nexit 1\n")
    (tmp_path / "python3").chmod(0o755)
    run = [str(ROOT / "install.sh"), "--dry-run", "--prefix", str(tmp_path / "root")]
    r = subprocess.run(run, capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and "would run: /usr/bin/python3 -m venv --system-site-packages" in r.stdout, r.stdout
    r = subprocess.run(run, capture_output=True, text=True, env={**env, "PYTHON": "/opt/py/bin/python3"}, timeout=60)
    assert "would run: /opt/py/bin/python3 -m venv" in r.stdout, r.stdout + r.stderr


def test_a_serial_line_counts_as_a_scan_but_not_as_a_decode_time() -> None:
    stats = Stats()
    line = Observation((b"code",))  # what the serial source hands over: text, nothing decoded here
    assert line.decode_ms is None
    stats.scanned(line.decode_ms)
    stats.scanned(1.5)  # a camera frame
    assert stats.scans == 2
    assert sum(stats.decode_buckets) == 1 and stats.decode_seconds_sum == pytest.approx(0.0015)
    assert stats.snapshot()["decode_ms_p50"] == 1.5


def test_why_the_clock_is_unsynced_names_what_was_asked(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(clock, "TIMESYNCD_FLAG", tmp_path / "synchronized")
    monkeypatch.setattr(clock, "kernel_says_synced", lambda: False)
    why = clock.unsynced_why("auto")
    assert why is not None and "synchronized is absent" in why and "adjtimex says" in why
    (tmp_path / "synchronized").touch()
    assert clock.unsynced_why("auto") is None and clock.unsynced_why("assume_synced") is None
    assert "before 2026" in (clock.unsynced_why("assume_synced", now=86400.0) or "")


@pytest.mark.slow
def test_the_daemon_says_once_at_start_why_decisions_are_clock_unsynced(tmp_path, keys) -> None:
    cfg = tmp_path / "gate.toml"
    cfg.write_text(
        f'[gate]\nid = "lane-c"\nstate_dir = "{tmp_path / "state"}"\n[venue]\nid = "v"\n'
        f'[trust]\nkeys = ["{keys.public_path}"]\n[clock]\nsync_source = "auto"\n[gpio]\npin_factory = "mock"\n'
        f'[scanner]\nsource = "images"\nimages_path = "{tmp_path}"\n[mqtt]\nhost = "127.0.0.1"\nport = 1\n'
    )
    script = textwrap.dedent(f"""
        import logging, os, signal, threading
        from pathlib import Path
        from gate.core import clock
        clock.TIMESYNCD_FLAG = Path("{tmp_path}/absent")
        clock.kernel_says_synced = lambda: False
        said = threading.Event()
        class Watch(logging.Handler):
            def emit(self, record):
                if "clock not synchronised" in record.getMessage():
                    said.set()
        logging.getLogger("gate.lane.daemon").addHandler(Watch())
        def stop():
            said.wait(60)
            os.kill(os.getpid(), signal.SIGTERM)
        threading.Thread(target=stop, daemon=True).start()
        from gate.cli import main
        raise SystemExit(main(["run", "--config", "{cfg}"]))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180)
    lines = [x for x in r.stderr.splitlines() if "clock not synchronised" in x]
    assert len(lines) == 1 and "WARNING" in lines[0] and "clock_unsynced" in lines[0], r.stderr[-3000:]
    assert "absent is absent (systemd-timesyncd has not synchronised)" in lines[0]
