#!/usr/bin/env python3
"""The staff's web console at city scale: `gate central console` over a throwaway PostgreSQL holding --rows
check-ins (28 days, 500 venues) and --gates gates' fleet documents, driven over HTTP by a signed-in client
(httpx, keep-alive, one request at a time), side by side with the raw query each page runs:

fleet     GET /fleet (the whole table of --gates gates, rendered) beside `fleet_report` called directly and
          the raw `SELECT gate_id, doc FROM fleet` through psycopg
contacts  POST /trace (contacts of a random token, audited, rendered) beside the contact SQL through raw psycopg
audit     GET /audit (the last 500 rows, tokens masked) beside the raw SELECT of the audit table

usage: bench/console.py [--rows 10000000] [--gates 1000] [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from central import DAYS, T_END, fill, free_port

from _util import parse, pct

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from pgcluster import PgCluster

from gate.central.console.auth import hash_password
from gate.central.db import open_store
from gate.central.store import CONTACTS_SQL, DAY
from gate.central.tracing import fleet_report

PASSWORD = "bench-password-1"


def seed_fleet(url: str, gates: int) -> None:
    store = open_store(url)
    now = time.time()
    for i in range(gates):
        gid = f"lane-{i:04d}"
        state = {"mode": "normal", "cache_version": 7, "cache_age_s": 600 + i, "policy_version": 3,
                 "clock_synced": True, "outbox_depth": i % 7, "dead_letters": 0, "alarms_active": [],
                 "venue": {"id": f"venue-{i % 500:03d}", "name": "V", "category": "rail_station"}}  # fmt: skip
        store.seen(gid, "availability", {"status": "offline" if i % 50 == 0 else "online"}, now)
        store.seen(gid, "state", state, now)
        for k in range(5):
            store.seen(gid, "telemetry", {"outbox_depth": (i % 3) * k, "uptime_s": 100}, now - 300 + 60 * k)
    store.put_user("tracer", "tracer", hash_password(PASSWORD))
    store.put_user("ops", "operator", hash_password(PASSWORD))
    store.put_user("sup", "supervisor", hash_password(PASSWORD))
    store.close()


def client(base: str, name: str) -> httpx.Client:
    c = httpx.Client(base_url=base, timeout=60, follow_redirects=True)
    pre = re.search(r'name="pre" value="([^"]+)"', c.get("/login").text)
    assert pre
    r = c.post("/login", data={"pre": pre[1], "name": name, "password": PASSWORD})
    assert r.status_code == 200, r.status_code
    return c


def timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def row(what: str, samples: list[float]) -> dict[str, Any]:
    return {"page": what, "n": len(samples), "p50_ms": round(pct(samples, 50), 2), "p95_ms": round(pct(samples, 95), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--tokens", type=int, default=2_000_000)
    ap.add_argument("--gates", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=200)
    args = parse(ap, rows=20_000, tokens=2000, gates=20, requests=20)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        tmp.chmod(0o755)
        cluster = PgCluster(tmp / "pg", free_port()).start()
        proc = None
        try:
            fill(cluster.url, args.rows, args.tokens)
            seed_fleet(cluster.url, args.gates)
            port = free_port()
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
            cmd = [sys.executable, "-m", "gate", "central", "console", "--db", cluster.url]
            proc = subprocess.Popen([*cmd, "--listen", f"127.0.0.1:{port}"], env=env)
            deadline = time.monotonic() + 30
            while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("the console did not start")
                time.sleep(0.1)
            base = f"http://127.0.0.1:{port}"
            ops, tracer, sup = client(base, "ops"), client(base, "tracer"), client(base, "sup")
            raw = psycopg.connect(cluster.url, autocommit=True)
            raw.execute("SET jit = off")
            store = open_store(cluster.url)
            csrf = re.search(r'name="csrf" value="([^"]+)"', tracer.get("/trace").text)
            assert csrf
            rng = random.Random(3)
            t_from, t_to = T_END - DAYS * DAY, T_END
            sql = CONTACTS_SQL.replace("?", "%s")
            page: dict[str, list[float]] = {"fleet": [], "contacts": [], "audit": []}
            peer: dict[str, list[float]] = {"fleet_report": [], "fleet": [], "contacts": [], "audit": []}
            for _ in range(args.requests):
                r = ops.get("/fleet")
                assert r.status_code == 200 and r.text.count("<tr id=") == args.gates
                page["fleet"].append(r.elapsed.total_seconds() * 1000)
                peer["fleet_report"].append(timed(lambda: fleet_report(store, 5, 24)))
                peer["fleet"].append(timed(lambda: raw.execute("SELECT gate_id, doc FROM fleet ORDER BY 1").fetchall()))
                tok = f"tok-{rng.randrange(args.tokens):08d}"
                form = {"csrf": csrf[1], "token": tok, "window": "30", "from": str(t_from), "to": str(t_to)}
                r = tracer.post("/trace", data=form)
                assert r.status_code == 200, r.text[:200]
                page["contacts"].append(r.elapsed.total_seconds() * 1000)
                params = (1800, 1800, tok, t_from, t_to, tok)
                peer["contacts"].append(timed(lambda: raw.execute(sql, params).fetchall()))  # noqa: B023
                r = sup.get("/audit")
                assert r.status_code == 200
                page["audit"].append(r.elapsed.total_seconds() * 1000)
                peer["audit"].append(timed(lambda: raw.execute("SELECT * FROM audit ORDER BY id").fetchall()))
            results = [row(f"console {k}", v) for k, v in page.items()]
            results += [row(f"raw {k}", v) for k, v in peer.items()]
            meta = {"rows": args.rows, "gates": args.gates, "requests": args.requests}
            for r in results:
                print(json.dumps({**meta, **r}), flush=True)
            store.close()
            raw.close()
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(10)
            cluster.stop()


if __name__ == "__main__":
    main()
