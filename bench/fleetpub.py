"""How bench/fleet.py publishes a revocation: as central does, through `gate central publish-delta` — one call per
delta (a new connection each time) or a feed (`--follow`: one connection kept, a delta per line on its stdin)."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO


def _cli(broker: str, key: Path) -> list[str]:
    return [sys.executable, "-m", "gate", "central", "publish-delta", "--broker", broker, "--key", str(key)]


def _revoking(token: str) -> dict[str, object]:
    return {"token": token, "status": "green", "revoked": True}


class OneShot:
    """`gate central publish-delta FILE --base-version B --seq N`: a process and a broker connection per delta."""

    name = "one-shot"

    def __init__(self, broker: str, key: Path, work: Path) -> None:
        self.cmd = _cli(broker, key)
        self.work = work
        self.first = True  # every delta is the first on its connection
        self.failed: list[str] = []
        self._procs: list[subprocess.Popen[bytes]] = []

    def publish(self, base: int, seq: int, token: str) -> None:
        rows = self.work / f"delta-{seq}.ndjson"
        rows.write_text(json.dumps(_revoking(token)) + "\n")
        cmd = [*self.cmd, str(rows), "--base-version", str(base), "--seq", str(seq)]
        self._procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))

    def close(self) -> None:
        for p in self._procs:
            _, err = p.communicate(timeout=120)
            if p.returncode != 0:
                self.failed.append(f"publish-delta exited {p.returncode}: {err.decode(errors='replace')[-300:]}")
        self._procs.clear()


class Feed:
    """`gate central publish-delta --follow`: one process, one connection, a line per delta; it answers each with
    a line once the broker acknowledged it."""

    name = "feed"

    def __init__(self, broker: str, key: Path, log: Path) -> None:
        self._err = log.open("ab")
        self.proc = subprocess.Popen(
            [*_cli(broker, key), "--follow"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
        )
        self.sent = 0
        self.failed: list[str] = []
        self._acks: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        assert self.proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True)
        self._reader.start()

    @property
    def first(self) -> bool:
        """The next delta is the first on the feed's connection."""
        return self.sent == 0

    def _read(self, out: IO[bytes]) -> None:
        for line in out:
            self._acks.put(line)

    def publish(self, base: int, seq: int, token: str) -> None:
        assert self.proc.stdin is not None
        line = {"base_version": base, "seq": seq, "upserts": [_revoking(token)], "deletes": []}
        self.proc.stdin.write(json.dumps(line).encode() + b"\n")
        self.proc.stdin.flush()
        self.sent += 1

    def acked(self, timeout: float) -> bool:
        """The feed's answer for the last delta (its PUBACK came)."""
        try:
            self._acks.get(timeout=timeout)
            return True
        except queue.Empty:
            self.failed.append("publish-delta --follow did not answer a delta")
            return False

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        if self.proc.returncode != 0:
            self.failed.append(f"publish-delta --follow exited {self.proc.returncode}")
        self._err.close()
