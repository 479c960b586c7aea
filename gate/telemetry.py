"""Counters for telemetry and the retained state: scans, decisions by reason, decode latency, passages."""

from __future__ import annotations

import statistics
import time
from collections import Counter, deque
from typing import Any


class Stats:
    def __init__(self) -> None:
        self.started = time.monotonic()
        self.scans = 0
        self.decisions: Counter[str] = Counter()
        self._decode_ms: deque[float] = deque(maxlen=2000)
        self._passages: deque[float] = deque(maxlen=10_000)
        self.last: deque[dict[str, Any]] = deque(maxlen=10)

    def scanned(self, decode_ms: float) -> None:
        self.scans += 1
        self._decode_ms.append(decode_ms)

    def decided(self, reason: str, summary: dict[str, Any]) -> None:
        self.decisions[reason] += 1
        self.last.append(summary)

    def passed(self) -> None:
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
        }
