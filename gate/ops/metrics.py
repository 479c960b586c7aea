"""`[metrics] listen`: Prometheus metrics at /metrics and a health check at /healthz, on a thread of their own.

Everything is read at scrape time from the last `LaneSnapshot` the lane published (every 2 s, and when the scan
loop starts or stops): a scrape never touches the lane's databases or waits for the lane."""

from __future__ import annotations

import logging
import platform
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any
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
from gate.ops.snapshot import LaneSnapshot
from gate.ops.telemetry import DECODE_BUCKETS_S

Snapshot = Callable[[], LaneSnapshot]

log = logging.getLogger(__name__)
OUTCOMES = ("passed", "not_passed", "unconfirmed")  # gate.contracts.PassageOutcome.outcome
LOOP_STALE_S = 5.0  # /healthz fails when the scan loop has not turned for this long (it turns every 0.2 s)


class GateCollector(Collector):
    def __init__(self, snapshot: Snapshot, source_counters: Callable[[], dict[str, int]]) -> None:
        self.snapshot = snapshot
        self.source_counters = source_counters

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot()
        info = GaugeMetricFamily(
            "gate_build_info", "The gate software and Python running", labels=["version", "python"]
        )
        info.add_metric([__version__, platform.python_version()], 1)
        yield info
        yield from counts(snap)
        yield decode_histogram(snap)
        for name, doc, value in gauges(snap):
            yield GaugeMetricFamily(name, doc, value=value)
        yield failure_info(snap.state)
        if snap.state.get("broker"):  # which of [mqtt] hosts the gate is on (or trying next)
            yield InfoMetricFamily(
                "gate_broker", "The MQTT broker the gate is on", value={"broker": snap.state["broker"]}
            )
        yield CounterMetricFamily(
            "gate_broker_connects",
            "Connections to the broker since start (over 1: reconnects)",
            value=snap.broker_connects,
        )
        alarms = GaugeMetricFamily("gate_alarm_active", "1 while the alarm is raised", labels=["alarm"])
        for name in sorted(set(ALARMS) | snap.alarms_active):
            alarms.add_metric([name], int(name in snap.alarms_active))
        yield alarms
        restarts = self.source_counters().get("source_restarts", 0)
        yield CounterMetricFamily("gate_source_restarts", "Camera restarts or serial reconnects since start", restarts)


def counts(snap: LaneSnapshot) -> Iterator[Metric]:
    """Every reason and outcome from the start, at 0: rate() and increase() see the first one."""
    decisions = CounterMetricFamily("gate_decisions", "Decisions since start, by reason", labels=["reason"])
    for reason in sorted({*(r.value for r in Reason), *snap.decisions}):
        decisions.add_metric([reason], snap.decisions.get(reason, 0))
    yield decisions
    passages = CounterMetricFamily("gate_passages", "Passages after a release, by outcome", labels=["outcome"])
    for outcome in sorted({*OUTCOMES, *snap.passages}):
        passages.add_metric([outcome], snap.passages.get(outcome, 0))
    yield passages


def failure_info(state: Mapping[str, Any]) -> GaugeMetricFamily:
    """1 with the reason the broker link failed (gate.deliver.connfail.REASONS), or reason="none"."""
    info = GaugeMetricFamily(
        "gate_broker_failure_info", "Why the broker link failed, by reason (none: all well)", labels=["reason"]
    )
    info.add_metric([(state.get("broker_failure") or {}).get("reason") or "none"], 1)
    return info


def decode_histogram(snap: LaneSnapshot) -> HistogramMetricFamily:
    histogram = HistogramMetricFamily("gate_decode_seconds", "Time to decode one frame")
    cumulative, buckets = 0, []
    counted = snap.decode_buckets or (0,) * (len(DECODE_BUCKETS_S) + 1)
    for bound, n in zip([*map(str, DECODE_BUCKETS_S), "+Inf"], counted, strict=True):
        cumulative += n
        buckets.append((bound, cumulative))
    histogram.add_metric([], buckets, snap.decode_seconds_sum)
    return histogram


def gauges(snap: LaneSnapshot) -> list[tuple[str, str, float]]:
    """(name, help, value) of each plain gauge."""
    state = snap.state
    age = state.get("cache_age_s")
    return [
        ("gate_outbox_depth", "Check-ins and events waiting for the broker's ack", snap.outbox_depth),
        (
            "gate_outbox_oldest_age_seconds",
            "Age of the oldest undelivered record (0: none)",
            state.get("outbox_oldest_age_s") or 0.0,
        ),
        (
            "gate_cache_age_seconds",
            "Since central last vouched for the pass cache (+Inf: never synced)",
            float("inf") if age is None else age,
        ),
        ("gate_cache_synced", "1 once central has vouched for the pass cache at least once", int(age is not None)),
        (
            "gate_clock_synced",
            "1 while the clock is synchronised (codes' validity needs it)",
            int(bool(state.get("clock_synced"))),
        ),
        ("gate_broker_connected", "1 while connected to the MQTT broker", int(snap.broker_connected)),
        (
            "gate_dead_letters",
            "Events the broker refused max_refusals times, set aside (alarm dead_letter)",
            snap.dead_letters,
        ),
        ("gate_scan_loop_alive", "1 while the scan loop turns", int(healthy(snap)[0])),
    ]


def healthy(snap: LaneSnapshot) -> tuple[bool, str]:
    if not snap.loop_at or time.monotonic() - snap.loop_at > LOOP_STALE_S:
        return False, "scan loop not running"
    if not snap.relay_known:
        return False, "relay state unknown"
    return True, "ok"


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # scrapes every few seconds: not for the journal
        pass


class MetricsServer:
    def __init__(self, listen: str, snapshot: Snapshot, source_counters: Callable[[], dict[str, int]]) -> None:
        host, port = broker_address(listen)
        registry = CollectorRegistry(auto_describe=True)
        registry.register(GateCollector(snapshot, source_counters))
        ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        metrics = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO")
            if path == "/healthz":
                ok, why = healthy(snapshot())
                start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
                return [why.encode() + b"\n"]
            if path != "/metrics":
                start_response("404 Not Found", [("Content-Type", "text/plain")])
                return [b"not found: /metrics and /healthz only\n"]
            return metrics(environ, start_response)  # type: ignore[no-any-return]

        self.server: WSGIServer = make_server(host, port, app, handler_class=_Quiet)
        self.port = self.server.server_port
        self.server.timeout = 0.5  # handle_request returns this often to look at the stop event
        log.info("metrics: /metrics and /healthz on %s:%d", self.server.server_address[0], self.port)

    def run(self, stop: threading.Event) -> None:
        """Serve scrapes until `stop` (under the gate's supervisor)."""
        while not stop.is_set():
            self.server.handle_request()

    def close(self) -> None:
        """After `run` has ended: the listening socket."""
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
