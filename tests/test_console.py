"""The staff's web console in a real browser (Debian's headless chromium, driven by Playwright) against a real
PostgreSQL with collected check-ins and a real mosquitto: sign-in per role, a gate going offline without a
reload, a contact trace and its CSV, the audit row, a measure published and signed, a page refused by role."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from test_sync import central, gate, pumping, settle  # noqa: F401 (central, gate: test_sync's fixtures)

from conftest import free_port, wait_until
from gate.central.console.auth import hash_password
from gate.central.db import open_store
from gate.central.mqtt import retained
from gate.central.store import Store, row_of
from gate.decide.keys import TrustStore, key_id_of
from gate.sync.worker import central_topics

pytestmark = pytest.mark.slow  # starts a broker, a daemon, a database or a browser

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[1]
SHOTS = os.environ.get("GATE_CONSOLE_SCREENSHOTS")  # e.g. docs/console: where the pages' pictures go
PASSWORD = "correct-horse-battery"
USERS = {"ann-tracer": "tracer", "otto-ops": "operator", "sue-super": "supervisor"}
M = 60.0


def visit(token: str, venue: str, t: float, gate_id: str, **extra: Any) -> tuple[Any, ...]:
    ev = {
        "event_id": uuid.uuid4().hex,
        "type": "decision",
        "gate_id": gate_id,
        "venue": {"id": venue, "name": venue.replace("-", " ").title()},
        "token": token,
        "kind": "phone",
        "decision": "admit",
        "reason": "admitted",
        "companions": 0,
        "time": t,
        "clock_synced": True,
        **extra,
    }
    return row_of(ev, json.dumps(ev).encode())


@dataclass
class Console:
    url: str
    store: Store
    proc: subprocess.Popen[str]


def seed(store: Store, now: float) -> None:
    t0 = now - 3600
    store.write(
        [
            visit("tok-case", "rail-central", t0, "lane-1"),
            visit("tok-near", "rail-central", t0 + 10 * M, "lane-2"),
            visit("tok-family", "rail-central", t0 - 20 * M, "lane-1", companions=2),
            visit("tok-far", "rail-central", t0 + 50 * M, "lane-2"),
            visit("tok-elsewhere", "bus-north", t0, "bus-1042"),
        ],
        [],
    )
    state = {"mode": "normal", "cache_version": 7, "cache_age_s": 600, "policy_version": 0, "clock_synced": True}
    for gate_id in ("lane-1", "lane-2"):
        store.seen(gate_id, "availability", {"status": "online"}, now)
        store.seen(gate_id, "state", {**state, "outbox_depth": 0, "dead_letters": 0, "alarms_active": []}, now)
    bus = {"id": "city-bus", "name": "City bus", "category": "bus", "vehicle_id": "bus-1042", "route": "R7"}
    store.seen("bus-1042", "availability", {"status": "online"}, now)
    store.seen("bus-1042", "state", {**state, "outbox_depth": 4, "venue": {**bus, "run": "R7-0815"}}, now)
    store.seen("bus-1042", "last_stop", {"id": "S1", "name": "Marienplatz", "time": now}, now)
    for name, role in USERS.items():
        store.put_user(name, role, hash_password(PASSWORD))


@contextmanager
def running_console(pg_url: str, broker: Any, key: Path) -> Iterator[Console]:
    """`gate central console` as a person starts it, on a free loopback port, over a seeded PostgreSQL."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is not installed (./install.sh --dev installs Debian's chromium)")
    store = open_store(pg_url)
    seed(store, time.time())
    port = free_port()
    cmd = [sys.executable, "-m", "gate", "central", "console", "--db", pg_url, "--listen", f"127.0.0.1:{port}"]
    cmd += ["--broker", f"{broker.host}:{broker.port}", "--key", str(key), "--refresh", "0.5"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    assert wait_until(lambda: listening() or proc.poll() is not None), "the console did not start"
    assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
    yield Console(f"http://127.0.0.1:{port}", store, proc)
    proc.terminate()
    proc.wait(10)
    store.close()


@pytest.fixture
def console(pg_url: str, broker: Any, keys: Any) -> Iterator[Console]:
    with running_console(pg_url, broker, keys.private_path) as c:
        yield c


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def signed_in(browser: Any, console: Console, name: str) -> Any:
    page = browser.new_context(viewport={"width": 1400, "height": 800}, accept_downloads=True).new_page()
    page.set_default_timeout(20_000)
    page.goto(console.url + "/login")
    page.fill("input[name=name]", name)
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text('Sign in')")
    page.wait_for_selector("#who")
    assert page.inner_text("#who") == f"{name} ({USERS[name]})"
    return page


def shot(page: Any, name: str, tmp_path: Path) -> None:
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(SHOTS) / path.name)


@pytest.mark.timeout(300)
def test_each_role_in_a_real_browser(console: Console, browser: Any, broker: Any, keys: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=20_000)
    page = browser.new_page()
    page.goto(console.url + "/login")
    shot(page, "login", tmp_path)

    # A tracer traces a code: companions as one group, venue names, minutes apart; then downloads the CSV.
    tracer = signed_in(browser, console, "ann-tracer")
    assert tracer.url.endswith("/trace")
    tracer.fill("input[name=token]", "tok-case")
    tracer.click("button:has-text('Run')")
    expect(tracer.locator("#summary")).to_contain_text("2 contact codes (4 people with companions)")
    table = tracer.inner_text("#results")
    assert "tok-near" in table and "tok-family" in table and "tok-far" not in table and "tok-elsewhere" not in table
    assert "Rail Central" in table and "3 (with companions)" in table and "10.0" in table
    shot(tracer, "trace", tmp_path)
    with tracer.expect_download() as got:
        tracer.click("#csv")
    rows = list(csv.DictReader(io.StringIO(Path(got.value.path()).read_text())))
    assert {r["token"]: r["group_size"] for r in rows} == {"tok-near": "1", "tok-family": "3"}
    audits = [a for a in console.store.audits() if a["action"] == "contacts"]
    assert [(a["operator"], a["params"]["token"], a["rows"]) for a in audits] == [("ann-tracer", "tok-case", 2)] * 2
    tracer.goto(console.url + "/fleet")  # outside the tracer's role
    expect(tracer.locator("#denied")).to_contain_text("does not include this page")

    # A supervisor sees those queries in the audit log, the token cut short; tracing is not theirs.
    sup = signed_in(browser, console, "sue-super")
    sup.goto(console.url + "/audit")
    audit = sup.inner_text("#audit")
    assert "ann-tracer" in audit and "contacts" in audit and "tok-case" not in audit and "tok…" in audit
    shot(sup, "audit", tmp_path)
    response = sup.goto(console.url + "/trace")
    assert response is not None and response.status == 403

    # An operator watches a gate go offline, without reloading the page; the bus shows its route and run.
    ops = signed_in(browser, console, "otto-ops")
    assert ops.url.endswith("/fleet")
    expect(ops.locator("#gate-lane-1 .avail")).to_have_text("online")
    assert "route R7 run R7-0815 last stop Marienplatz" in ops.inner_text("#gate-bus-1042")
    ops.evaluate("window.notReloaded = true")
    console.store.seen("lane-1", "availability", {"status": "offline"}, time.time())
    expect(ops.locator("#gate-lane-1 .avail")).to_have_text("offline")
    assert ops.evaluate("window.notReloaded") is True
    assert "offline" in ops.inner_text("#gate-lane-1 .flags")
    ops.goto(console.url + "/fleet?show=offline")
    expect(ops.locator("#counts")).to_contain_text("1 gates shown")
    ops.goto(console.url + "/fleet")
    shot(ops, "fleet", tmp_path)
    assert ops.goto(console.url + "/measures").status == 403  # type: ignore[union-attr]

    # The supervisor publishes a measure, after a confirmation step; central's key signs it, retained.
    sup.goto(console.url + "/measures")
    expect(sup.locator("#in-force")).to_contain_text("version 0")
    shot(sup, "measures", tmp_path)
    sup.select_option("select[name=status_yellow]", "deny")
    sup.click("#review")
    expect(sup.locator("#changes")).to_contain_text("status_actions")
    shot(sup, "confirm", tmp_path)
    sup.click("#confirm")
    expect(sup.locator("#published")).to_contain_text("version 1 published")
    expect(sup.locator("#in-force")).to_contain_text("version 1, signed")
    expect(sup.locator("#now-yellow")).to_have_text("deny")
    env = json.loads(retained((broker.host, broker.port), central_topics("gate")["policy"]) or b"{}")
    trust = TrustStore.from_files([keys.public_path])
    assert env["kid"] == key_id_of(keys.private.public_key()).hex()
    import base64

    assert trust.verify(bytes.fromhex(env["kid"]), base64.b64decode(env["sig"]), env["msg"].encode()) is not None
    msg = json.loads(env["msg"])
    assert msg["version"] == 1 and msg["policy"]["status_actions"]["yellow"] == "deny"
    assert [a["operator"] for a in console.store.audits() if a["action"] == "publish-policy"] == ["sue-super"]


@pytest.mark.timeout(300)
def test_commands_and_measures_reach_a_real_gate(gate: Any, central: Any, pg_url: str, broker: Any) -> None:  # noqa: F811
    """Through a real broker to a real gate (test_sync's): the operator's out-of-service comes back with the gate's
    reply, and the supervisor's policy is verified and applied by the gate."""
    from playwright.sync_api import expect, sync_playwright

    from gate.actuate.mode import Mode

    def in_the_browser(url: str) -> str:  # the whole browser session on the helper thread; this one is the lane
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            expect.set_options(timeout=20_000)
            ops = signed_in(b, Console(url, None, None), "otto-ops")  # type: ignore[arg-type]
            expect(ops.locator("#gate-lane-t")).to_be_visible()
            ops.click("#gate-lane-t .commands a:has-text('out-of-service')")
            expect(ops.locator("#confirm-text")).to_contain_text("out-of-service to gate lane-t")
            ops.click("#send")
            expect(ops.locator("#reply")).to_contain_text("The gate replied")
            reply = ops.inner_text("#reply") + "\n" + ops.inner_text("#reply-table")
            sup = signed_in(b, Console(url, None, None), "sue-super")  # type: ignore[arg-type]
            sup.goto(url + "/measures")
            sup.fill("input[name=stale_hours]", "48")
            sup.click("#review")
            sup.click("#confirm")
            expect(sup.locator("#published")).to_contain_text("version 1 published")
            b.close()
            return reply

    with running_console(pg_url, broker, central.pub.with_suffix(".key")) as c:
        c.store.seen("lane-t", "availability", {"status": "online"}, time.time())
        reply = pumping(gate, lambda: in_the_browser(c.url), timeout=120)
    assert "The gate replied: done" in reply and "ok\tyes" in reply and "{" not in reply
    assert settle(gate, lambda: gate.decider.policy.version == 1)
    assert gate.decider.policy.cache_stale_after_seconds == 48 * 3600
    assert gate.actuator.mode is Mode.OUT_OF_SERVICE
