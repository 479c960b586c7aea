"""The console under the ways staff and time break it, in Debian's chromium over real PostgreSQL and mosquitto:
a stale confirmation page never rolls measures back, removing a user ends their session at once, and a command
to a gate that does not answer keeps only its own page waiting (another user's pages go on loading)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from test_console import PASSWORD, Console, browser, console, signed_in  # noqa: F401 (fixtures)

from gate.central.mqtt import retained
from gate.central.publish import signed_body
from gate.sync.worker import central_topics

pytestmark = pytest.mark.slow


def central(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "gate", "central", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)


def policy_version(broker: Any, keys: Any) -> int | None:
    body = signed_body(retained((broker.host, broker.port), central_topics("gate")["policy"]), keys.private)
    return None if body is None else int(body["version"])


@pytest.mark.timeout(300)
def test_a_stale_confirmation_page_is_refused_and_the_retained_policy_stays(
    console: Console,  # noqa: F811
    browser: Any,  # noqa: F811
    broker: Any,
    keys: Any,
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=20_000)
    b = f"{broker.host}:{broker.port}"
    key = str(keys.private_path)
    doc = tmp_path / "policy.json"
    doc.write_text(json.dumps({"version": 1}))
    assert central("publish-policy", str(doc), "--broker", b, "--key", key).returncode == 0
    sup = signed_in(browser, console, "sue-super")
    sup.goto(console.url + "/measures")
    expect(sup.locator("#in-force")).to_contain_text("version 1, signed")
    sup.fill("input[name=version]", "2")
    sup.select_option("select[name=status_yellow]", "deny")
    sup.click("#review")
    expect(sup.locator("#replaces")).to_contain_text("replaces version 1")
    doc.write_text(json.dumps({"version": 3, "passback_seconds": 5}))  # someone else, meanwhile
    assert central("publish-policy", str(doc), "--broker", b, "--key", key).returncode == 0
    sup.click("#confirm")
    expect(sup.locator(".error")).to_contain_text("Not published")
    expect(sup.locator(".error")).to_contain_text("now version 3, not 1 as this page showed")
    expect(sup.locator("#in-force")).to_contain_text("version 3")
    assert policy_version(broker, keys) == 3
    assert [a for a in console.store.audits() if a["action"] == "publish-policy"] == []


@pytest.mark.timeout(300)
def test_removing_a_user_ends_their_session_in_the_browser(console: Console, browser: Any, pg_url: str) -> None:  # noqa: F811
    from playwright.sync_api import expect

    expect.set_options(timeout=20_000)
    ann = signed_in(browser, console, "ann-tracer")
    ann.fill("input[name=token]", "tok-case")
    ann.click("button:has-text('Run')")
    expect(ann.locator("#summary")).to_contain_text("contact codes")
    r = central("console-user", "remove", "ann-tracer", "--db", pg_url)
    assert r.returncode == 0, r.stderr
    ann.goto(console.url + "/trace")
    assert ann.url.endswith("/login")
    ann.fill("input[name=name]", "ann-tracer")
    ann.fill("input[name=password]", PASSWORD)
    ann.click("button:has-text('Sign in')")
    expect(ann.locator(".error")).to_contain_text("Wrong name or password")


@pytest.mark.timeout(300)
def test_a_command_to_an_offline_gate_waits_alone_while_another_user_browses(
    console: Console,  # noqa: F811
    browser: Any,  # noqa: F811
) -> None:
    from playwright.sync_api import expect

    expect.set_options(timeout=30_000)
    ops = signed_in(browser, console, "otto-ops")
    tracer = signed_in(browser, console, "ann-tracer")
    ops.click("#gate-bus-1042 .commands a:has-text('out-of-service')")  # nothing answers for bus-1042
    ops.click("#send")
    expect(ops.locator("#reply")).to_contain_text("Sent, waiting for the gate")
    command_url = ops.url
    # The tracer's pages load while the command waits for its reply (up to 10 s) ...
    tracer.goto(console.url + "/trace")
    tracer.fill("input[name=token]", "tok-case")
    tracer.click("button:has-text('Run')")
    expect(tracer.locator("#summary")).to_contain_text("2 contact codes")
    assert "Sent, waiting for the gate" in ops.inner_text("#reply")  # ... which had not come yet
    expect(ops.locator("#reply")).to_contain_text("no reply from the gate within 10 s")
    ops.reload()  # a reload shows the outcome again; it never sends the command twice
    expect(ops.locator("#reply")).to_contain_text("no reply from the gate within 10 s")
    assert ops.url == command_url
    commands = [a for a in console.store.audits() if a["action"] == "command"]
    assert [(a["operator"], a["params"], a["rows"]) for a in commands] == [
        ("otto-ops", {"gate": "bus-1042", "name": "out-of-service"}, 0)
    ]


@pytest.mark.timeout(300)
def test_every_page_fits_a_390_px_phone_with_sign_out_visible(console: Console, browser: Any) -> None:  # noqa: F811
    from playwright.sync_api import expect

    expect.set_options(timeout=20_000)
    pages = {"ann-tracer": ["/trace"], "otto-ops": ["/fleet", "/gate?id=bus-1042"]}
    pages["sue-super"] = ["/measures", "/audit"]
    for name, paths in pages.items():
        ctx = browser.new_context(viewport={"width": 390, "height": 844})
        page = ctx.new_page()
        page.goto(console.url + "/login")
        page.fill("input[name=name]", name)
        page.fill("input[name=password]", PASSWORD)
        page.click("button:has-text('Sign in')")
        page.wait_for_selector("#who")
        for path in paths:
            page.goto(console.url + path)
            if path == "/trace":  # with its results: the widest page a tracer sees
                page.fill("input[name=token]", "tok-case")
                page.click("button:has-text('Run')")
                expect(page.locator("#summary")).to_contain_text("contact codes")
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, (name, page.url, width)
            box = page.locator("button:has-text('Sign out')").bounding_box()
            assert box is not None and box["x"] + box["width"] <= 390, (name, page.url, box)
        ctx.close()
