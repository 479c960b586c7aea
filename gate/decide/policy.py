"""The admission policy in force on a gate, kept as a TinyDB document: central's newest, else config's defaults."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from gate.config.policy import Policy
from gate.core.docstore import DocStore
from gate.core.errors import ConfigError


class PolicyStore:
    """The current policy document; starts from config defaults, replaced whole by newer versions."""

    def __init__(self, path: Path, defaults: Policy) -> None:
        self._doc = DocStore(path, "policy")
        self._defaults = defaults

    def load(self) -> Policy:
        data = self._doc.get()
        if data is None:
            return self._defaults
        try:
            stored = Policy.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{self._doc.path}: stored policy is invalid: {exc}") from None
        return stored if stored.version >= self._defaults.version else self._defaults

    def save(self, policy: Policy) -> None:
        self._doc.put(policy.model_dump(mode="json"))
