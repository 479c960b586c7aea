"""Where a phase's CPU went: each named process tree's user+system seconds (from /proc), beside the machine's busy
and iowait, as cores used on average (bench/fleet.py names its bottleneck with it)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def processes() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds so far)."""
    out: dict[int, tuple[int, float]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        out[int(d.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK)
    return out


def machine() -> tuple[float, float, float]:
    """(busy, iowait, all) CPU seconds of the whole machine so far."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(v[:8])
    return (total - v[3] - v[4]) / TICK, v[4] / TICK, total / TICK


def group_of(pid: int, procs: dict[int, tuple[int, float]], roots: dict[int, str]) -> str | None:
    seen = 0
    while pid > 1 and seen < 64:
        if pid in roots:
            return roots[pid]
        pid, seen = procs.get(pid, (0, 0.0))[0], seen + 1
    return None


class CpuSplit:
    """start() … stop(): cores used on average by each group's process trees (roots asked for at both ends, so a
    collector restarted meanwhile counts), the rest of the machine (other work on it), and iowait."""

    def __init__(self, roots: Callable[[], dict[str, list[int]]]) -> None:
        self.roots = roots
        self._t0 = 0.0
        self._before: dict[int, tuple[int, float]] = {}
        self._machine = (0.0, 0.0, 0.0)

    def start(self) -> None:
        self._t0, self._before, self._machine = time.monotonic(), processes(), machine()

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._t0
        after, (busy, iowait, _) = processes(), machine()
        roots = {pid: name for name, pids in self.roots().items() for pid in pids}
        used: dict[str, float] = {name: 0.0 for name in self.roots()}
        for pid, (_, cpu) in after.items():
            name = group_of(pid, after, roots)
            if name is not None:
                used[name] += cpu - self._before.get(pid, (0, 0.0))[1]
        out = {f"{k}_cores": round(v / wall, 2) for k, v in used.items()}
        machine_busy = (busy - self._machine[0]) / wall
        out["other_cores"] = round(max(0.0, machine_busy - sum(used.values()) / wall), 2)
        out["machine_busy_cores"] = round(machine_busy, 2)
        out["iowait_cores"] = round((iowait - self._machine[1]) / wall, 2)
        out["load_avg_1m"] = round(os.getloadavg()[0], 1)
        return out
