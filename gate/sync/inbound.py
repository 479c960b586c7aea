"""The sync worker's inbound queue: bounded by count and bytes, so a flood from the broker cannot exhaust memory."""

from __future__ import annotations

import queue
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Job:
    fn: Callable[[Any], None]  # the handler, given the verified message (None for a local job)
    kind: str  # manifest | chunk | delta | policy | keys | command | local
    topic: str
    payload: bytes
    ack: Callable[[], object]  # tells the broker the message is handled


class BoundedQueue:
    """`offer` runs on paho's thread and never blocks: it size-checks, then queues within the bounds or
    counts what it refused. `get` and `done` run on the worker."""

    def __init__(self, max_message: int, max_bytes: int, max_jobs: int = 10_000) -> None:
        self.max_message = max_message
        self.max_bytes = max_bytes
        self.max_jobs = max_jobs
        self._q: queue.Queue[Job | None] = queue.Queue()
        self._bytes = 0
        self._lock = threading.Lock()
        self.refused: Counter[str] = Counter()  # oversized | queue_full

    def offer(self, job: Job) -> str | None:
        """None if queued, else why it was refused."""
        size = len(job.payload)
        with self._lock:
            if size > self.max_message:
                reason = "oversized"
            elif self._bytes + size > self.max_bytes or self._q.qsize() >= self.max_jobs:
                reason = "queue_full"
            else:
                self._bytes += size
                self._q.put(job)
                return None
            self.refused[reason] += 1
        return reason

    def refused_now(self) -> Counter[str]:
        """Any thread: a copy of the refusal counts."""
        with self._lock:
            return Counter(self.refused)

    def put_local(self, job: Job | None) -> None:
        """The gate's own work (or None, to stop the worker): never refused."""
        self._q.put(job)

    def get(self, timeout: float) -> Job | None:
        """Raises queue.Empty after `timeout`."""
        job = self._q.get(timeout=timeout)
        if job is not None:
            with self._lock:
                self._bytes -= len(job.payload)
        return job

    def done(self) -> None:
        self._q.task_done()

    def join(self) -> None:
        self._q.join()

    @property
    def unfinished(self) -> int:
        return self._q.unfinished_tasks
