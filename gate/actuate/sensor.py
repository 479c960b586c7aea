"""The passage sensor's edges, debounced and rate-limited: a flapping sensor costs the lane nothing. Pure."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

FLAP_WINDOW = 1.0  # seconds over which edges are counted
FLAP_QUIET = 2.0  # a flapping sensor is believed again after this long without an edge
FORCED_EVERY = 10.0  # at most one forced_passage alarm in this many seconds; the rest are counted into it


@dataclass(frozen=True)
class SensorLimits:
    debounce: float = 0.0  # an edge this soon after the previous one is contact bounce, ignored
    flap_edges: int = 40  # more edges than this in FLAP_WINDOW: flapping (people make at most a few a second)


class EdgeFilter:
    """Decides which edges the lane machine sees. While the sensor flaps every edge is ignored (a release then
    ends at its timeout, as if nobody passed: fail safe) and counted; `sensor_flapping` is raised once and
    cleared after FLAP_QUIET without an edge, with the count."""

    def __init__(self, limits: SensorLimits | None = None) -> None:
        self.limits = limits or SensorLimits()
        self._edges: deque[float] = deque()
        self._last = float("-inf")
        self.flapping = False
        self.ignored = 0  # edges ignored in the current (or last) flapping episode
        self.bounces = 0  # edges ignored as contact bounce, since start
        self._forced_at = float("-inf")
        self._forced_held = 0  # forced passages not alarmed yet (rate limit)

    def edge(self, now: float) -> tuple[bool, str | None]:
        """(whether the machine acts on this edge, the detail of a `sensor_flapping` alarm that starts now)."""
        edges, lim = self._edges, self.limits
        edges.append(now)
        while edges and edges[0] < now - FLAP_WINDOW:
            edges.popleft()
        previous, self._last = self._last, now
        if self.flapping:
            self.ignored += 1
            return False, None
        if len(edges) > lim.flap_edges:
            self.flapping, self.ignored = True, 1
            edges.clear()
            return False, (
                f"passage sensor flapping: more than {lim.flap_edges} edges in {FLAP_WINDOW:.0f}s; "
                "its edges are ignored (releases end at their timeout) until it is quiet"
            )
        if now - previous < lim.debounce:
            self.bounces += 1
            return False, None
        return True, None

    @property
    def deadline(self) -> float | None:
        """When the flapping episode may end (the lane machine's tick is due then)."""
        return self._last + FLAP_QUIET if self.flapping else None

    def settle(self, now: float) -> str | None:
        """The detail of the `sensor_flapping` alarm's clearing, once the sensor has been quiet long enough."""
        if not self.flapping or now - self._last < FLAP_QUIET:
            return None
        self.flapping = False
        return f"passage sensor quiet again: {self.ignored} edges were ignored while it flapped"

    def forced(self, now: float) -> str | None:
        """The detail of a `forced_passage` alarm to raise now, or None if one was raised too recently (then
        this one is counted into the next)."""
        if now - self._forced_at < FORCED_EVERY:
            self._forced_held += 1
            return None
        held = self._forced_held
        self._forced_held = 0
        self._forced_at = now
        return "passage with no release" + (f" ({held} more since the last alarm)" if held else "")
