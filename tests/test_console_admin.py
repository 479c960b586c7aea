"""The console's operators and limits in-process (Starlette's TestClient, real SQLite): user administration
ending sessions, sessions shared through the database, bounded bodies, odd stored ids, CSV cells, --db checks."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

from starlette.testclient import TestClient
from test_console_forms import PASSWORD, client_for, sign_in

from gate.central.console.app import Console, build
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
