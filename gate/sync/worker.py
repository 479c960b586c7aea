"""Central sync over MQTT: pass snapshots and deltas, policy, trust keys and remote commands."""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from gate.config.model import Config
from gate.contracts import Alarm, DistrustCache, LaneControl, Requested, SetMode, Topics
from gate.core.faults import Faults
from gate.core.reserve import disk_full
from gate.core.threads import LaneFirst, background
from gate.decide.passcache import PassCache
from gate.mqtt_link import Handler, MqttLink
from gate.sync.commands import Commands
from gate.sync.envelope import ControlMessage, Rejected, Verifier
from gate.sync.inbound import BoundedQueue, Job
from gate.sync.passsync import PassSync
from gate.sync.reconcile import behind, safety_seq, witness_of
from gate.sync.sessions import watch_sessions
from gate.sync.trust import PolicyAndKeys
from gate.sync.trust import central_keys as central_keys  # where the wiring has always found it

log = logging.getLogger(__name__)


def central_topics(prefix: str) -> dict[str, str]:
    base = f"{prefix}/central"
    return {
        "policy": f"{base}/policy",
        "keys": f"{base}/keys",
        "manifest": f"{base}/passes/manifest",
        "chunk": f"{base}/passes/chunk/+/+",
        "delta": f"{base}/passes/delta",
    }


TRUST_REFRESH_SECONDS = 30.0
FETCH_WINDOW = 8  # retained chunks asked for at once
QUEUE_BYTES_FACTOR = 4  # at most this many maximum-size messages wait in memory
STORAGE_RETRY_SECONDS = 2.0  # how often messages a full disk held back are tried again
TRANSIENT = ("disk is full", "disk I/O error", "database is locked", "unable to open")


def passing(exc: BaseException) -> bool:
    """A storage failure that goes away (a full disk, I/O, a lock): the message is held and tried again."""
    return isinstance(exc, OSError) or disk_full(exc) or any(t in str(exc) for t in TRANSIENT)


ORDERED = ("manifest", "chunk", "delta", "policy", "keys")  # held behind earlier ones while the disk is full


class CentralSync:
    """Handlers run on one worker thread, never on paho's. The worker owns its pass-cache connection and the
    device documents; the lane hears of changes only through `LaneControl`; others read `status()`."""

    def __init__(
        self,
        control: LaneControl,
        link: MqttLink,
        verifier: Verifier,
        base_keys: list[Any],
        cfg: Config,
        lane_first: LaneFirst | None = None,
        faults: Faults | None = None,
    ) -> None:
        self.control = control
        self.link = link
        self.verifier = verifier
        self.base_keys = base_keys
        self.gate_id = cfg.gate.id
        self.prefix = cfg.mqtt.topic_prefix
        self.category = cfg.venue.category.value
        self.topics = Topics(self.prefix, self.gate_id)
        self.state_dir = state_dir = cfg.gate.state_dir
        cache = PassCache(state_dir / "passes.db", owner="central-sync")
        pause = (lane_first or LaneFirst()).yield_to_lane
        self.passes = PassSync(cache, verifier, self.request_resync, control.report, self._fetch_chunks, pause)
        self._chunk_topics: set[str] = set()  # exact chunk topics subscribed for the snapshot being gathered
        self.trust = PolicyAndKeys(control, verifier, base_keys, state_dir, cfg.policy)
        self.faults = faults or Faults()
        self._jobs = BoundedQueue(verifier.max_bytes, QUEUE_BYTES_FACTOR * verifier.max_bytes)
        self._held: list[Job] = []  # messages a full disk could not take: unacknowledged, retried in order
        self._retry_at = self._next_refresh = 0.0
        self._stopped = False
        self._reconciled = -1  # the link's connection count whose retained state was compared
        self.commands = Commands(control, link, verifier, self.topics, self.gate_id, self.category, self._resync_now)
        self._status: dict[str, Any] = self._snapshot(None)

    def start(self) -> None:
        """Subscribe; the worker (`run`) runs under the gate's supervisor, on the thread named central-sync."""
        t = central_topics(self.prefix)
        routes = {"policy": self.trust.policy, "keys": self.trust.keys, "manifest": self.passes.manifest}
        routes["delta"] = self.passes.delta
        # No wildcard on chunks: they are fetched by exact topic, a few at a time, when a manifest asks
        # (`_fetch_chunks`); mosquitto 2.0.11 sent a slow gate 57 live chunks (20 MB) past Receive Maximum 8.
        for kind, fn in routes.items():
            self.link.subscribe(t[kind], self._enqueue(fn, kind))
        self.link.subscribe(f"{self.topics.base}/command", self._enqueue(self.commands.handle, "command"))
        self.link.subscribe(self.topics.state, self._state_seen)  # before any state is published on a connection
        watch_sessions(self.link, self.resync_soon)

    def _state_seen(self, topic: str, payload: bytes, ack: Callable[[], object] = lambda: None) -> None:
        """paho's thread: the first state message after each connection is the one the broker retained from
        before; the worker compares it with the state files. Later ones are this gate's own, echoed."""
        ack()
        if self._reconciled == self.link.connects or len(payload) > self.verifier.max_bytes:
            return
        self._reconciled = self.link.connects
        self._jobs.put_local(Job(lambda _msg: self._reconcile(payload), "local", topic, b"", lambda: None))

    def _reconcile(self, payload: bytes) -> None:
        seen = witness_of(payload)
        if seen is None:
            return
        info = self.passes.cache.info()
        lane, passes = behind(seen, safety_seq(self.state_dir / "lane.db"), (info.version, info.seq))
        if lane is not None:
            log.critical("state_unproven: %s", lane)
            self.control.post(SetMode(Requested.OUT_OF_SERVICE, "start-up: lane.db older than reported before"))
            self.control.post(Alarm("state_unproven", True, lane))
        if passes is not None:
            log.critical("state_unproven: %s", passes)
            self.control.post(DistrustCache())
            self.control.post(Alarm("state_unproven", True, passes))
            self.request_resync("the pass cache is older than this gate reported before")

    def _resync_now(self) -> None:
        self.passes.cache.staging.drop()
        self.request_resync("requested by central")

    def _enqueue(self, fn: Callable[[ControlMessage], None], kind: str) -> Handler:
        """paho's thread: size-check, then queue within the bound; what is refused is counted and acked."""

        def handler(topic: str, payload: bytes, ack: Callable[[], object] = lambda: None) -> None:
            refused = self._jobs.offer(Job(fn, kind, topic, payload, ack))
            if refused is not None:
                ack()
                log.warning("central: %s on %s refused before queuing: %s", kind, topic, refused)

        return handler

    def _fetch_chunks(self, version: int, missing: list[int]) -> None:
        """The sync worker: the next FETCH_WINDOW chunks by exact topic (RabbitMQ retains only for those)."""
        wanted = {f"{self.prefix}/central/passes/chunk/{version}/{i}" for i in sorted(missing)[:FETCH_WINDOW]}
        for topic in self._chunk_topics - wanted:
            self.link.unsubscribe(topic)
        for topic in wanted - self._chunk_topics:
            self.link.subscribe(topic, self._enqueue(self.passes.chunk, "chunk"))
        self._chunk_topics = wanted

    def resync_soon(self, why: str) -> None:
        """Any thread: the worker asks central for a snapshot."""
        self._jobs.put_local(Job(lambda _msg: self.request_resync(why), "local", "", b"", lambda: None))

    def run(self, stop: threading.Event) -> None:
        """The worker's loop. Resumable: what it is doing lives on the object (the held messages, the next
        trust refresh), so after an exception a supervisor may call it again and it goes on where it was."""
        background()
        while not stop.is_set() and not self._stopped:
            self.turn()

    def turn(self, wait: float = 1.0) -> bool:
        """One step: refresh the trust keys when due, retry what a full disk held back, then one message, waiting
        at most `wait` seconds for it (0: a caller turning many gates' workers on a few threads, bench/fleet.py).
        True if a message was taken."""
        now = time.monotonic()
        if now >= self._next_refresh:
            self._next_refresh = now + TRUST_REFRESH_SECONDS
            self.faults.run("refreshing the trust keys", self.trust.refresh)
        if self._held and now >= self._retry_at:
            self._retry_held()
        wake = min(self._next_refresh, self._retry_at if self._held else self._next_refresh)
        try:
            job = self._jobs.get(timeout=min(wait, max(0.0, wake - time.monotonic())))
        except queue.Empty:
            return False
        try:
            if job is None:
                self._stopped = True
            elif self._held and job.kind in ORDERED:
                self._held.append(job)  # behind what is held, in order: acknowledged once stored
            else:
                self._finish(job)
        finally:
            self._jobs.done()
        return True

    def _finish(self, job: Job) -> bool:
        """Handle a message; acknowledge it once it is stored, or hold it (unacknowledged) if the disk could not
        take it. True if it is done with."""
        done = self._handle(job)
        if not done:
            if not self._held:
                log.error("central: %s not stored (the disk is full?); held and retried, unacknowledged", job.kind)
            self._held.append(job)
            self._retry_at = time.monotonic() + STORAGE_RETRY_SECONDS
        else:
            job.ack()  # after the handler: a cache change is committed before the broker forgets it
        self.faults.run("publishing the sync status", self._publish_status)
        return done

    def _retry_held(self) -> None:
        held, self._held = self._held, []
        for i, job in enumerate(held):
            if not self._finish(job):
                self._held.extend(held[i + 1 :])  # still no room: the rest stay behind it, in order
                return
        log.warning("central: the messages held while the disk was full are stored and acknowledged")

    def _handle(self, job: Job) -> bool:
        """False if the message could not be stored (a full disk, I/O): it is to be tried again."""
        try:
            if job.kind == "local":
                job.fn(None)
            elif job.payload:  # empty: a retained message being cleared
                msg = self.verifier.open(job.payload, job.kind)
                job.fn(msg)
                self.verifier.accepted += 1
        except Rejected as exc:
            log.warning("central: rejected %s on %s: %s (%s)", job.kind, job.topic, exc.reason, exc)
        except (OSError, sqlite3.OperationalError) as exc:
            if job.kind == "command" or not passing(exc):  # a command is answered already, never held
                self.verifier.rejected["error"] += 1
                log.warning("central: %s on %s failed: %s: %s", job.kind, job.topic, type(exc).__name__, exc)
                return True
            log.debug("central: %s not stored: %s", job.kind, exc)
            self._storage_failed = f"{type(exc).__name__}: {exc}"[:200]
            return False
        except Exception as exc:  # hostile input nothing above foresaw: one line, counted; details at debug
            self.verifier.rejected["error"] += 1
            log.warning(
                "central: %s on %s failed: %s: %s; ignored", job.kind, job.topic, type(exc).__name__, str(exc)[:120]
            )
            log.debug("central: %s failure", job.kind, exc_info=True)
        return True

    def _snapshot(self, progress: str | None) -> dict[str, Any]:
        return {
            "accepted": self.verifier.accepted,
            "rejected": dict(self.verifier.rejected),
            "awaiting_resync": self.passes.awaiting_resync,
            "snapshot_in_progress": progress,
            "held": len(self._held),
        }

    def _publish_status(self) -> None:
        try:
            progress = self.passes.progress()
        except (OSError, sqlite3.Error):  # the staging file unreadable now (a full disk): the last one said
            progress = self._status.get("snapshot_in_progress")
        self._status = self._snapshot(progress)

    def status(self) -> dict[str, Any]:
        """Any thread: the worker's last published status, with what paho's thread refused before queuing."""
        status = dict(self._status)
        status["rejected"] = dict(Counter(status["rejected"]) + self._jobs.refused_now())
        return status

    def wait_idle(self) -> None:
        """Block until every received control message has been handled (tests and benchmarks)."""
        self._jobs.join()

    def interrupt(self) -> None:
        """Any thread: wake the worker so that it sees its stop event."""
        self._jobs.put_local(None)

    def close(self) -> None:
        """Once the worker has ended: its pass-cache connection."""
        self.passes.cache.close()

    def request_resync(self, why: str) -> None:
        info = self.passes.cache.info()
        self.passes.awaiting_resync = True
        log.warning(
            "central: %s; asking for a resync and deciding from cache %d.%d meanwhile", why, info.version, info.seq
        )
        body = {
            "gate_id": self.gate_id,
            "have_version": info.version,
            "have_seq": info.seq,
            "reason": why,
            "time": time.time(),
        }
        self.link.publish(f"{self.topics.base}/resync", json.dumps(body).encode(), qos=1)
        self._publish_status()
        self.control.report()
