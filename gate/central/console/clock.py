"""Times as staff read them: in the city's zone on the pages (`--zone`), UTC in exports and the audit's CSV."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gate.core.errors import GateError


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise GateError(f"--zone {name!r}: give an IANA zone such as Europe/Berlin or UTC") from None


class Clock:
    """Formats epoch seconds in one zone; an unknown time is "-"."""

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz

    def __call__(self, t: float | None) -> str:
        if t is None or not 0 <= t < 1e11:
            return "-"
        return datetime.fromtimestamp(t, self.tz).strftime("%Y-%m-%d %H:%M:%S %Z")

    def parse_local(self, text: str) -> datetime:
        """An ISO time typed in a form: in the city's zone unless it names its own."""
        t = datetime.fromisoformat(text)
        return t if t.tzinfo else t.replace(tzinfo=self.tz)


UTC_CLOCK = Clock(ZoneInfo("UTC"))
