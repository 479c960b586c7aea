"""The README's console quick start runs as written from the repository: demo and collect, an operator, the
console; then the demo's check-ins are found by venue through the console (install.sh is what made .venv)."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from pathlib import Path

import httpx
import pytest

from conftest import free_port, wait_until

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def quick_start_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- console quick start")[1].split("```sh\n")[1].split("```")[0]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.strip()]


@pytest.mark.timeout(600)
def test_the_readme_console_quick_start_works_verbatim() -> None:
    lines = quick_start_lines()
    assert lines[0] == "./install.sh --dev" and (ROOT / ".venv/bin/gate").exists()
    shutil.rmtree(ROOT / ".demo", ignore_errors=True)
    for line in lines[1:-1]:
        r = subprocess.run(["bash", "-c", line], cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (line, r.stdout[-2000:], r.stderr[-2000:])
        if line.startswith("script/demo"):
            assert "stored 23 new" in r.stdout, r.stdout[-500:]
    port = free_port()
    console = subprocess.Popen(["bash", "-c", f"exec {lines[-1]} --listen 127.0.0.1:{port}"], cwd=ROOT)
    try:

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        assert wait_until(lambda: listening() or console.poll() is not None) and console.poll() is None
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", follow_redirects=True, timeout=30) as c:
            pre = re.search(r'name="pre" value="([^"]+)"', c.get("/login").text)
            assert pre
            r = c.post("/login", data={"pre": pre[1], "name": "ann", "password": "demo-password-1"})
            assert r.url.path == "/trace"
            csrf = re.search(r'name="csrf" value="([^"]+)"', r.text)
            assert csrf
            r = c.post("/trace", data={"csrf": csrf[1], "mode": "trace", "venue": "rail-central"})
            assert r.status_code == 200 and '<h2 id="summary">23 check-ins' in r.text
    finally:
        console.terminate()
        console.wait(10)
        shutil.rmtree(ROOT / ".demo", ignore_errors=True)
