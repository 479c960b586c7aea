#!/usr/bin/env python3
"""The staff's web console at city scale: `gate central console` over a throwaway PostgreSQL holding --rows
check-ins (28 days, 500 venues), --audit-rows audit rows and --gates gates' fleet documents, driven over HTTP
by signed-in clients (httpx, keep-alive), each page side by side with the raw SQL it stands on:

fleet       GET /fleet (first page of 100, flags over every gate) and its htmx poll; raw SELECT of the fleet
fleet-find  GET /fleet?q=…&sort=outbox (server-side search and sort)
gate        GET /gate?id=… (state, recent decisions, check-ins per hour); raw SELECT of its day
contacts    POST /trace contacts of a random token (±30 min, 28 days; first page of 200 and the totals); its raw SQL
venue       POST /trace a venue's check-ins over 28 days (first page of 200); raw SELECT … LIMIT 201
audit       GET /audit (newest 100) and filtered by operator and action; raw SELECT … LIMIT 101
poll-busy   the fleet poll while two tracers run their heaviest queries back to back (±1,440 min contacts,
            31-day venue traces)

Targets: p95 <= 200 ms for every page, <= 300 ms for the busy poll. --smoke: small sizes, checks only.
usage: bench/console.py [--rows 10000000] [--audit-rows 1000000] [--gates 5000] [--requests 200] [--smoke]
                        [--keep DIR (a filled cluster kept and reused)] [--busy-only]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from central import DAYS, T_END, VENUES, fill, free_port

from _util import parse, pct

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from pgcluster import PgCluster, pg_bin

from gate.central.console.auth import hash_password
from gate.central.contacts import PAGE_SQL
from gate.central.db import open_store
from gate.central.store import DAY

PASSWORD = "bench-password-1"
PAGE_TARGET_MS, BUSY_TARGET_MS = 200.0, 300.0
OPERATORS = [f"staff-{i:02d}" for i in range(20)]


def seed_fleet(url: str, gates: int) -> None:
    """Fleet documents as the collector's seen() leaves them (state, availability, telemetry, a depth history)."""
    now = time.time()
    with (
        psycopg.connect(url, autocommit=True) as db,
        db.cursor() as cur,
        cur.copy("COPY fleet (gate_id, doc) FROM STDIN") as copy,
    ):
        for i in range(gates):
            doc = {
                "last_seen": now,
                "availability": {"status": "offline" if i % 50 == 0 else "online"},
                "state": {
                    "mode": "normal",
                    "cache_version": 7,
                    "cache_age_s": 600 + i,
                    "policy_version": 3,
                    "clock_synced": True,
                    "outbox_depth": i % 7,
                    "dead_letters": 0,
                    "alarms_active": [],
                    "venue": {"id": f"venue-{i % VENUES:03d}", "name": "V", "category": "rail_station"},
                },
                "telemetry": {"outbox_depth": i % 3, "uptime_s": 100},
                "depth_history": [[now - 300 + 60 * k, (i % 3) * k] for k in range(30)],
            }
            copy.write_row((f"lane-{i % VENUES:03d}-{i // VENUES}", json.dumps(doc)))
    store = open_store(url)
    for name, role in (("tracer", "tracer"), ("tracer2", "tracer"), ("tracer3", "tracer"), ("ops", "operator")):
        store.put_user(name, role, hash_password(PASSWORD))
    store.put_user("sup", "supervisor", hash_password(PASSWORD))
    store.close()


def seed_audit(url: str, rows: int) -> None:
    rng = random.Random(5)
    with psycopg.connect(url, autocommit=True) as db, db.cursor() as cur:
        with cur.copy("COPY audit (at, operator, action, params, rows) FROM STDIN") as copy:
            for i in range(rows):
                params = json.dumps({"token": f"tok-{rng.randrange(10**6):08d}", "from": 0, "to": 1e18})
                action = ("contacts", "trace", "command", "publish-policy")[min(3, int(rng.random() ** 3 * 4))]
                copy.write_row((T_END - rows + i, rng.choice(OPERATORS), action, params, rng.randrange(50)))
        db.execute("ANALYZE audit")


def client(base: str, name: str) -> tuple[httpx.Client, str]:
    c = httpx.Client(base_url=base, timeout=60, follow_redirects=True)
    pre = re.search(r'name="pre" value="([^"]+)"', c.get("/login").text)
    assert pre
    r = c.post("/login", data={"pre": pre[1], "name": name, "password": PASSWORD})
    assert r.status_code == 200, r.status_code
    csrf = re.search(r'name="csrf" value="([^"]+)"', r.text)
    assert csrf
    return c, csrf[1]


def ms(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def get(c: httpx.Client, path: str, expect: str, **kw: Any) -> float:
    r = c.get(path, **kw)
    assert r.status_code == 200 and expect in r.text, (path, r.status_code, r.text[:300])
    return r.elapsed.total_seconds() * 1000


def post(c: httpx.Client, path: str, data: dict[str, str], expect: str) -> float:
    r = c.post(path, data=data)
    assert r.status_code == 200 and expect in r.text, (path, r.status_code, r.text[:300])
    return r.elapsed.total_seconds() * 1000


def start_console(url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-m", "gate", "central", "console", "--db", url, "--listen", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.monotonic() + 60
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit("the console did not start")
        time.sleep(0.1)
    return proc, f"http://127.0.0.1:{port}"


def measure(base: str, url: str, args: argparse.Namespace) -> dict[str, list[float]]:
    ops, _ = client(base, "ops")
    tracer, csrf = client(base, "tracer")
    sup, _ = client(base, "sup")
    raw = psycopg.connect(url, autocommit=True)
    raw.execute("SET jit = off")
    rng = random.Random(3)
    t_from, t_to = T_END - DAYS * DAY, T_END
    contacts_sql = PAGE_SQL.replace("?", "%s")
    s: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        s.setdefault(name, []).append(value)

    for _ in range(args.requests):
        add("console fleet", get(ops, "/fleet", "gates shown"))
        add("console fleet poll (htmx)", get(ops, "/fleet", "gates shown", headers={"HX-Request": "true"}))
        add("raw fleet SELECT", ms(lambda: raw.execute("SELECT gate_id, doc FROM fleet ORDER BY 1").fetchall()))
        add("console fleet search+sort", get(ops, "/fleet?q=venue-01&sort=outbox", "gates shown"))
        v = rng.randrange(VENUES)
        gid = f"lane-{v % min(args.gates, VENUES):03d}-0"
        add("console gate page", get(ops, f"/gate?id={gid}", "Check-ins per hour"))
        q = "SELECT * FROM checkins WHERE gate_id = %s AND time >= %s ORDER BY time DESC"
        add("raw gate day SELECT", ms(lambda: raw.execute(q, (gid, time.time() - DAY)).fetchall()))  # noqa: B023
        tok = f"tok-{rng.randrange(args.tokens):08d}"
        form = {"csrf": csrf, "token": tok, "window": "30", "from": str(t_from), "to": str(t_to)}
        add("console contacts", post(tracer, "/trace", form, "contact codes"))
        params = (1800, 1800, tok, t_from, t_to, tok, -1.0, "", 201)
        add("raw contacts page SQL", ms(lambda: raw.execute(contacts_sql, params).fetchall()))  # noqa: B023
        venue = f"venue-{v:03d}"
        form = {"csrf": csrf, "mode": "trace", "venue": venue, "from": str(t_from), "to": str(t_to)}
        add("console venue trace", post(tracer, "/trace", form, "check-ins"))
        q = "SELECT * FROM checkins WHERE venue_id = %s AND time >= %s AND time <= %s ORDER BY time, event_id LIMIT 201"
        add("raw venue SELECT", ms(lambda: raw.execute(q, (venue, t_from, t_to)).fetchall()))  # noqa: B023
        add("console audit", get(sup, "/audit", "Audit log"))
        add("raw audit SELECT", ms(lambda: raw.execute("SELECT * FROM audit ORDER BY id DESC LIMIT 101").fetchall()))
        who = rng.choice(OPERATORS)
        add("console audit filtered", get(sup, f"/audit?operator={who}&action=command", "Audit log"))
        q = "SELECT * FROM audit WHERE operator = %s AND action = %s ORDER BY id DESC LIMIT 101"
        add("raw audit filtered SELECT", ms(lambda: raw.execute(q, (who, "command")).fetchall()))  # noqa: B023
    raw.close()
    return s


def cpu_s(pid: int) -> float:
    """A process's CPU time so far (user + system): what the console spent, whatever else loads the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_poll(base: str, args: argparse.Namespace, done: list[str]) -> list[float]:
    """The operator's fleet poll while two tracers run the heaviest queries the forms allow, back to back;
    `done` gets one entry per tracer request answered."""
    stop = threading.Event()
    t_from, t_to = T_END - DAYS * DAY, T_END

    def tracer(name: str, seed: int) -> None:
        c, csrf = client(base, name)
        rng = random.Random(seed)
        while not stop.is_set():
            tok = f"tok-{rng.randrange(args.tokens):08d}"
            post(
                c,
                "/trace",
                {"csrf": csrf, "token": tok, "window": "1440", "from": str(t_from), "to": str(t_to)},
                "contact codes",
            )
            venue = f"venue-{rng.randrange(VENUES):03d}"
            post(
                c,
                "/trace",
                {"csrf": csrf, "mode": "trace", "venue": venue, "from": str(T_END - 31 * DAY), "to": str(T_END)},
                "check-ins",
            )
            done.extend(("contacts", "venue"))

    threads = [threading.Thread(target=tracer, args=(n, i)) for i, n in enumerate(("tracer2", "tracer3"))]
    for t in threads:
        t.start()
    ops, _ = client(base, "ops")
    try:
        time.sleep(1.0)  # the tracers are mid-query
        return [get(ops, "/fleet", "gates shown", headers={"HX-Request": "true"}) for _ in range(args.requests)]
    finally:
        stop.set()
        for t in threads:
            t.join(120)


def cluster_for(args: argparse.Namespace, tmp: Path) -> tuple[PgCluster, bool]:
    """(cluster, filled already): with --keep, the cluster kept there by a run of the same sizes, started again
    (the 10M fill takes minutes); otherwise a new one."""
    where = args.keep or tmp
    sizes = json.dumps({k: vars(args)[k] for k in ("rows", "tokens", "audit_rows", "gates")})
    marker, cluster = where / "filled.json", PgCluster(where / "pg", free_port())
    if args.keep and marker.exists() and marker.read_text() == sizes and cluster.data.exists():
        opts = f"-p {cluster.port} -c listen_addresses=127.0.0.1 -k {cluster.workdir} -c max_connections=50"
        cmd = [str(pg_bin("pg_ctl")), "-D", str(cluster.data), "-o", opts, "-l", str(cluster.workdir / "log"), "-w"]
        subprocess.run([*cmd, "start"], check=True, capture_output=True, timeout=300, user=cluster.user)
        return cluster, True
    marker.unlink(missing_ok=True)
    shutil.rmtree(cluster.workdir, ignore_errors=True)
    cluster.start()
    fill(cluster.url, args.rows, args.tokens)
    seed_fleet(cluster.url, args.gates)
    seed_audit(cluster.url, args.audit_rows)
    if args.keep:
        marker.write_text(sizes)
    return cluster, False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--tokens", type=int, default=2_000_000)
    ap.add_argument("--audit-rows", type=int, default=1_000_000)
    ap.add_argument("--gates", type=int, default=5000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--keep", type=Path, help="keep the filled PostgreSQL in this directory, reuse it next time")
    ap.add_argument("--busy-only", action="store_true", help="only the fleet poll while tracers are busy")
    args = parse(ap, rows=50_000, tokens=10_000, audit_rows=5_000, gates=200, requests=10)
    if args.keep:
        args.keep = args.keep.resolve()
        args.keep.mkdir(parents=True, exist_ok=True)
        args.keep.chmod(0o755)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        tmp.chmod(0o755)
        cluster, _ = cluster_for(args, tmp)
        proc = None
        try:
            open_store(cluster.url).close()  # the console's indexes, as on opening an older collection
            proc, base = start_console(cluster.url)
            samples = {} if args.busy_only else measure(base, cluster.url, args)
            done: list[str] = []
            cpu0, t0, load0 = cpu_s(proc.pid), time.monotonic(), os.getloadavg()[0]
            samples["console fleet poll, tracers busy"] = busy_poll(base, args, done)
            spent, load = round(cpu_s(proc.pid) - cpu0, 2), [load0, os.getloadavg()[0]]
            cpu = {
                "tracer_requests": len(done),
                "seconds": round(time.monotonic() - t0, 1),
                "console_cpu_s": spent,
                "load_avg": load,
            }
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(10)
            if args.keep:  # a clean shutdown: the next start need not replay the fill's WAL
                cmd = [str(pg_bin("pg_ctl")), "-D", str(cluster.data), "-m", "fast", "-w", "stop"]
                subprocess.run(cmd, capture_output=True, timeout=300, user=cluster.user)
            else:
                cluster.stop()
    meta = {"rows": args.rows, "audit_rows": args.audit_rows, "gates": args.gates, "requests": args.requests}
    print(json.dumps({**meta, "busy": cpu}), flush=True)  # the console's own CPU, however loaded the machine
    failed = []
    for name, v in samples.items():
        p95 = round(pct(v, 95), 1)
        target = BUSY_TARGET_MS if "busy" in name else PAGE_TARGET_MS if name.startswith("console") else None
        ok = target is None or p95 <= target
        print(
            json.dumps(
                {
                    **meta,
                    "page": name,
                    "p50_ms": round(pct(v, 50), 1),
                    "p95_ms": p95,
                    "target_ms": target,
                    "met": ok if target else None,
                }
            ),
            flush=True,
        )
        if not ok:
            failed.append(name)
    if failed and not args.smoke:
        raise SystemExit(f"over target: {', '.join(failed)}")


if __name__ == "__main__":
    main()
