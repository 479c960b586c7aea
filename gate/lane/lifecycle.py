"""The gate's threads besides the lane: built by `build()`, started by `Gate.start()` in order, stopped in reverse."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from gate.actuator import Actuator
from gate.contracts import Alarm, LaneControl
from gate.core.supervisor import Supervisor
from gate.deliver.delivery import Drainer
from gate.mqtt_link import MqttLink
from gate.ops.homeassistant import Discovery
from gate.ops.metrics import MetricsServer
from gate.sync.worker import CentralSync
from gate.venue.gps import Gps

log = logging.getLogger(__name__)
STOP_TIMEOUT = 5.0  # seconds each thread has to end at close


def restart_alarm(control: LaneControl) -> Callable[[str, BaseException], None]:
    """The supervisor's report of a thread that died: the `thread_restarted` alarm, queued to the lane."""

    def report(name: str, exc: BaseException) -> None:
        control.post(Alarm("thread_restarted", True, f"thread {name} died ({type(exc).__name__}: {exc})"[:300]))

    return report


def recovery_alarm(control: LaneControl) -> Callable[[str], None]:
    """A restarted thread that has lasted: the `thread_restarted` alarm is cleared."""

    def report(name: str) -> None:
        control.post(Alarm("thread_restarted", False, f"thread {name} has run a minute since its restart"))

    return report


@dataclass
class Threads:
    """Everything that runs beside the lane, built and not started. `start` starts them in the order of the
    fields (the actuator worker first: a release needs it; the MQTT link last: nothing is received before its
    handler runs); `stop` stops them in reverse, each within STOP_TIMEOUT."""

    actuator: Actuator
    supervisor: Supervisor
    gps: Gps | None = None
    metrics: MetricsServer | None = None  # made by `Gate.start()`: building binds no socket
    sync: CentralSync | None = None
    drainer: Drainer | None = None
    discovery: Discovery | None = None
    link: MqttLink | None = None

    def start(self) -> None:
        sup = self.supervisor
        sup.spawn("actuator", self.actuator.work)  # stopped by Actuator.close(), first of all
        if self.gps is not None:
            sup.spawn("gps", self.gps.run)
        if self.metrics is not None:
            sup.spawn("metrics", self.metrics.run)
        if self.sync is not None:
            self.sync.start()  # subscriptions, before the link connects
            sup.spawn("central-sync", self.sync.run, wake=self.sync.interrupt)
        if self.drainer is not None:
            sup.spawn("outbox-drain", self.drainer.run, wake=self.drainer.wake)
        if self.discovery is not None:
            sup.spawn("discovery", self.discovery.run, wake=self.discovery.stop)
        if self.link is not None:
            self.link.start()  # paho's own network thread

    def stop(self) -> None:
        """Safe to call twice. The link first (the last started), then the supervised threads in reverse; then
        what each held once its thread has ended."""
        if self.link is not None:
            self.link.stop()
        self.supervisor.stop(STOP_TIMEOUT)
        if self.sync is not None:
            self.sync.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.gps is not None:
            self.gps.stop()
