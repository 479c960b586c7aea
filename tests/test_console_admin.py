"""The console's operators and limits in-process (Starlette's TestClient, real SQLite): user administration
ending sessions, sessions shared through the database, bounded bodies, odd stored ids, CSV cells, --db checks."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient
from test_console_forms import PASSWORD, client_for, csrf, sign_in

from conftest import wait_until
from gate.central.console.app import Console, build
from gate.central.console.auth import hash_password
from gate.central.db import open_store
from gate.central.tracing import write_contacts_csv


def central(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "gate", "central", *args]
    return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)


def test_each_console_user_change_ends_that_users_sessions(tmp_path: Path) -> None:
    db = str(tmp_path / "c.db")
    client = client_for(tmp_path)  # ann tracer, sue supervisor, otto operator in c.db
    assert sign_in(client, "ann").status_code == 303 and client.get("/trace").status_code == 200
    for action, extra in (("set-role", ["--role", "operator"]), ("set-password", []), ("disable", [])):
        stdin = PASSWORD + "\n" if action == "set-password" else ""
        r = central("console-user", action, "ann", "--db", db, *extra, stdin=stdin)
        assert r.returncode == 0, r.stderr
        assert client.get("/trace", follow_redirects=False).headers["location"] == "/login", action
        if action != "disable":
            assert sign_in(client, "ann").status_code == 303
    assert sign_in(client, "ann").status_code == 401  # disabled: the right password no longer signs in
    assert central("console-user", "enable", "ann", "--db", db).returncode == 0
    assert sign_in(client, "ann").headers["location"] == "/fleet"  # an operator now
    listed = central("console-user", "list", "--db", db).stdout
    assert "ann" in listed and "operator" in listed and "1 sessions" in listed
    assert central("console-user", "remove", "ann", "--db", db).returncode == 0
    assert client.get("/fleet", follow_redirects=False).headers["location"] == "/login"
    r = central("console-user", "remove", "ann", "--db", db)
    assert r.returncode == 1 and "no operator named ann" in r.stderr


def test_two_console_processes_share_sessions_through_the_database(tmp_path: Path) -> None:
    one = client_for(tmp_path)
    assert sign_in(one, "otto").status_code == 303
    other = TestClient(build(Console(open_store(tmp_path / "c.db"), None)), base_url="https://testserver")
    other.cookies.update(one.cookies)
    assert other.get("/fleet").status_code == 200  # the session one made, served by the other
    csrf = one.get("/fleet").text.split('name="csrf" value="')[1].split('"')[0]
    other.post("/logout", data={"csrf": csrf})
    assert one.get("/fleet", follow_redirects=False).status_code == 303  # signed out in both


class HeldGate:
    """A link whose gate answers a command only when `answer` is set (as a real gate after a while)."""

    def __init__(self) -> None:
        self.answer, self.sent = threading.Event(), threading.Event()

    def command(self, gate_id: str, name: str) -> dict[str, Any] | None:
        self.sent.set()
        if not self.answer.wait(20):
            return None
        return {"ok": True, "command": name, "result": {"mode": "out_of_service"}}


def test_a_command_sent_by_one_console_process_shows_its_reply_in_another(tmp_path: Path) -> None:
    """Two consoles on one database (two processes behind a proxy): the command posted to one; its page,
    served by the other, says it waits for the gate, then shows the reply the first one's worker wrote."""
    gate = HeldGate()
    one_console = Console(open_store(tmp_path / "c.db"), gate)  # type: ignore[arg-type]
    one = TestClient(build(one_console), base_url="https://testserver")
    store = open_store(tmp_path / "c.db")
    store.put_user("otto", "operator", hash_password(PASSWORD))
    store.put_user("olga", "operator", hash_password(PASSWORD))
    store.seen("lane-1", "state", {"mode": "normal"}, 1.0)
    store.close()
    other = TestClient(build(Console(open_store(tmp_path / "c.db"), None)), base_url="https://testserver")
    assert sign_in(one, "otto").status_code == 303
    other.cookies.update(one.cookies)
    form = {"csrf": csrf(one, "/fleet"), "gate_id": "lane-1", "name": "out-of-service"}
    r = one.post("/fleet/command", data=form, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/fleet/command/")
    page = r.headers["location"]
    assert gate.sent.wait(20)
    assert "Sent, waiting for the gate" in other.get(page).text
    gate.answer.set()
    assert wait_until(lambda: "The gate replied: done" in other.get(page).text)
    shown = other.get(page).text
    assert "out-of-service → gate lane-1" in shown and "out_of_service" in shown and "by otto" in shown
    assert other.get(page + "x").status_code == 404
    assert sign_in(other, "olga").status_code == 303  # another operator's command is not theirs to see
    assert other.get(page).status_code == 404
    assert one_console.commands is not None
    one_console.commands.close()


def test_a_command_whose_console_stopped_says_so_instead_of_waiting_for_ever() -> None:
    from gate.central.commandlog import Sent
    from gate.central.console.commands import LOST_S, as_of

    sent = Sent("c1", "lane-1", "resync", "otto", 1000.0)
    assert as_of(sent, 1000.0 + LOST_S - 1) == sent
    lost = as_of(sent, 1000.0 + LOST_S + 1)
    assert lost is not None and lost.done and lost.error and "stopped" in lost.error


def test_a_mistyped_db_is_refused_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "centarl.db"
    r = central("console", "--db", str(missing), "--listen", "127.0.0.1:1")
    assert r.returncode == 1 and "no such collection database" in r.stderr and not missing.exists()
    r = central("console-user", "add", "ann", "--role", "tracer", "--db", str(missing), stdin=PASSWORD + "\n")
    assert r.returncode == 1 and not missing.exists()
    r = central("console-user", "add", "ann", "--role", "tracer", "--db", str(missing), "--create", stdin=PASSWORD)
    assert r.returncode == 0 and missing.exists()


def test_large_bodies_are_refused_before_parsing(tmp_path: Path) -> None:
    client = client_for(tmp_path)
    r = client.post("/login", content=b"", headers={"content-length": str(300 << 20)})
    assert r.status_code == 413

    def chunks():  # no length given: counted while streaming, cut off past the limit
        for _ in range(1000):
            yield b"a" * 65536

    r = client.post("/login", content=chunks(), headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 413


def test_odd_gate_ids_keep_the_live_fleet_table_selectable(tmp_path: Path) -> None:
    client = client_for(tmp_path)
    store = open_store(tmp_path / "c.db")
    for gate_id in ("lane-1", 'it\'s "odd" <b>', "bus/7"):
        store.seen(gate_id, "availability", {"status": "online"}, 1.0)
    assert sign_in(client, "otto").status_code == 303
    r = client.get("/fleet", headers={"HX-Request": "true"})
    assert r.status_code == 200
    ids = [line.split('id="')[1].split('"')[0] for line in r.text.splitlines() if "<tr id=" in line]
    assert ids == ["gate-bus_2f_7", "gate-it_27_s_20__22_odd_22__20__3c_b_3e_", "gate-lane-1"]
    assert "<b>" not in r.text


def test_the_contacts_csv_streams_in_chunks_with_one_header() -> None:
    from gate.central.console.pages import csv_chunks

    rows = [{"token": f"tok-{i:05d}", "group_size": 1} for i in range(1201)]
    chunks = list(csv_chunks([rows[:500], rows[500:1000], rows[1000:]]))
    lines = "".join(chunks).splitlines()
    assert len(chunks) == 3 and lines[0].startswith("token,") and len(lines) == 1202
    assert [line.split(",")[0] for line in lines[1:]] == [r["token"] for r in rows]
    assert "".join(csv_chunks([[]])).splitlines() == [lines[0]]


def test_a_long_contact_list_is_paged_and_its_csv_has_every_row(tmp_path: Path) -> None:
    """450 contact check-ins: pages of 200 by keyset with the totals on each; the CSV (read a page at a time
    on the server) holds all 450; the page and the CSV are each one audited query."""
    from test_central_db import T0, checkin

    client = client_for(tmp_path)
    store = open_store(tmp_path / "c.db")
    rows = [checkin("tok-case", "rail-central", T0 + 3600 * h) for h in range(4)]
    rows += [checkin(f"tok-{i % 150:05d}", "rail-central", T0 + 24 * i, event_id=f"e{i:04d}") for i in range(450)]
    store.write(rows, [])
    assert sign_in(client, "ann").status_code == 303
    form = {"csrf": csrf(client, "/trace"), "token": "tok-case", "window": "30", "from": str(T0 - 3600)}
    form["to"] = str(T0 + 4 * 3600)
    seen: list[str] = []
    after = ""
    for want in (200, 200, 50):
        page = client.post("/trace", data={**form, "mode": "contacts", "after": after}).text
        assert "150 contact codes" in page and "450 check-ins" in page
        shown = re.findall(r"<td>(tok-\d{5})</td>", page)
        assert len(shown) == want
        seen += shown
        found = re.search(r'name="after" value="([^"]+)"', page)
        assert (found is not None) == (want == 200)
        after = found[1] if found else ""
    assert seen == [f"tok-{i % 150:05d}" for i in range(450)]
    csv_text = client.post("/trace.csv", data=form).text
    assert [line.split(",")[0] for line in csv_text.splitlines()[1:]] == seen
    audits = [a for a in store.audits() if a["action"] == "contacts"]
    assert [a["rows"] for a in audits] == [450] * 4 and [bool(a["params"].get("after")) for a in audits] == [
        False,
        True,
        True,
        False,
    ]


def test_csv_cells_that_look_like_formulas_are_neutralised() -> None:
    out = io.StringIO()
    row = {"token": '=HYPERLINK("x")', "venue_id": "+1", "gate_id": "@a", "decision": "-2", "reason": "\tx"}
    write_contacts_csv([row], out)
    line = out.getvalue().splitlines()[1]
    assert "'=HYPERLINK" in line and "'+1" in line and "'@a" in line and "'-2" in line and "'\tx" in line


def test_favicon_is_served(tmp_path: Path) -> None:
    client = client_for(tmp_path)
    r = client.get("/favicon.ico")
    assert r.status_code == 200 and r.headers["content-type"].startswith("image/svg")


def _fleet(store, n: int) -> None:  # type: ignore[no-untyped-def]
    import time

    now = time.time() - n
    for i in range(n):
        gate_id = f"g-{i:03d}"
        store.seen(gate_id, "availability", {"status": "offline" if i % 10 == 0 else "online"}, now + i)
        venue = {"id": "city-bus", "vehicle_id": f"bus-{i}", "route": "R7"} if i % 25 == 0 else {"id": f"v-{i % 3}"}
        store.seen(gate_id, "state", {"outbox_depth": i % 17, "venue": venue}, now + i)


def test_the_fleet_is_searched_filtered_sorted_and_paged_on_the_server(tmp_path: Path) -> None:
    client = client_for(tmp_path)
    _fleet(open_store(tmp_path / "c.db"), 250)
    assert sign_in(client, "otto").status_code == 303

    def ids(text: str) -> list[str]:
        return [line.split('id="gate-')[1].split('"')[0] for line in text.splitlines() if "<tr id=" in line]

    first = client.get("/fleet")
    assert ids(first.text) == [f"g-{i:03d}" for i in range(100)] and "250 gates shown (100 on this page)" in first.text
    following = first.text.split('id="next" href="')[1].split('"')[0].replace("&amp;", "&")
    assert ids(client.get(following).text)[0] == "g-100"
    assert ids(client.get("/fleet?q=R7").text) == [f"g-{i:03d}" for i in range(0, 250, 25)]
    assert ids(client.get("/fleet?show=offline&sort=seen").text)[:2] == ["g-240", "g-230"]
    deepest = ids(client.get("/fleet?sort=outbox").text)[0]
    assert int(deepest[2:]) % 17 == 16
    assert ids(client.get("/fleet?sort=nonsense&show=%27%22").text)[0] == "g-000"  # unknown values: defaults


def test_a_gates_page_shows_its_state_decisions_chart_and_commands(tmp_path: Path) -> None:
    import json
    import time
    import uuid

    from gate.central.store import row_of

    client = client_for(tmp_path)
    store = open_store(tmp_path / "c.db")
    now = time.time()
    store.seen("lane-1", "state", {"mode": "normal", "alarms_active": ["door_forced"]}, now)
    evs = [
        {
            "event_id": uuid.uuid4().hex,
            "type": "decision",
            "gate_id": "lane-1",
            "venue": {"id": "v"},
            "token": "tok-secret1",
            "decision": "admit",
            "reason": "admitted",
            "time": now - 60 * k,
        }
        for k in range(30)
    ]
    store.write([row_of(ev, json.dumps(ev).encode()) for ev in evs], [])
    assert sign_in(client, "otto").status_code == 303
    page = client.get("/gate", params={"id": "lane-1"}).text
    assert "door_forced" in page and "Check-ins per hour, last 24 hours (30)" in page
    assert page.count("<rect") == 24 and "admit (admitted)" in page and "tok-secret1" not in page
    assert "/fleet/command?gate=lane-1&amp;name=out-of-service" in page
    assert client.get("/gate", params={"id": "nope'\""}).status_code == 404


def test_the_audit_is_filtered_and_paged_on_the_server(tmp_path: Path) -> None:
    client = client_for(tmp_path)
    store = open_store(tmp_path / "c.db")
    for i in range(150):
        store.audit("ann" if i % 2 else "bob", "trace" if i % 3 else "contacts", {"token": f"tok-{i:05d}"}, i)
    assert sign_in(client, "sue").status_code == 303
    page = client.get("/audit").text
    assert page.count("<tr><td>") == 100 and 'id="older"' in page
    older = page.split('id="older" href="')[1].split('"')[0].replace("&amp;", "&")
    assert client.get(older).text.count("<tr><td>") == 50
    only = client.get("/audit", params={"operator": "ann", "action": "contacts"}).text
    assert only.count("<tr><td>") == 25 and "bob" not in only.split('id="audit"')[1]
    assert client.get("/audit", params={"action": "drop table"}).status_code == 400


def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(tmp_path: Path, monkeypatch: Any) -> None:
    import uvicorn

    from gate.central.cli import build_parser
    from gate.central.console.serve import console

    client_for(tmp_path)  # makes c.db with operators
    seen: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.append(kw))
    for extra in ([], ["--secure-cookies"], ["--trusted-proxy", "10.0.0.5", "--trusted-proxy", "10.0.0.6"]):
        args = build_parser().parse_args(["console", "--db", str(tmp_path / "c.db"), *extra])
        args.broker_given = False
        assert console(args) == 0
    assert [kw["proxy_headers"] for kw in seen] == [False, False, True]
    assert seen[2]["forwarded_allow_ips"] == ["10.0.0.5", "10.0.0.6"]


def test_a_broker_outage_is_a_message_on_the_page_never_a_500(tmp_path: Path, keys: Any) -> None:
    from conftest import free_port, wait_until
    from gate.central.console.measures import Link

    store = open_store(tmp_path / "c.db")
    client_for(tmp_path)
    store.seen("lane-1", "availability", {"status": "online"}, 1.0)
    link = Link(("127.0.0.1", free_port()), "gate", keys.private)  # nothing listens there
    client = TestClient(build(Console(store, link)), base_url="https://testserver")
    assert sign_in(client, "sue").status_code == 303
    r = client.get("/measures")
    assert r.status_code == 200 and "The broker could not be reached" in r.text
    client.post("/logout", data={"csrf": r.text.split('name="csrf" value="')[1].split('"')[0]})
    assert sign_in(client, "otto").status_code == 303
    page = client.get("/fleet/command", params={"gate": "lane-1", "name": "resync"}).text
    csrf = page.split('name="csrf" value="')[1].split('"')[0]
    r = client.post("/fleet/command", data={"csrf": csrf, "gate_id": "lane-1", "name": "resync"})
    assert r.status_code == 200 and "/fleet/command/" in str(r.url)
    assert wait_until(lambda: "the broker could not be reached" in client.get(str(r.url)).text)
