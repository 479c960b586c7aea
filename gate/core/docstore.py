"""Small device-state documents in TinyDB, written atomically (temp file, fsync, os.replace)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from tinydb import TinyDB
from tinydb.storages import Storage
from tinydb.table import Document


class AtomicJSONStorage(Storage):
    """A TinyDB storage whose every write replaces the file whole, so a power cut leaves old or new."""

    def __init__(self, path: str | os.PathLike[str], **_: Any) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def read(self) -> dict[str, dict[str, Any]] | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        return json.loads(text) if text.strip() else None

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def close(self) -> None:
        pass


class DocStore:
    """One named document (a TinyDB table holding a single record) in a TinyDB file."""

    def __init__(self, path: Path, name: str) -> None:
        self.path = path
        self._name = name

    def get(self) -> dict[str, Any] | None:
        with TinyDB(self.path, storage=AtomicJSONStorage) as db:
            rows = db.table(self._name).all()
        return dict(rows[0]) if rows else None

    def put(self, doc: dict[str, Any]) -> None:
        with TinyDB(self.path, storage=AtomicJSONStorage) as db:
            # One upsert is one storage write, so the swap is atomic; a model dump always has every key.
            db.table(self._name).upsert(Document(doc, doc_id=1))
