"""The demo's output: a table for people, or one JSON object per line for scripts and tests."""

from __future__ import annotations

import json
import queue
import sys
import threading
from typing import Any, TextIO


class Printer:
    """The demo's one output path. Listeners run on the scan loop, the actuator's thread and the drainer;
    they only queue whole records, and one thread writes each as one line, so lines never merge."""

    def __init__(self, as_json: bool, stream: TextIO | None = None) -> None:
        self.as_json, self.stream = as_json, stream or sys.stdout
        self._q: queue.Queue[tuple[str, dict[str, Any]] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="demo-output", daemon=True)
        self._thread.start()

    def emit(self, text: str, event: str, **fields: Any) -> None:
        """`text` for the table, `event` and `fields` for --json; both describe the same record."""
        self._q.put((text, {"event": event, **fields}))

    def _run(self) -> None:
        while (item := self._q.get()) is not None:
            text, record = item
            self.stream.write((json.dumps(record) if self.as_json else text) + "\n")
            self.stream.flush()

    def close(self) -> None:
        """Write everything queued so far, then stop. Safe to call twice."""
        if self._thread.is_alive():
            self._q.put(None)
            self._thread.join(timeout=5.0)
