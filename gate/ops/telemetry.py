"""Counters for telemetry and the retained state: scans, decisions by reason, decode latency, passages."""

from __future__ import annotations

import bisect
import statistics
import time
from collections import Counter, deque
from typing import Any

DECODE_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)  # Prometheus histogram bounds


class Stats:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.scans = 0
        self.decisions: Counter[str] = Counter()
        self._decode_ms: deque[float] = deque(maxlen=2000)
        self._passages: deque[float] = deque(maxlen=10_000)
        self.last: deque[dict[str, Any]] = deque(maxlen=10)
        self.passages: Counter[str] = Counter()  # by outcome: passed, not_passed, ...
        self.decode_buckets = [0] * (len(DECODE_BUCKETS_S) + 1)  # per bound, then +Inf (not cumulative)
        self.decode_seconds_sum = 0.0

    def scanned(self, decode_ms: float | None) -> None:
        """One scan; its decode time counts in the latency figures only if a frame was decoded (None: serial)."""
        self.scans += 1
        if decode_ms is None:
            return
        self._decode_ms.append(decode_ms)
        secs = decode_ms / 1000
        self.decode_seconds_sum += secs
        self.decode_buckets[bisect.bisect_left(DECODE_BUCKETS_S, secs)] += 1  # the first bound >= secs, else +Inf

    def decided(self, reason: str, summary: dict[str, Any]) -> None:
        self.decisions[reason] += 1
        self.last.append(summary)

    def passage(self, outcome: str) -> None:
        self.passages[outcome] += 1
        if outcome == "passed":
            self._passages.append(time.monotonic())

    def snapshot(self) -> dict[str, Any]:
        ms = sorted(self._decode_ms)
        now = time.monotonic()
        q = statistics.quantiles(ms, n=20) if len(ms) >= 2 else [ms[0]] * 19 if ms else [0.0] * 19
        return {
            "uptime_s": round(now - self.started, 1),
            "scans": self.scans,
            "decisions_by_reason": dict(self.decisions),
            "decode_ms_p50": round(q[9], 3),
            "decode_ms_p95": round(q[18], 3),
            "passages_per_minute": sum(1 for t in self._passages if now - t <= 60),
            **self.last_decision(),
        }

    def last_decision(self) -> dict[str, Any]:
        """The last decision without its token: what a dashboard shows."""
        last = self.last[-1] if self.last else {}
        return {"last_decision": last.get("decision"), "last_reason": last.get("reason"), "last_time": last.get("time")}
