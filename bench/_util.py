"""Small helpers shared by the benchmarks: timing percentiles and table printing."""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path


def time_calls(fn: Callable[[], object], n: int, warmup: int = 3) -> list[float]:
    """Per-call wall times in milliseconds."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000)
    return out


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def median(values: list[float]) -> float:
    return statistics.median(values)


def table(headers: list[str], rows: list[list[object]]) -> str:
    cells = [headers, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells[1:]]
    return "\n".join([line, sep, *body])


def start_broker(tmp: Path, extra: str = "") -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp / "m.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n{extra}")
    mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([mosq, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise SystemExit("mosquitto did not start")


def paho_qos1_seconds(port: int, payloads: Sequence[bytes], window: int, topic: str = "bench/raw") -> float:
    """The fair peer for delivery: a plain paho QoS 1 loop on 127.0.0.1:`port` with at most `window` messages
    unacknowledged (window 1: the naive one-at-a-time loop; a deeper in-memory queue makes paho rescan it on
    every PUBACK, which collapses to a few hundred msg/s). Seconds until every PUBACK has arrived."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    slots = threading.Semaphore(window)
    done = threading.Event()
    acked = [0]

    def on_publish(c: object, u: object, mid: int, rc: object, p: object) -> None:
        acked[0] += 1
        slots.release()
        if acked[0] == len(payloads):
            done.set()

    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.max_inflight_messages_set(window)
    c.on_publish = on_publish
    c.connect("127.0.0.1", port)
    c.loop_start()
    t = time.perf_counter()
    for payload in payloads:
        slots.acquire()
        c.publish(topic, payload, qos=1)
    if not done.wait(600):
        raise SystemExit(f"paho loop: {acked[0]} of {len(payloads)} acknowledged in 10 minutes")
    secs = time.perf_counter() - t
    c.disconnect()
    c.loop_stop()
    return secs


def parse(ap: argparse.ArgumentParser, **smoke: object) -> argparse.Namespace:
    """Parse the bench's arguments; with `--smoke` (script/bench --smoke, in CI) the sizes given here instead:
    seconds in all, with every check the bench makes of its own results still made."""
    ap.add_argument("--smoke", action="store_true", help="small sizes (seconds), every check still made")
    args = ap.parse_args()
    if args.smoke:
        for name, value in smoke.items():
            setattr(args, name, value)
    return args


_PROBE = """
import json, os, signal, sys, time
path, every = sys.argv[1], float(sys.argv[2])
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
os.pwrite(fd, b"\\0" * 4096 * 16, 0)
os.fdatasync(fd)
ms = []
i = 0
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
while not stop:
    os.pwrite(fd, os.urandom(512), (i % 16) * 4096)
    t = time.perf_counter()
    os.fdatasync(fd)
    ms.append((time.perf_counter() - t) * 1000)
    i += 1
    time.sleep(every)
os.close(fd)
os.unlink(path)
print(json.dumps(ms))
"""


class DiskProbe:
    """The fair peer for a durable record: in its own process (so it takes none of the measured process's
    GIL), a 512-byte overwrite and `fdatasync` of a file beside the state, every `every` seconds, as the gate's
    write-ahead log commit does. What it measures is the disk's own flush latency during the run: the floor
    under any latency that waits for a record to be on disk."""

    def __init__(self, directory: Path, every: float = 0.1) -> None:
        import sys

        self.proc = subprocess.Popen(
            [sys.executable, "-c", _PROBE, str(directory / ".diskprobe"), str(every)],
            stdout=subprocess.PIPE,
        )

    def result(self) -> dict[str, float]:
        import json

        self.proc.terminate()
        out, _ = self.proc.communicate(timeout=30)
        ms: list[float] = json.loads(out or b"[]")
        if not ms:
            return {"n": 0}
        return {
            "n": len(ms),
            "p50_ms": round(pct(ms, 50), 2),
            "p99_ms": round(pct(ms, 99), 2),
            "max_ms": round(max(ms), 2),
            "over_10_ms": sum(m > 10 for m in ms),
        }
