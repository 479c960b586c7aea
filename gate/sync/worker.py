"""Central sync over MQTT: pass snapshots and deltas, policy, trust keys and remote commands."""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gate.config.model import Config
from gate.config.policy import Policy
from gate.contracts import LaneControl, SetMode, SetTrip, Topics
from gate.core.docstore import DocStore
from gate.core.errors import CodeError, ConfigError
from gate.core.faults import Faults
from gate.core.threads import LaneFirst, background
from gate.decide.codes import check_token
from gate.decide.keys import key_id_of, public_from_pem
from gate.decide.passcache import PassCache
from gate.decide.policy import PolicyStore
from gate.mqtt_link import Handler, MqttLink
from gate.sync.envelope import ControlMessage, Rejected, Verifier
from gate.sync.inbound import BoundedQueue, Job
from gate.sync.passsync import PassSync
from gate.sync.sessions import watch_sessions

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


def central_keys(state_dir: Path, now: float | None = None) -> list[Any]:
    """Central's stored trust keys whose window includes now (overlap makes rotation seamless)."""
    now = time.time() if now is None else now
    doc = DocStore(state_dir / "device.json", "trust_keys").get() or {}
    return [
        public_from_pem(k["pem"].encode(), "stored keys")
        for k in doc.get("keys", [])
        if k["not_before"] <= now and (not k["not_after"] or now < k["not_after"])
    ]


TRUST_REFRESH_SECONDS = 30.0
FETCH_WINDOW = 8  # retained chunks asked for at once
QUEUE_BYTES_FACTOR = 4  # at most this many maximum-size messages wait in memory


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
        self.control, self.link, self.verifier, self.base_keys = control, link, verifier, base_keys
        self.gate_id, self.prefix, self.category = cfg.gate.id, cfg.mqtt.topic_prefix, cfg.venue.category.value
        self.topics = Topics(self.prefix, self.gate_id)
        self.state_dir = state_dir = cfg.gate.state_dir
        cache, pause = PassCache(state_dir / "passes.db"), (lane_first or LaneFirst()).yield_to_lane
        self.passes = PassSync(cache, verifier, self.request_resync, control.report, self._fetch_chunks, pause)
        self._chunk_topics: set[str] = set()  # exact chunk topics subscribed for the snapshot being gathered
        self.keys_doc = DocStore(state_dir / "device.json", "trust_keys")
        self.policies = PolicyStore(state_dir / "device.json", cfg.policy)
        self.policy_version = self.policies.load().version
        self._trusted: list[bytes] = []
        self.faults = faults or Faults()
        self._jobs = BoundedQueue(verifier.max_bytes, QUEUE_BYTES_FACTOR * verifier.max_bytes)
        self._status: dict[str, Any] = self._snapshot(None)
        self._thread = threading.Thread(target=self._work, name="central-sync", daemon=True)

    def start(self) -> None:
        t = central_topics(self.prefix)
        routes = {"policy": self._policy, "keys": self._keys, "manifest": self.passes.manifest}
        routes["delta"] = self.passes.delta
        # No wildcard on chunks: they are fetched by exact topic, a few at a time, when a manifest asks
        # (`_fetch_chunks`); mosquitto 2.0.11 sent a slow gate 57 live chunks (20 MB) past Receive Maximum 8.
        for kind, fn in routes.items():
            self.link.subscribe(t[kind], self._enqueue(fn, kind))
        self.link.subscribe(f"{self.topics.base}/command", self._enqueue(self._command, "command"))
        watch_sessions(self.link, self.resync_soon)
        self._thread.start()

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

    def _work(self) -> None:
        background()
        next_refresh = 0.0
        while True:
            if time.monotonic() >= next_refresh:
                next_refresh = time.monotonic() + TRUST_REFRESH_SECONDS
                self.faults.run("refreshing the trust keys", self.refresh_trust)
            try:
                job = self._jobs.get(timeout=max(0.0, next_refresh - time.monotonic()))
            except queue.Empty:
                continue
            if job is None:
                self._jobs.done()
                return
            try:
                self._handle(job)
            finally:
                job.ack()  # after the handler: a cache change is committed before the broker forgets it
                self._publish_status()
                self._jobs.done()

    def _handle(self, job: Job) -> None:
        try:
            if job.kind == "local":
                job.fn(None)
            elif job.payload:  # empty: a retained message being cleared
                msg = self.verifier.open(job.payload, job.kind)
                job.fn(msg)
                self.verifier.accepted += 1
        except Rejected as exc:
            log.warning("central: rejected %s on %s: %s (%s)", job.kind, job.topic, exc.reason, exc)
        except Exception as exc:  # hostile input nothing above foresaw: one line, counted; details at debug
            self.verifier.rejected["error"] += 1
            log.warning(
                "central: %s on %s failed: %s: %s; ignored", job.kind, job.topic, type(exc).__name__, str(exc)[:120]
            )
            log.debug("central: %s failure", job.kind, exc_info=True)

    def _snapshot(self, progress: str | None) -> dict[str, Any]:
        return {
            "accepted": self.verifier.accepted,
            "rejected": dict(self.verifier.rejected),
            "awaiting_resync": self.passes.awaiting_resync,
            "snapshot_in_progress": progress,
        }

    def _publish_status(self) -> None:
        self._status = self._snapshot(self.passes.progress())

    def status(self) -> dict[str, Any]:
        """Any thread: the worker's last published status, with what paho's thread refused before queuing."""
        status = dict(self._status)
        status["rejected"] = dict(Counter(status["rejected"]) + self._jobs.refused_now())
        return status

    def wait_idle(self) -> None:
        """Block until every received control message has been handled (tests and benchmarks)."""
        self._jobs.join()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._jobs.put_local(None)
            self._thread.join(timeout=5)
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

    # -- policy and trust keys ---------------------------------------------------------------------
    def _policy(self, msg: ControlMessage) -> None:
        try:
            doc = {**msg.body.get("policy", {}), "version": int(msg.body["version"])}
            policy = Policy.model_validate_json(json.dumps(doc), strict=True)  # no coercion, as in the config
        except (KeyError, TypeError, ValueError, ValidationError) as exc:
            raise self.verifier.invalid(f"policy: {str(exc)[:200]}") from None
        current = self.policy_version
        if policy.version < current:
            raise self.verifier.old(f"policy version {policy.version} is older than {current}")
        if policy.version == current:
            return
        self.policies.save(policy)  # on disk before the lane acts on it
        self.policy_version = policy.version
        self.control.apply_policy(policy)
        log.info("central: policy version %d in force", policy.version)
        self.control.report()

    def _keys(self, msg: ControlMessage) -> None:
        try:
            version = int(msg.body["version"])
            keys: list[dict[str, Any]] = [
                {
                    "pem": str(k["pem"]),
                    "not_before": float(k.get("not_before") or 0),
                    "not_after": float(k.get("not_after") or 0),
                }
                for k in msg.body["keys"]
            ]
            for k in keys:
                public_from_pem(k["pem"].encode(), "keys message")
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise self.verifier.invalid(f"keys: {exc}") from None
        current = (self.keys_doc.get() or {}).get("version", 0)
        if version < current:
            raise self.verifier.old(f"keys version {version} is older than {current}")
        if version == current:
            return
        self.keys_doc.put({"version": version, "keys": keys})
        self.refresh_trust()
        log.info("central: trust keys version %d (%d keys)", version, len(keys))

    def refresh_trust(self, now: float | None = None) -> None:
        """Config keys plus central's keys in their window; the lane hears only when the set changes."""
        keys = [*self.base_keys, *central_keys(self.state_dir, now)]
        ids = sorted(key_id_of(k) for k in keys)
        if ids != self._trusted:
            self._trusted = ids
            self.control.trust_keys(keys)

    # -- commands ------------------------------------------------------------------------------------
    def _command(self, msg: ControlMessage) -> None:
        self.verifier.fresh(msg, time.time())
        name, args = str(msg.body.get("name")), msg.body.get("args") or {}
        reply_to = str(msg.body.get("reply_to") or "")
        replies = f"{self.topics.base}/replies/"  # under the gate's own topics: its ACL lets it write only there
        if not (reply_to.startswith(replies) and len(reply_to) <= 200 and not set(reply_to) & {"+", "#", "\0"}):
            reply_to = f"{self.topics.base}/reply"  # never publish where a message merely asks
        head: dict[str, Any] = {
            "correlation_id": msg.body.get("correlation_id"),
            "gate_id": self.gate_id,
            "command": name,
        }

        def reply(result: dict[str, Any]) -> None:  # runs on the lane thread; {"error": …} when the lane refused
            body = {"ok": False, "error": result["error"]} if "error" in result else {"ok": True, "result": result}
            self.link.publish(reply_to, json.dumps({**head, **body}).encode(), qos=1)

        try:
            self._run_command(name, args, reply)
        except (ValueError, CodeError) as exc:
            reply({"error": str(exc)})

    def _run_command(self, name: str, args: dict[str, Any], reply: Callable[[dict[str, Any]], None]) -> None:
        if name == "open":
            self.control.open(check_token(str(args.get("operator", ""))), reply)
            return
        if (mode := SetMode.command(name, args)) is not None:
            self.control.post(mode)
        elif name == "set-trip":
            if self.category != "bus":
                raise ValueError(f"set-trip: this gate's venue is a {self.category}, not a bus")
            self.control.post(SetTrip.parse(args))
        elif name == "resync":
            self.passes.cache.staging.drop()
            self.request_resync("requested by central")
        elif name != "status":
            raise ValueError(f"unknown command {name!r}")
        self.control.report(reply)  # carried out after the request above: the reply shows its effect
