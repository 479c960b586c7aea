#!/usr/bin/env python3
"""The durable outbox beside a raw paho QoS 1 publish loop on the same local mosquitto.

usage: bench/outbox.py [--backlog N] [--big-backlog N] [--appends N]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
from pathlib import Path

from _util import paho_qos1_seconds, parse, pct, start_broker, table, time_calls
from gate.config.model import MqttSection
from gate.deliver.delivery import Drainer
from gate.deliver.events import uuid7
from gate.deliver.outbox import Outbox
from gate.mqtt_link import MqttLink

WINDOW = 200
PAYLOAD = json.dumps(
    {
        "schema": "gate.checkin/1",
        "event_id": "0" * 36,
        "gate_id": "lane-01",
        "token": "t" * 16,
        "decision": "deny",
        "reason": "status_red",
        "time": 1.0,
        "pad": "x" * 300,
    }
).encode()


def rss_mb() -> float:
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024


def raw_paho_rate(port: int, n: int) -> float:
    return n / paho_qos1_seconds(port, [PAYLOAD] * n, WINDOW)


def fill(outbox: Outbox, n: int) -> None:
    """Bulk set-up through the writer's own connection (this thread is the writer); measured paths are public."""
    with outbox._writer.transaction() as db:
        db.executemany(
            "INSERT INTO outbox (event_id, topic, qos, payload) VALUES (?, ?, 1, ?)",
            ((uuid7(), "gate/lane-01/checkin", PAYLOAD) for _ in range(n)),
        )
    outbox.appended += n


def drain(outbox: Outbox, port: int, stop_at: int = 0, samples: list[tuple[int, float]] | None = None) -> float:
    link = MqttLink(MqttSection(host="127.0.0.1", port=port, inflight_window=WINDOW), "bench")
    d = Drainer(outbox, link, WINDOW)  # registers for the link's PUBACKs itself
    start_depth = outbox.depth
    link.start()
    link.connected.wait(10)
    t = time.perf_counter()
    d.start()
    next_sample = start_depth
    while outbox.depth > stop_at:
        if samples is not None and outbox.depth <= next_sample:
            samples.append((start_depth - outbox.depth, rss_mb()))
            next_sample -= 100_000
        time.sleep(0.01)
    rate = (start_depth - outbox.depth) / (time.perf_counter() - t)
    d.stop()
    link.stop()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backlog", type=int, default=100_000)
    ap.add_argument("--big-backlog", type=int, default=1_000_000)
    ap.add_argument("--big-drain", type=int, default=400_000, help="how much of the big backlog to drain")
    ap.add_argument("--appends", type=int, default=3000)
    ap.add_argument("--window", type=int, default=200, help="in-flight window for both sides")
    args = parse(ap, backlog=2000, big_backlog=10_000, big_drain=4000, appends=200)
    global WINDOW
    WINDOW = args.window
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        broker, port = start_broker(tmp)
        try:
            raw = raw_paho_rate(port, args.backlog)
            ob = Outbox(tmp / "outbox.db")
            append_ms = time_calls(lambda: ob.append(uuid7(), "gate/lane-01/checkin", PAYLOAD), args.appends)
            ob.close()  # the drainer's thread owns the reading connection: start it afresh
            ob = Outbox(tmp / "outbox.db")
            fill(ob, args.backlog)
            ours = drain(ob, port)
            ob.close()
            big = Outbox(tmp / "big.db")
            fill(big, args.big_backlog)
            big.close()
            opens = {}
            for depth_label, path in (("empty", tmp / "outbox.db"), (f"{args.big_backlog:,}", tmp / "big.db")):
                t = time.perf_counter()
                Outbox(path).close()
                ours_open = (time.perf_counter() - t) * 1000
                naive = sqlite3.connect(path)
                t = time.perf_counter()
                depth = naive.execute("SELECT count(*) FROM outbox").fetchone()[0]
                opens[depth_label] = (ours_open, (time.perf_counter() - t) * 1000, depth)
                naive.close()
            big = Outbox(tmp / "big.db")
            assert big.depth == args.big_backlog, "the counted depth disagrees with the rows"  # checks itself
            samples: list[tuple[int, float]] = [(0, rss_mb())]
            big_rate = drain(big, port, stop_at=args.big_backlog - args.big_drain, samples=samples)
            samples.append((args.big_backlog - big.depth, rss_mb()))
            big.close()
        finally:
            broker.kill()
    print(f"Outbox vs raw paho QoS 1 loop (both window {WINDOW}, {len(PAYLOAD)}-byte payloads, local mosquitto)")
    print(
        table(
            ["measure", "gate outbox", "raw paho loop", "ratio", "target"],
            [
                [
                    f"durable append p50 / p99 (ms), {args.appends} appends",
                    f"{pct(append_ms, 50):.2f} / {pct(append_ms, 99):.2f}",
                    "(in memory only)",
                    "",
                    "p99 <= 5",
                ],
                [
                    f"drain {args.backlog:,} backlog (msg/s)",
                    f"{ours:,.0f}",
                    f"{raw:,.0f}",
                    f"{ours / raw:.0%}",
                    ">= 40 %",
                ],
                [f"drain of a {args.big_backlog:,} backlog (msg/s)", f"{big_rate:,.0f}", "", "", ""],
                *(
                    [
                        f"open at depth {label} (ms; naive: count(*))",
                        f"{o:.1f}",
                        f"{n:.1f} (counted {depth:,})",
                        "",
                        "constant",
                    ]
                    for label, (o, n, depth) in opens.items()
                ),
            ],
        )
    )
    print(
        f"\nRSS while draining a {args.big_backlog:,}-event backlog (delivered -> MB): "
        + ", ".join(f"{n:,} -> {mb:.1f}" for n, mb in samples)
    )
    print(f"pid {os.getpid()} done")


if __name__ == "__main__":
    main()
