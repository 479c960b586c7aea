#!/usr/bin/env python3
"""Pass cache and decision: 1M cached passes in SQLite side by side with naive TinyDB Query at 100k.

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

from _util import median, pct, table, time_calls
from gate.codes import Status, issue
from gate.decision import Decider
from gate.keys import TrustStore
from gate.passcache import PassCache
from gate.passimport import read_file
from gate.policy import Policy
from gate.testing import FixedClock

LOOKUP_CHILD = r"""
import json, random, sys, time
from pathlib import Path

def hwm():  # VmHWM: peak RSS of this process image (ru_maxrss would carry the parent's peak across exec)
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024

t = time.perf_counter()
from gate.passcache import PassCache
cache = PassCache(Path(sys.argv[1])); info = cache.info()
open_s = time.perf_counter() - t
n = int(sys.argv[2]); rng = random.Random(1); times = []
for _ in range(100_000):
    tok = f"tok-{rng.randrange(n):010d}"
    a = time.perf_counter(); cache.lookup(tok); times.append((time.perf_counter() - a) * 1000)
times.sort()
print(json.dumps({"open_s": open_s, "p50": times[len(times) // 2], "p99": times[int(len(times) * 0.99)],
                  "rss_mb": hwm(), "count": info.count}))
"""


def make_csv(path: Path, n: int) -> None:
    with path.open("w") as fh:
        fh.write("token,status,valid_until,revoked,companions\n")
        for i in range(n):
            fh.write(f"tok-{i:010d},{('green', 'yellow', 'red')[i % 3]},,{int(i % 97 == 0)},\n")


def sqlite_side(tmp: Path, n: int) -> dict[str, float]:
    csv = tmp / "passes.csv"
    make_csv(csv, n)
    db = tmp / "passes.db"
    t = time.perf_counter()
    rows = read_file(csv)
    with PassCache(db) as cache:
        cache.replace_all(rows, version=1)
    import_s = time.perf_counter() - t
    del rows
    child = subprocess.run(
        [sys.executable, "-c", LOOKUP_CHILD, str(db), str(n)], capture_output=True, text=True, check=True
    )
    return {"import_rows_s": n / import_s, **json.loads(child.stdout)}


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
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--tinydb", type=int, default=100_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        sq = sqlite_side(tmp, args.entries)
        tn = tinydb_side(tmp, args.tinydb)
        dec = decide_side(20_000, tmp / "passes.db")
    print(
        table(
            [
                "measure",
                f"gate SQLite, {args.entries:,} passes",
                f"naive TinyDB Query, {args.tinydb:,} docs",
                "ratio",
                "target",
            ],
            [
                ["lookup p50 (ms)", f"{sq['p50']:.4f}", f"{tn['p50']:.1f}", f"{tn['p50'] / sq['p50']:,.0f}x", ""],
                ["lookup p99 (ms)", f"{sq['p99']:.4f}", f"{tn['p99']:.1f}", f"{tn['p99'] / sq['p99']:,.0f}x", "<= 0.2"],
                ["open (s)", f"{sq['open_s']:.3f}", f"{tn['open_s']:.2f}", "", "<= 0.5"],
                ["import (rows/s)", f"{sq['import_rows_s']:,.0f}", f"{tn['import_rows_s']:,.0f}", "", ">= 100,000"],
                ["lookup process RSS (MB)", f"{sq['rss_mb']:.1f}", "", "", "<= 80"],
                ["verify + decide p50 / p99 (ms)", f"{dec['p50']:.3f} / {dec['p99']:.3f}", "", "", "p99 <= 1"],
            ],
        )
    )


if __name__ == "__main__":
    main()
