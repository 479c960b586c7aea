"""The pictures in docs/console.md, made again: a demo collection (SQLite, made up, no real person), a local
mosquitto and central key, `gate central console`, and Debian's headless chromium signed in as each role.
Run by script/console-screenshots [OUT_DIR] (default docs/console)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from PIL import Image

from gate.central.console.auth import hash_password
from gate.central.db import open_store
from gate.central.store import Store, row_of

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-extensions",
         "--disable-sync", "--no-first-run", "--mute-audio"]  # fmt: skip
PASSWORD = "demo-password-1"
USERS = {"ann": "tracer", "otto": "operator", "sue": "supervisor"}
M = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def visit(token: str, venue: dict[str, Any], t: float, gate_id: str, **extra: Any) -> tuple[Any, ...]:
    ev = {"event_id": uuid.uuid4().hex, "type": "decision", "gate_id": gate_id, "venue": venue, "token": token,
          "kind": "phone", "decision": "admit", "reason": "admitted", "companions": 0, "time": t,
          "clock_synced": True, **extra}  # fmt: skip
    return row_of(ev, json.dumps(ev).encode())


def seed(store: Store, now: float) -> None:
    """A morning at a station, a ferry and a bus: a case token, its contacts, and a small fleet."""
    rail = {"id": "rail-central", "name": "Rail Central", "category": "rail_station"}
    ferry = {"id": "harbour-ferry", "name": "Harbour ferry", "category": "ferry"}
    bus = {"id": "city-bus", "name": "City bus", "category": "bus", "vehicle_id": "bus-1042", "route": "R7",
           "run": "R7-0815"}  # fmt: skip
    t0 = now - 3 * 3600
    rows = [visit("tok-case", rail, t0, "rail-1"), visit("tok-case", bus, t0 + 90 * M, "bus-1042")]
    for i in range(14):
        rows.append(visit(f"tok-{1000 + 37 * i}", rail, t0 + (i - 6) * 4 * M, f"rail-{1 + i % 3}"))
    rows.append(visit("tok-family", rail, t0 + 12 * M, "rail-2", companions=2))
    rows.append(visit("tok-denied", rail, t0 + 7 * M, "rail-3", decision="deny", reason="revoked"))
    rows += [visit(f"tok-{2000 + i}", bus, t0 + (80 + 5 * i) * M, "bus-1042") for i in range(5)]
    rows += [visit(f"tok-{3000 + i}", ferry, t0 + i * 9 * M, "ferry-1") for i in range(8)]
    store.write(rows, [])
    state = {"mode": "normal", "cache_version": 42, "cache_age_s": 600, "policy_version": 0, "clock_synced": True,
             "outbox_depth": 0, "dead_letters": 0, "alarms_active": []}  # fmt: skip
    gates = {"rail-1": (rail, {}), "rail-2": (rail, {}), "rail-3": (rail, {"alarms_active": ["door_forced"]}),
             "ferry-1": (ferry, {"outbox_depth": 37, "cache_age_s": 30 * 3600}), "bus-1042": (bus, {})}  # fmt: skip
    for gate_id, (venue, extra) in gates.items():
        store.seen(gate_id, "availability", {"status": "offline" if gate_id == "ferry-1" else "online"}, now)
        store.seen(gate_id, "state", {**state, "venue": venue, **extra}, now)
        for k in range(4):  # a depth history: the ferry's outbox grows while it is away
            depth = (10 * k + 7) if gate_id == "ferry-1" else 0
            store.seen(gate_id, "telemetry", {"outbox_depth": depth, "uptime_s": 3600 + k}, now - 180 + 60 * k)
    store.seen("bus-1042", "last_stop", {"id": "S4", "name": "Marienplatz", "time": now}, now)
    for name, role in USERS.items():
        store.put_user(name, role, hash_password(PASSWORD))


def shrink(path: Path) -> None:
    """A screenshot as a small PNG: 64 colours are plenty for a form and a table."""
    img = Image.open(path).convert("RGB").quantize(colors=64, method=Image.Quantize.MEDIANCUT)
    img.save(path, optimize=True)


def started(cmd: list[str], port: int, what: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise SystemExit(f"console-screenshots: {what} did not start")
        time.sleep(0.1)
    return proc


def browse(base: str, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    def shot(page: Any, name: str) -> None:
        page.screenshot(path=str(out / f"{name}.png"), full_page=True)
        shrink(out / f"{name}.png")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)

        def signed_in(name: str, width: int = 1360) -> Any:
            page = browser.new_context(viewport={"width": width, "height": 360}).new_page()
            page.set_default_timeout(30_000)
            page.goto(base + "/login")
            page.fill("input[name=name]", name)
            page.fill("input[name=password]", PASSWORD)
            page.click("button:has-text('Sign in')")
            page.wait_for_selector("#who")
            return page

        login = browser.new_context(viewport={"width": 1360, "height": 360}).new_page()
        login.goto(base + "/login")
        shot(login, "login")
        ann = signed_in("ann")
        ann.fill("input[name=token]", "tok-case")
        ann.click("button:has-text('Run')")
        ann.wait_for_selector("#results")
        shot(ann, "trace")
        otto = signed_in("otto", 1720)  # the fleet table's every column
        otto.wait_for_selector("#gate-rail-1")
        shot(otto, "fleet")
        otto.goto(base + "/gate?id=rail-1")
        shot(otto, "gate")
        otto.goto(base + "/fleet/command?gate=ferry-1&name=resync")
        otto.click("#send")
        otto.wait_for_selector("#reply")
        shot(otto, "command")
        sue = signed_in("sue")
        sue.goto(base + "/measures")
        shot(sue, "measures")
        sue.select_option("select[name=status_yellow]", "deny")
        sue.click("#review")
        sue.wait_for_selector("#changes")
        shot(sue, "confirm")
        sue.goto(base + "/audit")
        shot(sue, "audit")
        browser.close()


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "console").resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not Path(CHROMIUM).exists():
        raise SystemExit(f"console-screenshots: {CHROMIUM} is not installed (./install.sh --dev installs it)")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        db = tmp / "central.db"
        store = open_store(db)
        seed(store, time.time())
        store.close()
        keys = json.loads(subprocess.run([sys.executable, "-m", "gate", "central", "keygen", "--out", str(tmp / "k")],
                                         capture_output=True, text=True, check=True, timeout=60).stdout)  # fmt: skip
        mqtt, web = free_port(), free_port()
        (tmp / "mosquitto.conf").write_text(f"listener {mqtt} 127.0.0.1\nallow_anonymous true\n")
        broker = started(["mosquitto", "-c", str(tmp / "mosquitto.conf")], mqtt, "mosquitto")
        cmd = [sys.executable, "-m", "gate", "central", "console", "--db", str(db), "--listen", f"127.0.0.1:{web}",
               "--broker", f"127.0.0.1:{mqtt}", "--key", keys["private_key"], "--zone", "Europe/Berlin"]  # fmt: skip
        console = started(cmd, web, "the console")
        try:
            browse(f"http://127.0.0.1:{web}", out)
        finally:
            for proc in (console, broker):
                proc.terminate()
                proc.wait(10)
    for png in sorted(out.glob("*.png")):
        print(f"{png} {png.stat().st_size // 1024} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
