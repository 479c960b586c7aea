#!/usr/bin/env python3
"""A fleet simulation: N gates (real sync worker, signature checks, pass cache, outbox drainer) in a few processes
sharing threads (one network thread, a few crews each), a broker, 2 collectors into PostgreSQL; revocation fan-out
beside raw paho subscribers, sustained ingest with where the CPU went, and a collector / the PostgreSQL primary / a
broker node killed under load. One JSON line per figure; exit 1 if its own checks fail.

usage: bench/fleet.py [--gates 1000] [--procs 2] [--crews 4] [--connect-rate 100] [--connect-window 20]
                      [--broker mosquitto|cluster]
                      [--pg single|patroni] [--rate 2000] [--seconds 20] [--gate-state DIR] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the throwaway PostgreSQL clusters
from cpuwhere import CpuSplit
from fleetcrew import run
from fleetgate import RAW_TOPIC, Spec
from fleetpub import Feed, OneShot
from pgcluster import PgCluster

from _util import pct, start_broker
from gate.central.mqtt import connect
from gate.config.model import MqttSection
from gate.decide.keys import generate_keypair

FAILED: list[str] = []


def figure(name: str, **values: Any) -> None:
    """One JSON line, with the machine's load average beside it (the machine is shared)."""
    load = [round(x, 1) for x in os.getloadavg()]
    print(json.dumps({"figure": name, **values, "load_avg": load}), flush=True)


def check(ok: bool, what: str) -> None:
    if not ok:
        FAILED.append(what)
        print(f"CHECK FAILED: {what}", file=sys.stderr, flush=True)


def wait(cond: Callable[[], Any], timeout: float, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def device_keys(d: Path, gates: list[str]) -> None:
    """<gate>.key for the gate, <gate>.pub for the collectors' --devices."""
    d.mkdir(parents=True)
    for g in gates:
        k = Ed25519PrivateKey.generate()
        pem = k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(d / f"{g}.key", os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        pub = k.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        (d / f"{g}.pub").write_bytes(pub)


class Fleet:
    """The gate processes, driven over pipes."""

    def __init__(self, gates: list[str], procs: int, spec: Spec) -> None:
        ctx = mp.get_context("spawn")
        self.pipes, self.procs = [], []
        for i in range(procs):
            mine = gates[i::procs]
            parent, child = ctx.Pipe()
            p = ctx.Process(target=run, args=(i, mine, spec, child), daemon=True)
            p.start()
            self.pipes.append(parent)
            self.procs.append(p)

    def ask(self, name: str, *args: Any) -> list[Any]:
        for pipe in self.pipes:
            pipe.send((name, args))
        out = []
        for pipe in self.pipes:
            ok, value = pipe.recv()
            if not ok:
                raise RuntimeError(f"gate process: {name}: {value!r}")
            out.append(value)
        return out

    def flat(self, name: str, *args: Any) -> list[Any]:
        return [x for part in self.ask(name, *args) for x in part]

    def stop(self) -> None:
        for pipe, p in zip(self.pipes, self.procs, strict=True):
            if p.is_alive():
                pipe.send(("stop", ()))
        for pipe, p in zip(self.pipes, self.procs, strict=True):
            if pipe.poll(60):
                pipe.recv()
            p.join(10)
            if p.is_alive():
                p.kill()


class Collectors:
    """`gate central collect` processes in one shared-subscription group, each with its own session; or, on a
    RabbitMQ cluster, `collect-amqp` competing consumers of the quorum queue (each starting at another node)."""

    def __init__(self, broker: str | list[str], db: str, devices: Path, n: int, logs: Path) -> None:
        self.broker = broker
        self.db = db
        self.devices = devices
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        for i in range(n):
            self.start(f"fleet-col-{i}")

    def start(self, name: str) -> None:
        common = ("--db", self.db, "--devices", str(self.devices))
        if isinstance(self.broker, list):  # AMQP URLs of the cluster's nodes
            turn = int(name.rsplit("-", 1)[1]) % len(self.broker)
            urls = [*self.broker[turn:], *self.broker[:turn]]
            cmd = [sys.executable, "-m", "gate", "central", "collect-amqp", *common]
            cmd += [a for u in urls for a in ("--amqp", u)]
            ready = b"collect-amqp: consuming"
        else:
            cmd = [sys.executable, "-m", "gate", "central", "collect", "--broker", self.broker, *common]
            cmd += ["--group", "fleet", "--client-id", name]
            ready = b"collect: subscribed"
        log = (self.logs / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(cmd, stderr=log, stdout=subprocess.DEVNULL)
        wait(lambda: ready in (self.logs / f"{name}.log").read_bytes(), 90)

    def kill(self, name: str) -> None:
        self.procs[name].kill()
        self.procs[name].wait(10)

    def stop(self) -> None:
        for p in self.procs.values():
            p.terminate()
        for p in self.procs.values():
            p.wait(30)


class Db:
    def __init__(self, url: str) -> None:
        self.url = url

    def count(self) -> int | None:
        import psycopg

        try:
            with psycopg.connect(self.url, connect_timeout=3) as db:
                row = db.execute("SELECT count(*) FROM checkins").fetchone()
                return int(row[0]) if row else 0
        except psycopg.Error:
            return None  # between primaries, or the table not made yet

    def ids(self) -> list[str]:
        import psycopg

        with psycopg.connect(self.url, connect_timeout=5) as db:
            return [r[0] for r in db.execute("SELECT event_id FROM checkins")]


def revocation(fleet: Fleet, pub: OneShot | Feed, round_: int, n: int, timeout: float, raw: Any | None = None) -> None:
    """A delta revoking one pass, published once through `gate central publish-delta` (`pub`): when is it in
    force at every gate? Then the same fan-out to plain paho subscribers through a connection kept open (`raw`)."""
    first = pub.first
    since = time.time()
    pub.publish(1, round_ + 1, f"tok-{round_:04d}")
    done = wait(lambda: all(a is not None for _, a in fleet.flat("applied", since, round_, False)), timeout, 0.25)
    rows = fleet.flat("applied", since, round_, True)  # and each gate's decider denies the pass now
    applied = [a - since for _, a in rows if a is not None]
    arrived = [r - since for r, _ in rows if r is not None]
    if isinstance(pub, Feed):
        check(pub.acked(timeout), f"revocation {round_}: the feed did not report its delta acknowledged")
    raws: list[float] = []
    if raw is not None:
        since = time.time()
        raw.publish(RAW_TOPIC, b"x" * 200, qos=1)
        wait(lambda: all(t is not None for t in fleet.flat("raw_times", since)), timeout, 0.1)
        raws = [t - since for t in fleet.flat("raw_times", since) if t is not None]
    check(bool(done) and len(applied) == n, f"revocation {round_}: applied at {len(applied)} of {n} gates")
    figure(
        "revocation_fanout",
        round=round_,
        publisher=pub.name,  # one-shot: `publish-delta FILE` (a connection per delta); feed: `--follow`
        first_on_connection=first,
        gates=n,
        applied=len(applied),
        p50_s=round(pct(applied, 50), 3) if applied else None,
        p99_s=round(pct(applied, 99), 3) if applied else None,
        max_s=round(max(applied), 3) if applied else None,
        reached_link_p50_s=round(pct(arrived, 50), 3) if arrived else None,  # the broker's part
        reached_link_p99_s=round(pct(arrived, 99), 3) if arrived else None,
        raw_paho_p50_s=round(pct(raws, 50), 3) if raws else None,
        raw_paho_p99_s=round(pct(raws, 99), 3) if raws else None,
        raw_paho_max_s=round(max(raws), 3) if raws else None,
        target_p99_s=5,
    )


def ingest(
    fleet: Fleet,
    db: Db,
    rate: float,
    seconds: float,
    during: Callable[[], dict[str, Any]] | None = None,
    cpu: CpuSplit | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """Check-ins at `rate` a second across the fleet for `seconds` (with `during` run meanwhile); with `cpu`, where
    the CPU went while they were offered."""
    before, t0 = db.count() or 0, time.monotonic()
    if cpu is not None:
        cpu.start()
    fleet.ask("ingest", rate / len(fleet.pipes))
    extra = {}
    if during is not None:
        time.sleep(seconds / 4)
        extra = during()
    time.sleep(max(0.0, seconds - (time.monotonic() - t0)))
    ids = fleet.flat("ingest_stop")
    window = time.monotonic() - t0
    during_count = (db.count() or before) - before
    where = cpu.stop() if cpu is not None else {}
    if where:  # CPU milliseconds per check-in stored meanwhile, each component
        per = max(1, during_count) / (window * 1000)
        where |= {k.replace("_cores", "_ms_per_checkin"): round(v / per, 2) for k, v in where.items() if "_cores" in k}
    drained = wait(lambda: sum(fleet.ask("depth")) == 0, 300, 0.5)
    stored = wait(lambda: (c := db.count()) is not None and c - before >= len(ids), 300, 0.5)
    total = time.monotonic() - t0
    check(bool(drained and stored), f"ingest: {len(ids)} decided, {(db.count() or 0) - before} stored")
    return ids, {
        "decided": len(ids),
        "offered_per_s": round(len(ids) / window),
        "stored_in_window_per_s": round(during_count / window),
        "end_to_end_per_s": round(len(ids) / total),
        **extra,
        **({"cpu": where} if where else {}),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--gates", type=int, default=1000)
    ap.add_argument("--procs", type=int, default=2, help="gate processes")
    ap.add_argument("--crews", type=int, default=4, help="threads per gate process that turn its gates")
    ap.add_argument("--connect-rate", type=float, default=100.0, help="first connects a second, across the fleet")
    ap.add_argument("--connect-window", type=int, default=20, help="first connects not yet subscribed, fleet-wide")
    ap.add_argument("--pg", choices=["single", "patroni"], default="single")
    ap.add_argument("--broker", choices=["mosquitto", "cluster"], default="mosquitto", help="cluster: 3 RabbitMQ nodes")
    ap.add_argument("--rate", type=float, default=2000.0, help="check-ins a second offered, across the fleet")
    ap.add_argument("--seconds", type=float, default=20.0, help="each load phase")
    ap.add_argument("--rounds", type=int, default=4, help="revocations: one `publish-delta` call, then a feed's")
    ap.add_argument(
        "--failure-rate",
        type=float,
        default=0.0,
        help="check-ins a second while a collector, the primary, a node die (default: half what ingest stored)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work dir (brokers' and collectors' logs)")
    ap.add_argument("--gate-state", type=Path, help="the gates' state dirs (/dev/shm: no shared fsyncs)")
    ap.add_argument("--smoke", action="store_true", help="a handful of gates, seconds")
    args = ap.parse_args()
    if args.smoke:
        args.gates, args.procs, args.crews, args.rate, args.seconds, args.rounds = 6, 2, 2, 100.0, 3.0, 3
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(2))  # `timeout` or kill: tear the clusters down too
    work = Path(tempfile.mkdtemp(prefix="gate-fleet-"))
    work.chmod(0o755)  # the postgres user reaches its data dir below
    gates = [f"g{i:04d}" for i in range(args.gates)]
    stack: list[Callable[[], object]] = []
    try:
        return run_bench(args, work, gates, stack)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second ^C must not leave clusters behind
        for undo in reversed(stack):
            try:
                undo()
            except BaseException as exc:  # tear down the rest
                print(f"teardown: {exc!r}", file=sys.stderr)
        if args.keep:
            print(f"kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def run_bench(args: argparse.Namespace, work: Path, gates: list[str], stack: list[Callable[[], object]]) -> int:
    _, cpriv, cpub = generate_keypair(work / "central")
    _, ipriv, _ = generate_keypair(work / "issuer")
    device_keys(work / "devices", gates)
    rabbit, broker_proc = None, None
    if args.broker == "cluster":
        rabbit = start_rabbit(work, stack)
        hosts = tuple(rabbit.mqtt_hosts)
        port = int(hosts[-1].rsplit(":", 1)[1])  # central publishes on the last node; the first is killed
    else:
        user = "user root\n" if os.geteuid() == 0 else ""
        broker, port = start_broker(work, f"{user}max_inflight_messages 0\nmax_queued_messages 0\npersistence false\n")
        stack.append(broker.kill)
        broker_proc = broker
        hosts = (f"127.0.0.1:{port}",)
    if args.pg == "patroni":
        from patroni import PatroniCluster

        cluster = PatroniCluster(work / "patroni")
        stack.append(cluster.stop)
        cluster.start()
        url = cluster.url()
        pg_roots = cluster_pids(cluster)
    else:
        single = PgCluster(work / "pg", free_port())
        stack.append(single.stop)
        single.start()
        url = single.url
        pg_roots = single_pids(single)
    db = Db(url)
    collectors = Collectors(rabbit.amqp_urls if rabbit else hosts[0], url, work / "devices", 2, work)
    stack.append(collectors.stop)
    t0 = time.monotonic()
    state = Path(tempfile.mkdtemp(prefix="gate-fleet-", dir=args.gate_state)) if args.gate_state else None
    if state is not None:
        stack.append(lambda: shutil.rmtree(state, ignore_errors=True))
    per_proc = args.connect_rate / args.procs
    window = max(1, args.connect_window // args.procs)
    spec = Spec(hosts, work, cpub, ipriv, work / "devices", True, state, args.crews, per_proc, window)
    fleet = Fleet(gates, args.procs, spec)
    stack.append(fleet.stop)
    fleet.ask("built")
    figure("fleet_built", gates=len(gates), procs=args.procs, crews=args.crews, seconds=round(time.monotonic() - t0, 1))
    t0 = time.monotonic()
    fleet.ask("connect")
    clients = 2 * len(gates)  # each gate's link and its raw paho subscriber
    ready = wait(lambda: sum(fleet.ask("ready")) == clients, 900, 0.5)  # measured, not a target
    took = time.monotonic() - t0
    check(bool(ready), f"not every gate connected and subscribed after {took:.0f} s")
    net = fleet.ask("net")
    ups = [x for n in net for x in n["up_s"]]  # connect attempt -> CONNACK and every SUBACK
    figure(
        "fleet_connected",
        clients=clients,
        connect_rate_per_s=args.connect_rate,
        connect_window=args.connect_window,
        seconds=round(took, 1),
        paced_s=round(clients / args.connect_rate, 1),
        attempts=sum(n["attempts"] for n in net),
        refused=sum(n["refused"] for n in net),
        up_p50_s=round(pct(ups, 50), 3) if ups else None,
        up_p99_s=round(pct(ups, 99), 3) if ups else None,
        up_max_s=round(max(ups), 3) if ups else None,
        broker=args.broker,
        pg=args.pg,
    )
    cpu = CpuSplit(lambda: roots(fleet, collectors, rabbit, broker_proc, pg_roots))
    cpu.start()  # what the connected fleet costs doing nothing: keepalives, the broker's queues, trust refreshes
    time.sleep(args.seconds / 2)
    figure("idle_cpu", gates=len(gates), **cpu.stop())
    raw = connect(MqttSection(host="127.0.0.1", port=port, protocol="3.1.1" if rabbit else "auto"))
    stack.append(raw.disconnect)
    # As central publishes: one `publish-delta` call (a new connection), then a feed (`--follow`, one connection
    # kept). On RabbitMQ 3.10 the first message of a connection into each quorum session queue costs a synchronous
    # enqueuer registration (an rpc and a Raft commit): a feed pays it once, a call pays it every time.
    broker_at = f"127.0.0.1:{port}"
    once = OneShot(broker_at, cpriv, work)
    feed = Feed(broker_at, cpriv, work / "feed.log")
    stack.append(feed.close)
    for r in range(args.rounds):
        revocation(fleet, once if r == 0 else feed, r, len(gates), 60, raw)
    once.close()
    decided: list[str] = []
    ids, fig = ingest(fleet, db, args.rate, args.seconds, cpu=cpu)
    decided += ids
    figure("ingest", gates=len(gates), **fig)
    # A node's death is an operator's event under the load the cluster carries, not past its saturation (there
    # nothing keeps up; `--failure-rate` says what is offered meanwhile).
    fail_rate = args.failure_rate or max(20.0, fig["stored_in_window_per_s"] / 2)
    ids, fig = ingest(fleet, db, fail_rate, args.seconds, lambda: kill_collector(collectors, db))
    decided += ids
    figure("collector_killed", **fig)
    if args.pg == "patroni":
        ids, fig = ingest(fleet, db, fail_rate, max(args.seconds, 30), lambda: kill_primary(cluster, db))
        decided += ids
        figure("pg_primary_killed", **fig, target_resume_s=30)
    else:
        figure("pg_primary_killed", skipped="needs --pg patroni")
    if rabbit is not None:
        killed: dict[str, float] = {}
        ids, fig = ingest(fleet, db, fail_rate, max(args.seconds, 30), lambda: kill_node(rabbit, fleet, killed))
        decided += ids
        figure("broker_node_killed", **fig, **all_back(rabbit, fleet, killed, len(gates)), target_reconnect_s=30)
        revocation(fleet, feed, args.rounds, len(gates), 60)
    else:
        figure("broker_node_killed", skipped="needs --broker cluster")
    feed.close()
    for failure in once.failed + feed.failed:
        check(False, failure)
    stored = db.ids()
    lost, dupes = len(set(decided) - set(stored)), len(stored) - len(set(stored))
    check(lost == 0 and dupes == 0 and len(stored) == len(decided), f"{lost} lost, {dupes} duplicated")
    figure("exactly_once", decided=len(decided), stored=len(stored), lost=lost, duplicates=dupes, ok=not FAILED)
    return 1 if FAILED else 0


def kill_collector(collectors: Collectors, db: Db) -> dict[str, Any]:
    """SIGKILL one collector mid-stream; the other keeps storing; it comes back with its id (its session's
    in-flight share waits at the broker for it) a few seconds later."""
    collectors.kill("fleet-col-0")
    before, t = db.count() or 0, time.monotonic()
    grew = wait(lambda: (db.count() or 0) > before, 30)
    took = time.monotonic() - t
    collectors.start("fleet-col-0")
    check(bool(grew), "the surviving collector stored nothing while the other was dead")
    return {"survivor_stored_after_s": round(took, 2)}


def kill_primary(cluster: Any, db: Db) -> dict[str, Any]:
    t = time.monotonic()
    old, new = cluster.kill_primary()
    elected = time.monotonic() - t
    before = db.count() or 0
    resumed = wait(lambda: (db.count() or 0) > before, 60)
    took = time.monotonic() - t
    check(bool(resumed) and took <= 60, f"ingest did not resume within 60 s of the primary's death ({took:.0f} s)")
    return {"old_primary": old, "new_primary": new, "elected_s": round(elected, 1), "resumed_s": round(took, 1)}


def start_rabbit(work: Path, stack: list[Callable[[], object]]) -> Any:
    """Three RabbitMQ nodes (tests/rabbitcluster.py) with the check-ins' quorum queue bound as provision does."""
    import pika
    from rabbitcluster import RabbitCluster

    from gate.central.rabbitdefs import CHECKIN_QUEUE

    rabbit = RabbitCluster(work / "rabbit")
    stack.append(rabbit.stop)
    rabbit.start()
    conn = pika.BlockingConnection(pika.URLParameters(rabbit.amqp_urls[0]))
    ch = conn.channel()
    ch.queue_declare(CHECKIN_QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
    ch.queue_bind(CHECKIN_QUEUE, "amq.topic", "gate.*.checkin")  # as provision --broker rabbitmq binds it
    conn.close()
    return rabbit


def on_live_nodes(fleet: Fleet, dead: str) -> int:
    return sum(up and broker != dead for up, broker in fleet.flat("links"))


def kill_node(rabbit: Any, fleet: Fleet, killed: dict[str, float]) -> dict[str, Any]:
    """SIGKILL the first node (a third of the gates and a collector are on it) under load: how many gates are on
    a live node 30 s later (the target)? The rest is waited for once the load has stopped (`all_back`)."""
    dead = rabbit.mqtt_hosts[0]
    on_it = sum(broker == dead for _, broker in fleet.flat("links"))
    killed["at"] = time.monotonic()
    before = fleet.flat("links")
    rabbit.kill_node(0)
    n = len(before)
    back: dict[int, float] = {}

    def sample() -> bool:
        """Each of the dead node's gates: when it was first seen connected to a live node."""
        now = time.monotonic() - killed["at"]
        for i, (up, broker) in enumerate(fleet.flat("links")):
            if before[i][1] == dead and up and broker != dead:
                back.setdefault(i, now)
        return on_live_nodes(fleet, dead) == n

    wait(sample, 30, 0.5)
    times = sorted(back.values())
    if len(times) == on_it:
        killed["all_back"] = times[-1] if times else 0.0
    return {
        "gates_on_killed_node": on_it,
        "on_live_node_at_30s": on_live_nodes(fleet, dead),
        "of": n,
        "back_by_s": {str(s): sum(t <= s for t in times) for s in (5, 10, 20, 30)},
        "back_p50_s": round(pct(times, 50), 1) if times else None,
    }


def all_back(rabbit: Any, fleet: Fleet, killed: dict[str, float], n: int) -> dict[str, Any]:
    if "all_back" in killed:  # every one seen back within the 30 s, sampled every half second
        return {"every_gate_connected_s": round(killed["all_back"], 1), "target_met": killed["all_back"] <= 30}
    dead = rabbit.mqtt_hosts[0]
    back = wait(lambda: on_live_nodes(fleet, dead) == n, 600, 1.0)
    took = time.monotonic() - killed["at"]
    check(bool(back), f"gates not all reconnected {took:.0f} s after a node died")
    return {"every_gate_connected_s": round(took, 1), "target_met": bool(back) and took <= 30}


def cluster_pids(cluster: Any) -> Callable[[], list[int]]:
    """Patroni's nodes (each the parent of its PostgreSQL) and etcd."""
    return lambda: [n.proc.pid for n in cluster.nodes if n.proc] + ([cluster.etcd.pid] if cluster.etcd else [])


def single_pids(single: PgCluster) -> Callable[[], list[int]]:
    """pg_ctl's postmaster (not a child of the bench)."""

    def pids() -> list[int]:
        try:
            return [int((single.data / "postmaster.pid").read_text().split()[0])]
        except (OSError, ValueError, IndexError):
            return []

    return pids


def roots(
    fleet: Fleet, collectors: Collectors, rabbit: Any, broker: Any, pg: Callable[[], list[int]]
) -> dict[str, list[int]]:
    """The process trees CpuSplit names: the gate processes, the broker, the collectors, PostgreSQL, the bench."""
    nodes = [n.proc.pid for n in rabbit.nodes if n.proc] if rabbit is not None else [broker.pid]
    return {
        "gates": [p.pid for p in fleet.procs],
        "broker": nodes,
        "collectors": [p.pid for p in collectors.procs.values()],
        "postgres": pg(),
        "bench": [os.getpid()],
    }


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


if __name__ == "__main__":
    sys.exit(main())
