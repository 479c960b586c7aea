#!/usr/bin/env python3
"""Pass cache and decision at city scale: 10M cached passes in SQLite, side by side with the fair peer (raw
sqlite3: one executemany bulk insert, primary-key lookups on the same file) and the naive baseline (TinyDB
Query at 100k documents). Import and lookups each run in a child process, so each peak RSS is its own.

usage: bench/decision.py [--entries N] [--tinydb N]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _util import median, parse, pct, table, time_calls
from gate.config.policy import Policy
from gate.decide.codes import Status, issue
from gate.decide.decision import Decider
from gate.decide.keys import TrustStore
from gate.decide.passcache import PassCache
from gate.testing import FixedClock

IMPORT_CHILD = r"""
import json, sys, time
from pathlib import Path
from gate.decide.passcache import PassCache
from gate.decide.passimport import iter_rows

def hwm():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024

t = time.perf_counter()
with PassCache(Path(sys.argv[2])) as cache:
    report = cache.import_rows(iter_rows(Path(sys.argv[1])))
print(json.dumps({"import_s": time.perf_counter() - t, "entries": report.entries, "rss_mb": hwm()}))
"""

RAW_CHILD = r"""
import json, random, sqlite3, sys, time

def hwm():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024

n = int(sys.argv[2])
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE p (token TEXT PRIMARY KEY, status INT, until INT, revoked INT, comp INT) WITHOUT ROWID")
t = time.perf_counter()
db.execute("BEGIN")
rows = ((f"tok-{i:010d}", i % 3, int(i % 97 == 0)) for i in range(n))
db.executemany("INSERT INTO p VALUES (?, ?, NULL, ?, NULL)", rows)
db.execute("COMMIT")
insert_s = time.perf_counter() - t
print(json.dumps({"insert_s": insert_s, "rss_mb": hwm()}))
"""

# Gate's lookups alone first (their peak RSS is the lane's), then gate and the raw primary-key SELECT on the same
# file, token by token in alternating order, so that this shared machine's noise falls on both alike.
LOOKUP_CHILD = r"""
import json, random, sqlite3, sys, time
from pathlib import Path

def hwm():  # VmHWM: peak RSS of this process image (ru_maxrss would carry the parent's peak across exec)
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024

def stats(times):
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.99)]

t = time.perf_counter()
from gate.decide.codes import Status
from gate.decide.passcache import PassCache
cache = PassCache(Path(sys.argv[1]))
info = cache.info()
open_s = time.perf_counter() - t
n = int(sys.argv[2])
rng = random.Random(1)
pc = time.perf_counter
statuses = list(Status)
tokens = [rng.randrange(n) for _ in range(100_000)]
alone = []
for i in tokens:
    tok = f"tok-{i:010d}"
    a = pc()
    entry = cache.lookup(tok)
    alone.append((pc() - a) * 1000)
    if entry is None or entry.status is not statuses[i % 3] or entry.revoked != (i % 97 == 0):
        raise SystemExit(f"gate looked up {tok} as {entry}")
rss = hwm()
raw = sqlite3.connect(sys.argv[1], isolation_level=None)
q = "SELECT status, valid_until, revoked, companions FROM passes WHERE token = ?"
side = {"gate": [], "raw": []}
rng.shuffle(tokens)
for k, i in enumerate(tokens):
    tok = f"tok-{i:010d}"
    for who in (("gate", "raw") if k % 2 else ("raw", "gate")):
        a = pc()
        got = cache.lookup(tok) if who == "gate" else raw.execute(q, (tok,)).fetchone()
        side[who].append((pc() - a) * 1000)
        if got is None or (got[1] is not statuses[i % 3] if who == "gate" else got[0] != i % 3):
            raise SystemExit(f"{who} looked up {tok} as {got}")
(p50, p99), (g50, g99), (r50, r99) = stats(alone), stats(side["gate"]), stats(side["raw"])
print(json.dumps({"open_s": open_s, "p50": p50, "p99": p99, "rss_mb": rss, "count": info.count,
                  "side_p50": g50, "side_p99": g99, "raw_p50": r50, "raw_p99": r99}))
"""


def make_csv(path: Path, n: int) -> None:
    with path.open("w") as fh:
        fh.write("token,status,valid_until,revoked,companions\n")
        for i in range(n):
            fh.write(f"tok-{i:010d},{('green', 'yellow', 'red')[i % 3]},,{int(i % 97 == 0)},\n")


def child(script: str, *args: object) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout))


def sqlite_side(tmp: Path, n: int) -> dict[str, float]:
    csv = tmp / "passes.csv"
    make_csv(csv, n)
    db = tmp / "passes.db"
    imp = child(IMPORT_CHILD, csv, db)
    if imp["entries"] != n:  # the bench checks its own result
        raise SystemExit(f"import kept {imp['entries']:,} of {n:,} passes")
    csv.unlink()
    look = child(LOOKUP_CHILD, db, n)
    raw = child(RAW_CHILD, tmp / "raw.db", n)
    (tmp / "raw.db").unlink()
    return {
        "import_rows_s": n / imp["import_s"],
        "import_rss_mb": imp["rss_mb"],
        **look,
        "raw_insert_rows_s": n / raw["insert_s"],
        "raw_rss_mb": raw["rss_mb"],
    }


def tinydb_side(tmp: Path, n: int) -> dict[str, float]:
    from tinydb import Query, TinyDB

    db = TinyDB(tmp / "passes.json")
    t = time.perf_counter()
    db.insert_multiple({"token": f"tok-{i:010d}", "status": "green"} for i in range(n))
    insert_s = time.perf_counter() - t
    rng = random.Random(1)
    q = Query()
    times = time_calls(lambda: db.search(q.token == f"tok-{rng.randrange(n):010d}"), 30, warmup=1)
    t = time.perf_counter()
    TinyDB(tmp / "passes.json").all()
    open_s = time.perf_counter() - t
    return {"import_rows_s": n / insert_s, "p50": median(times), "p99": pct(times, 99), "open_s": open_s}


def decide_side(n: int, db: Path) -> dict[str, float]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    now = int(time.time())
    codes = [issue(key, f"tok-{i:010d}", Status.GREEN, now - 5, 600).encode() for i in range(n)]
    with PassCache(db) as cache:
        decider = Decider(TrustStore.of([key.public_key()]), Policy(), cache.lookup, cache.info)
        clock = FixedClock(now)
        it = iter(codes)
        times = time_calls(lambda: decider.decide(next(it), clock.read()), n - 10, warmup=5)
    return {"p50": median(times), "p99": pct(times, 99)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--entries", type=int, default=10_000_000)
    ap.add_argument("--tinydb", type=int, default=100_000)
    args = parse(ap, entries=20_000, tinydb=2000)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        sq = sqlite_side(tmp, args.entries)
        tn = tinydb_side(tmp, args.tinydb)
        dec = decide_side(20_000, tmp / "passes.db")
    print(
        table(
            [
                "measure",
                f"gate, {args.entries:,} passes",
                f"raw sqlite3, {args.entries:,}",
                f"naive TinyDB Query, {args.tinydb:,} docs",
                "target",
            ],
            [
                ["lookup p50 (ms), alone", f"{sq['p50']:.4f}", "", f"{tn['p50']:.1f}", ""],
                ["lookup p99 (ms), alone", f"{sq['p99']:.4f}", "", f"{tn['p99']:.1f}", "<= 0.05"],
                ["lookup p50 (ms), side by side", f"{sq['side_p50']:.4f}", f"{sq['raw_p50']:.4f}", "", ""],
                ["lookup p99 (ms), side by side", f"{sq['side_p99']:.4f}", f"{sq['raw_p99']:.4f}", "", "<= 0.05"],
                ["open (s)", f"{sq['open_s']:.3f}", "", f"{tn['open_s']:.2f}", "<= 0.5"],
                [
                    "import (rows/s)",
                    f"{sq['import_rows_s']:,.0f} (CSV parse, validate, duplicates, swap)",
                    f"{sq['raw_insert_rows_s']:,.0f} (one executemany, nothing checked)",
                    f"{tn['import_rows_s']:,.0f}",
                    ">= 100,000",
                ],
                ["import peak RSS (MB)", f"{sq['import_rss_mb']:.0f}", f"{sq['raw_rss_mb']:.0f}", "", "<= 150"],
                ["lookup process peak RSS (MB)", f"{sq['rss_mb']:.1f}", "", "", "<= 80"],
                ["verify + decide p50 / p99 (ms)", f"{dec['p50']:.3f} / {dec['p99']:.3f}", "", "", "p99 <= 1"],
            ],
        )
    )


if __name__ == "__main__":
    main()
