"""The console's form handlers under Hypothesis: any input gets a page with a clear message, never a 500; and
the sign-in's guards: CSRF, rate limit, cookie flags, roles. In-process (Starlette's TestClient), real SQLite."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from conftest import wait_until
from gate.central.console import forms
from gate.central.console.app import Console, build
from gate.central.console.auth import hash_password
from gate.central.db import open_store

PASSWORD = "correct-horse-battery"
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=80)


def client_for(tmp_path: Path, secure: bool = False) -> TestClient:
    store = open_store(tmp_path / "c.db")
    for name, role in (("ann", "tracer"), ("sue", "supervisor"), ("otto", "operator")):
        store.put_user(name, role, hash_password(PASSWORD))
    return TestClient(build(Console(store, None, secure_cookies=secure)), base_url="https://testserver")


def sign_in(client: TestClient, name: str, password: str = PASSWORD) -> Any:
    pre = re.search(r'name="pre" value="([^"]+)"', client.get("/login").text)
    assert pre
    return client.post("/login", data={"pre": pre[1], "name": name, "password": password}, follow_redirects=False)


def csrf(client: TestClient, path: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', client.get(path).text)
    assert m
    return m[1]


@pytest.fixture(scope="module")
def tracer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[TestClient, str]]:
    client = client_for(tmp_path_factory.mktemp("console"))
    assert sign_in(client, "ann").status_code == 303
    yield client, csrf(client, "/trace")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.fixed_dictionaries({}, optional={k: text for k in ("mode", "token", "venue", "window", "from", "to")}))
def test_any_trace_form_gets_a_page_never_a_500(tracer: tuple[TestClient, str], form: dict[str, str]) -> None:
    client, token = tracer
    r = client.post("/trace", data={**form, "csrf": token})
    assert r.status_code in (200, 400), r.text[:300]
    if r.status_code == 400:
        assert 'class="error"' in r.text
    r = client.post("/trace.csv", data={**form, "csrf": token})
    assert r.status_code in (200, 400)


@given(
    st.dictionaries(st.sampled_from(["version", "status_green", "status_yellow", "stale_hours", "stale_card"]), text)
)
def test_policy_form_errors_name_the_field(form: dict[str, str]) -> None:
    current = {"version": 3, "status_actions": {"green": "admit", "yellow": "assist", "red": "deny"}}
    try:
        doc = forms.policy_changes(form, current)
    except forms.FormError as exc:
        assert str(exc).split(":")[0]
    else:
        assert doc["version"] > 3


def test_trace_form_messages() -> None:
    with pytest.raises(forms.FormError, match="token: 6 to 32"):
        forms.trace_query({"token": "GT1:AAAA-a-pass-code-is-not-a-token!"})
    with pytest.raises(forms.FormError, match="window: give a number from 0 to 1440"):
        forms.trace_query({"token": "tok-case", "window": "nan"})
    with pytest.raises(forms.FormError, match="to: the period ends before it starts"):
        forms.trace_query({"token": "tok-case", "from": "2026-05-02", "to": "2026-05-01"})
    q = forms.trace_query({"token": "tok-case", "from": "2026-05-01T08:00", "window": "15"}, now=1777708800.0)
    assert (q.mode, q.token, q.window_min, q.t_from) == ("contacts", "tok-case", 15.0, 1777622400.0)


def test_trace_periods_are_bounded_and_bus_venues_accepted() -> None:
    from zoneinfo import ZoneInfo

    now = 1777708800.0
    q = forms.trace_query({"mode": "trace", "venue": "city-bus/bus-1042"}, now=now)
    assert (q.venue, q.t_to, q.t_from) == ("city-bus/bus-1042", now, now - forms.DEFAULT_DAYS * 86400)
    with pytest.raises(forms.FormError, match="at most 31 days"):
        forms.trace_query({"mode": "trace", "venue": "rail-central", "from": "2026-01-01", "to": "2026-03-01"})
    with pytest.raises(forms.FormError, match="venue: a venue id"):
        forms.trace_query({"mode": "trace", "venue": "a/b/c/d"})
    berlin = forms.trace_query({"token": "tok-case", "from": "2026-05-01T10:00"}, ZoneInfo("Europe/Berlin"), now)
    assert berlin.t_from == 1777622400.0  # 10:00 in Berlin (summer time) is 08:00 UTC


def test_sign_in_guards_cookies_csrf_and_roles(tmp_path: Path) -> None:
    client = client_for(tmp_path, secure=True)
    assert client.get("/trace", follow_redirects=False).headers["location"] == "/login"
    r = sign_in(client, "ann")
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "secure" in cookie
    assert r.headers["content-security-policy"].startswith("default-src 'self'")
    r = client.post("/trace", data={"token": "tok-case", "csrf": "forged"})
    assert r.status_code == 403 and "not sent from this console" in r.text
    assert client.get("/audit").status_code == 403
    other = client_for(tmp_path)
    pre = re.search(r'name="pre" value="([^"]+)"', other.get("/login").text)
    assert pre
    bad = other.post("/login", data={"pre": "stale", "name": "ann", "password": PASSWORD})
    assert bad.status_code == 403


def test_failed_sign_ins_slow_down_but_never_lock_the_owner_out(tmp_path: Path) -> None:
    from gate.central.console.auth import MAX_DELAY, RateLimit

    limit = RateLimit()
    delays = []
    for _ in range(12):
        delays.append(limit.delay("ip:a", "name:sue"))
        limit.failed("ip:a", "name:sue")
    assert delays[:3] == [0, 0, 0] and delays[3:6] == [1, 2, 4] and delays[-1] == MAX_DELAY
    assert limit.delay("ip:b", "name:sue") == MAX_DELAY  # the name, from any address
    assert limit.delay("ip:a", "name:ann") == MAX_DELAY  # the address, for any name
    assert limit.delay("ip:b", "name:ann") == 0
    client = client_for(tmp_path)
    for _ in range(4):
        r = sign_in(client, "sue", "wrong-password!")
        assert r.status_code == 401 and "Wrong name or password." in r.text
    assert sign_in(client, "sue").status_code == 303  # the right password still signs its owner in


def test_the_policy_in_force_is_shown_only_if_centrals_key_signed_it(broker: Any, keys: Any) -> None:
    from gate.central.console.measures import Link
    from gate.central.mqtt import publisher, retained
    from gate.sync.envelope import sign
    from gate.sync.worker import central_topics

    link = Link.make((broker.host, broker.port), "gate", str(keys.private_path))
    assert link is not None
    assert link.policy_in_force()[1] is None  # nothing retained: the built-in defaults, no signature time
    topic = central_topics("gate")["policy"]
    forged = sign(keys.other, "policy", {"version": 9, "policy": {"passback_seconds": 1}}, ts=1_780_000_000.0)
    with publisher((broker.host, broker.port)) as pub:
        pub(topic, forged, True)
    assert retained((broker.host, broker.port), topic) == forged  # the broker holds it ...
    policy, signed = link.policy_in_force()
    assert signed is None and policy["version"] == 0  # ... and the console does not show it as in force
    assert link.publish({**link.policy_in_force()[0], "version": 4, "passback_seconds": 30}) == 4
    policy, signed = wait_until(lambda: (p := link.policy_in_force())[1] and p) or (None, None)
    assert policy["version"] == 4 and policy["passback_seconds"] == 30 and signed is not None


def test_console_user_add_and_a_collection_without_operators(pg_url: str) -> None:
    """`console-user add` reads the password from stdin and refuses a short one; a PostgreSQL collection made
    before the console (no operators' table) is refused at start with what to do, not at the first sign-in."""
    import subprocess
    import sys

    def central(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "gate", "central", *args]
        return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60)

    store = open_store(pg_url)
    store.db.execute("DROP TABLE console_users")  # type: ignore[attr-defined]
    store.close()
    r = central("console", "--db", pg_url, "--listen", "127.0.0.1:1")
    assert r.returncode == 1 and "no console operators yet" in r.stderr and "console-user add" in r.stderr
    r = central("console-user", "add", "ann", "--role", "tracer", "--db", pg_url, stdin="short\n")
    assert r.returncode == 1 and "at least 10 characters" in r.stderr
    r = central("console-user", "add", "ann", "--role", "tracer", "--db", pg_url, stdin=PASSWORD + "\n")
    assert r.returncode == 0 and "ann is a tracer" in r.stdout
    store = open_store(pg_url)
    user = store.user("ann")
    store.close()
    assert user is not None and user["role"] == "tracer" and PASSWORD not in user["hash"]
    assert user["hash"].startswith("$argon2id$")


def test_an_ended_session_sends_the_live_fleet_table_to_sign_in(tmp_path: Path) -> None:
    client = client_for(tmp_path)
    r = client.get("/fleet", headers={"HX-Request": "true"}, follow_redirects=False)
    assert r.status_code == 204 and r.headers["HX-Redirect"] == "/login"
    assert sign_in(client, "otto").headers["location"] == "/fleet"
    assert client.get("/", follow_redirects=False).headers["location"] == "/fleet"
    r = client.get("/fleet", headers={"HX-Request": "true"})
    assert r.status_code == 200 and '<table id="gates">' in r.text and "<html" not in r.text


def test_pollers_of_one_fleet_view_share_one_report_and_one_page_until_it_expires() -> None:
    from gate.central.console.fleetview import FleetQuery, FleetView

    made: list[int] = []

    def report() -> list[dict[str, Any]]:
        made.append(1)
        return [{"gate_id": f"g{i}", "venue_id": "v", "vehicle_id": None, "route": None, "flags": []} for i in range(3)]

    view = FleetView(report, ttl=3600)
    first = view.page(FleetQuery())
    assert view.page(FleetQuery()) is first and len(made) == 1 and first.total == 3
    assert view.page(FleetQuery(search="g1")).matching == 1 and len(made) == 1
    view.forget()
    assert view.page(FleetQuery()) is not first and len(made) == 2


def _naive_fleet_page(report: list[dict[str, Any]], show: str, search: str, sort: str, after: str) -> Any:
    """The page as it was made before the index: filter, sort the rest, find `after`, cut (the reference)."""
    from gate.central.console.fleetindex import FLAGS, PAGE, SEARCHED, SORTS

    needle = search.lower()
    chosen = [
        r
        for r in report
        if (not show or FLAGS[show] in r["flags"])
        and (not needle or any(needle in str(r[k] or "").lower() for k in SEARCHED))
    ]
    chosen.sort(key=lambda r: (SORTS[sort](r), r["gate_id"]))
    start = next((i + 1 for i, r in enumerate(chosen) if r["gate_id"] == after), 0) if after else 0
    rows = chosen[start : start + PAGE]
    more = start + PAGE < len(chosen)
    return [r["gate_id"] for r in rows], len(chosen), rows[-1]["gate_id"] if more and rows else None


_fleet_rows = st.lists(
    st.fixed_dictionaries(
        {
            "venue_id": st.sampled_from([None, "", "V1", "v1", "v2", "Venue-01"]),
            "vehicle_id": st.sampled_from([None, "bus-7", "BUS-8"]),
            "route": st.sampled_from([None, "r1", "R12"]),
            "last_seen": st.sampled_from([None, 0, 100, 100.5, 200]),  # ties on purpose
            "outbox_depth": st.sampled_from([None, 0, 3, 3, 50]),
            "cache_age_s": st.sampled_from([None, 0.0, 10.0, 10.0, 7200.0]),
            "flags": st.lists(st.sampled_from(["offline", "stale_cache", "outbox_growing"]), unique=True),
        }
    ),
    max_size=260,  # past two pages of 100
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    lines=_fleet_rows,
    show=st.sampled_from(["", "offline", "stale", "backing-up"]),
    search=st.sampled_from(["", "v1", "V", "bus", "r1", "g1", "zz"]),
    sort=st.sampled_from(["gate", "venue", "seen", "outbox", "cache-age"]),
    after_at=st.integers(-1, 300),
)
def test_the_indexed_fleet_page_equals_filtering_then_sorting_every_time(
    lines: list[dict[str, Any]], show: str, search: str, sort: str, after_at: int
) -> None:
    """Sorting once per report then filtering gives the same rows, ties, counts and next page as filtering then
    sorting per request did, for any `after` (a shown row, a row filtered out now, or an unknown gate)."""
    from gate.central.console.fleetindex import FleetIndex

    report = [{"gate_id": f"g{i:03d}", **line} for i, line in enumerate(lines)]
    after = "" if after_at < 0 else f"g{after_at:03d}"
    page = FleetIndex.of(report).page(show, search, sort, after)
    assert ([r["gate_id"] for r in page.rows], page.matching, page.next_after) == _naive_fleet_page(
        report, show, search, sort, after
    )
    assert page.total == len(report)
    for name, flag in {"offline": "offline", "stale": "stale_cache", "backing-up": "outbox_growing"}.items():
        assert page.counts[name] == sum(flag in r["flags"] for r in report)


def test_an_expired_fleet_report_is_served_while_the_next_is_made_in_the_background() -> None:
    """No poller waits for the fleet query once there is a report: the expired one is served while one worker
    makes the next; a report far older than its interval (a database that stopped answering) is not served."""
    import threading
    import time

    from conftest import wait_until
    from gate.central.console.fleetview import FleetQuery, FleetView

    release, made = threading.Event(), []

    def report() -> list[dict[str, Any]]:
        if made:
            assert release.wait(20)
        made.append(1)
        return [{"gate_id": f"g{len(made)}", "venue_id": "v", "vehicle_id": None, "route": None, "flags": []}]

    view = FleetView(report, ttl=0.05)
    assert view.page(FleetQuery()).rows[0]["gate_id"] == "g1"
    assert wait_until(lambda: view.page(FleetQuery()).rows[0]["gate_id"] == "g1" and view._refreshing, 5)
    assert [view.page(FleetQuery()).rows[0]["gate_id"] for _ in range(3)] == ["g1"] * 3  # the query still runs
    release.set()
    assert wait_until(lambda: view.page(FleetQuery()).rows[0]["gate_id"] == "g2")
    assert view._cached is not None
    view._cached = (time.monotonic() - 60, *view._cached[1:])  # far past its interval
    assert view.page(FleetQuery()).rows[0]["gate_id"] == "g3" and len(made) == 3
    view.close()
