"""The ledger of releases: each admitted decision that raised the relay, open until its passages' outcomes are in."""

from __future__ import annotations

from dataclasses import dataclass, field

from gate.contracts import PassageOutcome
from gate.deliver.events import CheckIn


@dataclass
class OpenRelease:
    """One release waiting for its passages: the holder (index 0), then each companion."""

    decision: CheckIn  # the recorded decision; its event_id is the release's ref
    opened_at: float  # monotonic time of the decision
    outcomes: dict[int, str] = field(default_factory=dict)  # index -> passed | not_passed | unconfirmed

    @property
    def ref(self) -> str:
        return self.decision.event_id

    @property
    def token(self) -> str | None:
        return self.decision.token

    @property
    def passages(self) -> int:
        return self.decision.companions + 1


@dataclass(frozen=True)
class Resolved:
    """One outcome applied to its release. `closed`: it was the release's last passage (the release left the
    ledger); `holder`: it was the holder's own passage, the one anti-passback counts."""

    release: OpenRelease
    outcome: PassageOutcome
    closed: bool

    @property
    def holder(self) -> bool:
        return self.outcome.index == 0


class Ledger:
    """The one place a release is remembered, on the lane thread. Opened when its decision is recorded (before
    the relay: a dictionary insert, no I/O), resolved by the outcomes the actuator reports. The recorder reads a
    release's decision here to record each passage against it; anti-passback reads here which tokens are being
    let through now; the state reports how many releases are open. The lane machine (gate/actuate/machine.py)
    keeps only what it needs to drive the relay, and agrees with this ledger once the lane has carried out
    what the actuator reported (but for the exit button's releases, which admit nobody and are its own)."""

    def __init__(self) -> None:
        self._open: dict[str, OpenRelease] = {}  # ref -> release, in the order they were opened
        self._holders: dict[str, OpenRelease] = {}  # token -> its latest release whose holder has not passed yet

    def open(self, decision: CheckIn, at: float) -> OpenRelease:
        release = OpenRelease(decision, at)
        self._open[release.ref] = release
        if release.token is not None:
            self._holders[release.token] = release
        return release

    def resolve(self, o: PassageOutcome) -> Resolved | None:
        """Apply one passage's outcome; None for a release this ledger never opened (or already closed)."""
        release = self._open.get(o.ref)
        if release is None:
            return None
        release.outcomes[o.index] = o.outcome
        if o.index == 0 and release.token is not None and self._holders.get(release.token) is release:
            del self._holders[release.token]
        closed = o.index + 1 >= release.passages  # the last passage: the machine reports them in order
        if closed:
            del self._open[o.ref]
            if release.token is not None and self._holders.get(release.token) is release:
                del self._holders[release.token]
        return Resolved(release, o, closed)

    def get(self, ref: str) -> OpenRelease | None:
        return self._open.get(ref)

    def letting_through(self, token: str) -> float | None:
        """When the latest release for `token` was opened, while its holder has not passed yet; else None."""
        release = self._holders.get(token)
        return None if release is None else release.opened_at

    def refs(self) -> list[str]:
        """The open releases' refs, oldest first."""
        return list(self._open)

    def __len__(self) -> int:
        return len(self._open)
