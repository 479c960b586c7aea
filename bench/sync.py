#!/usr/bin/env python3
"""Central sync: snapshot apply rate and delta-to-decision latency, beside naive baselines, on loopback.

usage: bench/sync.py [--entries N] [--deltas N]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from gpiozero.pins.mock import MockFactory
from paho.mqtt.enums import CallbackAPIVersion

from _util import parse, pct, start_broker, table
from gate.central.mqtt import connect, publisher
from gate.config.model import parse_config
from gate.core.clock import SystemClock
from gate.decide.codes import Kind, Status, issue
from gate.decide.keys import TrustStore, generate_keypair, load_private_key
from gate.lane.wiring import build
from gate.scan.decoders import make_decoder
from gate.scanner import DecodingSource
from gate.sync.envelope import sign
from gate.sync.passsync import rows_digest
from gate.sync.worker import central_topics
from gate.testing import ScriptedFrames


def naive_apply_rate(tmp: Path, n: int) -> float:
    """One INSERT per row, each its own transaction: what a straightforward sync loop does."""
    db = sqlite3.connect(tmp / "naive.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE p (token TEXT PRIMARY KEY, status INT, until INT, revoked INT, comp INT)")
    t = time.perf_counter()
    for i in range(n):
        db.execute("INSERT OR REPLACE INTO p VALUES (?, 0, NULL, 0, NULL)", (f"tok-{i:010d}",))
    return n / (time.perf_counter() - t)


def raw_latency(port: int, n: int) -> list[float]:
    got = threading.Event()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2)
    sub.on_message = lambda c, u, m: got.set()
    sub.connect("127.0.0.1", port)
    sub.subscribe("bench/lat", qos=1)
    sub.loop_start()
    time.sleep(0.3)
    out = []
    pub = connect(("127.0.0.1", port))
    for _ in range(n):
        got.clear()
        t = time.perf_counter()
        pub.publish("bench/lat", b"x" * 200, qos=1)
        got.wait(5)
        out.append((time.perf_counter() - t) * 1000)
    pub.disconnect()
    sub.disconnect()
    sub.loop_stop()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--deltas", type=int, default=50)
    args = parse(ap, entries=20_000, deltas=5)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        broker, port = start_broker(tmp)
        _, cpriv, cpub = generate_keypair(tmp / "central")
        ckey = load_private_key(cpriv)
        _, ipriv, ipub = generate_keypair(tmp / "issuer")
        ikey = load_private_key(ipriv)
        cfg = parse_config(
            {
                "gate": {"id": "bench", "state_dir": str(tmp / "state")},
                "venue": {"id": "v"},
                "central": {"keys": [str(cpub)]},
                "policy": {"passback_seconds": 0},
                "mqtt": {"host": "127.0.0.1", "port": port},
                "gpio": {"relay": {"pin": 17, "pulse_seconds": 0.01}},
            }
        )
        gate = build(
            cfg,
            source=DecodingSource(ScriptedFrames([]), make_decoder("zxing")),
            pin_factory=MockFactory(),
            clock=SystemClock("assume_synced"),
            trust=TrustStore.from_files([ipub]),
        ).start()
        try:
            gate.link.connected.wait(10) and gate.link.subscribed.wait(10)
            rows: list[list[Any]] = [[f"tok-{i:010d}", 0, None, 0, None] for i in range(args.entries)]
            chunks = [rows[i : i + 10_000] for i in range(0, len(rows), 10_000)]
            t0 = time.perf_counter()
            topic = central_topics("gate")
            with publisher(("127.0.0.1", port)) as pub:
                for i, c in enumerate(chunks):
                    pub(
                        f"gate/central/passes/chunk/1/{i}",
                        sign(ckey, "chunk", {"version": 1, "index": i, "rows": c}),
                        True,
                    )
                manifest = {"version": 1, "count": len(rows), "chunks": len(chunks), "sha256": rows_digest(chunks)}
                pub(topic["manifest"], sign(ckey, "manifest", manifest), True)
            published = time.perf_counter() - t0
            while gate.cache.info().version != 1:
                time.sleep(0.01)
            total = time.perf_counter() - t0
            naive = naive_apply_rate(tmp, 20_000)
            code = issue(ikey, "tok-0000000007", Status.GREEN, int(time.time()) - 10, 3600, Kind.CARD).encode()
            lat = []
            central = connect(("127.0.0.1", port))
            for seq in range(1, args.deltas + 1):
                status = seq % 2 * 2  # alternate red / green
                want = "status_red" if status else "admitted"
                delta = sign(
                    ckey,
                    "delta",
                    {"base_version": 1, "seq": seq, "upserts": [["tok-0000000007", status, None, 0, None]]},
                )
                t = time.perf_counter()
                central.publish(topic["delta"], delta, qos=1)
                while gate.decider.decide(code, gate.clock.read()).reason.value != want:
                    time.sleep(0.0005)
                lat.append((time.perf_counter() - t) * 1000)
            central.disconnect()
            raw = raw_latency(port, args.deltas)
        finally:
            gate.close()
            broker.kill()
    print(f"Snapshot of {args.entries:,} passes in {len(chunks)} signed chunks, loopback mosquitto")
    print(
        table(
            ["measure", "gate", "naive baseline", "ratio", "target"],
            [
                [
                    "snapshot: publish -> applied (entries/s)",
                    f"{args.entries / total:,.0f} ({total:.1f} s)",
                    f"{naive:,.0f} (row-by-row commits)",
                    f"{args.entries / total / naive:.0f}x",
                    ">= 50,000 (1M <= 20 s)",
                ],
                ["  of which central's signing + publishing (s)", f"{published:.1f}", "", "", ""],
                [
                    "delta published -> in effect for a decision, p50 / p99 (ms)",
                    f"{pct(lat, 50):.1f} / {pct(lat, 99):.1f}",
                    f"{pct(raw, 50):.1f} / {pct(raw, 99):.1f} (raw publish -> receive)",
                    "",
                    "<= 100",
                ],
            ],
        )
    )


if __name__ == "__main__":
    main()
