"""`[metrics] listen`: Prometheus metrics at /metrics and a health check at /healthz, on a thread of their own.

Everything is read at scrape time from what the lane already keeps (its counters, the state the reporter
computes every 2 s): a scrape never touches the lane's databases or waits for the lane."""

from __future__ import annotations

import logging
import platform
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gate import __version__
from gate.contracts import ALARMS
from gate.core.address import broker_address
from gate.decide.decision import Reason
from gate.ops.telemetry import DECODE_BUCKETS_S

if TYPE_CHECKING:
    from gate.lane.loop import Gate

log = logging.getLogger(__name__)
OUTCOMES = ("passed", "not_passed", "unconfirmed")  # gate.contracts.PassageOutcome.outcome
LOOP_STALE_S = 5.0  # /healthz fails when the scan loop has not turned for this long (it turns every 0.2 s)


class GateCollector(Collector):
    def __init__(self, gate: Gate, source_counters: Callable[[], dict[str, int]]) -> None:
        self.gate, self.source_counters = gate, source_counters

    def collect(self) -> Iterator[Metric]:
        g, stats = self.gate, self.gate.stats
        state: dict[str, Any] = g.reporter.last_state
        info = GaugeMetricFamily(
            "gate_build_info", "The gate software and Python running", labels=["version", "python"]
        )
        info.add_metric([__version__, platform.python_version()], 1)
        yield info
        # Every reason and outcome from the start, at 0: rate() and increase() see the first one
        c = CounterMetricFamily("gate_decisions", "Decisions since start, by reason", labels=["reason"])
        for reason in sorted({*(r.value for r in Reason), *stats.decisions}):
            c.add_metric([reason], stats.decisions.get(reason, 0))
        yield c
        c = CounterMetricFamily("gate_passages", "Passages after a release, by outcome", labels=["outcome"])
        for outcome in sorted({*OUTCOMES, *stats.passages}):
            c.add_metric([outcome], stats.passages.get(outcome, 0))
        yield c
        h = HistogramMetricFamily("gate_decode_seconds", "Time to decode one frame")
        cumulative, buckets = 0, []
        for bound, n in zip([*map(str, DECODE_BUCKETS_S), "+Inf"], stats.decode_buckets, strict=True):
            cumulative += n
            buckets.append((bound, cumulative))
        h.add_metric([], buckets, stats.decode_seconds_sum)
        yield h
        yield gauge("gate_outbox_depth", "Check-ins and events waiting for the broker's ack", g.outbox.depth)
        yield gauge("gate_outbox_oldest_age_seconds", "Age of the oldest undelivered record (0: none)",
                    state.get("outbox_oldest_age_s") or 0.0)  # fmt: skip
        age = state.get("cache_age_s")
        yield gauge("gate_cache_age_seconds", "Since central last vouched for the pass cache (+Inf: never synced)",
                    float("inf") if age is None else age)  # fmt: skip
        yield gauge("gate_cache_synced", "1 once central has vouched for the pass cache at least once",
                    int(age is not None))  # fmt: skip
        yield gauge("gate_clock_synced", "1 while the clock is synchronised (codes' validity needs it)",
                    int(bool(state.get("clock_synced"))))  # fmt: skip
        yield gauge("gate_broker_connected", "1 while connected to the MQTT broker",
                    int(bool(g.link and g.link.connected.is_set())))  # fmt: skip
        if g.link is not None:  # which of [mqtt] hosts the gate is on (or trying next)
            yield InfoMetricFamily("gate_broker", "The MQTT broker the gate is on", value={"broker": g.link.broker})
        yield CounterMetricFamily("gate_broker_connects", "Connections to the broker since start (over 1: reconnects)",
                                  value=g.link.connects if g.link else 0)  # fmt: skip
        yield gauge("gate_dead_letters", "Events the broker refused max_refusals times, set aside (alarm dead_letter)",
                    g.outbox.dead_letters)  # fmt: skip
        a = GaugeMetricFamily("gate_alarm_active", "1 while the alarm is raised", labels=["alarm"])
        active = g.recorder.active_alarms
        for name in sorted(set(ALARMS) | active):
            a.add_metric([name], int(name in active))
        yield a
        yield CounterMetricFamily(
            "gate_source_restarts", "Camera restarts or serial reconnects since start",
            value=self.source_counters().get("source_restarts", 0),
        )  # fmt: skip
        yield gauge("gate_scan_loop_alive", "1 while the scan loop turns", int(healthy(g)[0]))


def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def healthy(gate: Gate) -> tuple[bool, str]:
    if not gate.loop_at or time.monotonic() - gate.loop_at > LOOP_STALE_S:
        return False, "scan loop not running"
    if not gate.actuator.relay_known():
        return False, "relay state unknown"
    return True, "ok"


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes every few seconds: not for the journal
        pass


class MetricsServer:
    def __init__(self, listen: str, gate: Gate, source_counters: Callable[[], dict[str, int]]) -> None:
        host, port = broker_address(listen)
        registry = CollectorRegistry(auto_describe=True)
        registry.register(GateCollector(gate, source_counters))
        ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        metrics = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO")
            if path == "/healthz":
                ok, why = healthy(gate)
                start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
                return [why.encode() + b"\n"]
            if path != "/metrics":
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"not found: /metrics and /healthz only\n"]
            return metrics(environ, start_response)  # type: ignore[no-any-return]

        self.server: WSGIServer = make_server(host, port, app, handler_class=_Quiet)
        self.port = self.server.server_port
        self._thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("metrics: /metrics and /healthz on %s:%d", self.server.server_address[0], self.port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def scrape(url: str, timeout: float = 5.0) -> dict[str, float]:
    """One scrape of a /metrics endpoint: sample (name with labels) → value."""
    from urllib.request import urlopen

    with urlopen(url, timeout=timeout) as resp:
        text = resp.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out
