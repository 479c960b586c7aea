"""Faults an unattended lane meets: full disks, corrupt state files, restarts. Each has a defined outcome
(docs/operations.md, "What the gate does when…"): the daemon stays up, the lane safe, nothing silently lost."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory
from test_daemon import EVENT

from conftest import Broker, fill, wait_until
from fakes import Feeder, daemon_config, start, wait_log
from gate.config.model import load_config
from gate.config.policy import Policy
from gate.contracts import Requested
from gate.decide.codes import Status, issue
from gate.decide.keys import generate_keypair, load_private_key
from gate.decide.passcache import PassCache
from gate.decide.policy import PolicyStore
from gate.lane.daemon import Signals
from gate.lane.state import ModeRecord
from gate.lane.wiring import build
from gate.scan.decoders import make_decoder
from gate.scanner import DecodingSource
from gate.sync.envelope import sign
from gate.sync.inbound import BoundedQueue, Job
from gate.testing import ScriptedFrames, SerialModule


def offline(cfg_path: Path):
    """The gate of a daemon config, built in this process without a broker (mock pins)."""
    src = DecodingSource(ScriptedFrames([]), make_decoder("zxing"))
    return build(load_config(cfg_path), source=src, pin_factory=MockFactory(), with_mqtt=False).start()


def red(keys, i: int) -> bytes:
    return issue(keys.private, f"tok-f{i:06d}", Status.RED, int(time.time()), 3600).encode()


def seed(cfg_path: Path, keys) -> None:
    """State worth losing: 1,000 cached passes, 300 undelivered check-ins, a stored policy and mode."""
    g = offline(cfg_path)
    try:
        g.cache.apply_delta([(f"tok-c{i:06d}", 0, None, 0, None) for i in range(1000)], [], 1)
        for i in range(300):
            g.handle(red(keys, i))
        PolicyStore(g.cfg.gate.state_dir / "device.json", g.cfg.policy).save(Policy(version=5))
        g.lanestate.set_mode(ModeRecord(Requested.NORMAL, "test", time.time()))
    finally:
        g.close()


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "zeroed":
        path.write_bytes(b"\0" * len(data))
    elif how == "garbage":
        path.write_bytes(os.urandom(len(data)))
    else:  # half-truncated
        path.write_bytes(data[: len(data) // 2])


def alarms(g) -> list[dict]:
    g.pump()
    rows = g.outbox.fetch(0, 10_000)
    return [json.loads(r[4]) for r in rows if r[2].endswith("/alarm")]


@pytest.mark.parametrize("how", ["zeroed", "garbage", "half-truncated"])
@pytest.mark.parametrize("name", ["passes.db", "outbox.db", "lane.db", "device.json"])
def test_a_corrupt_state_file_has_its_documented_outcome(tmp_path, keys, name, how) -> None:
    cfg = daemon_config(tmp_path, keys, Broker(tmp_path), "/dev/null")
    seed(cfg, keys)
    state = tmp_path / "state"
    damage(state / name, how)
    g = offline(cfg)  # starts: no exception
    try:
        assert g.actuator.relay.pin_factory.pin(17).state is False  # the relay locked
        assert list(state.glob(f"{name}.corrupt-*")), "the damaged file is kept aside"
        raised = [a for a in alarms(g) if a["alarm"] == "state_file_corrupt"]
        assert len(raised) == 1 and name in raised[0]["detail"] and "moved to" in raised[0]["detail"]
        st = g.state()
        if name == "passes.db":
            assert st["cache_entries"] == 0 and st["cache_age_s"] is None  # empty, so stale: cache_stale follows
        elif name == "outbox.db":
            saved = int(raised[0]["detail"].split(" undelivered events saved")[0].rsplit(" ", 1)[1])
            assert g.outbox.depth == saved + 1 and saved <= 300  # the salvaged rows and the alarm itself
            if how == "half-truncated":
                assert saved > 0
        elif name == "lane.db":
            assert st["mode"] == "out_of_service" and "lane.db" in st["mode_set_by"]
        else:
            assert st["policy_version"] == 0  # the config's policy until central sends one
        assert g.handle(red(keys, 999))[0].action.value == "deny"  # deciding, and never an open on an error
    finally:
        g.close()


def test_a_corrupt_outbox_is_salvaged_and_the_rows_reach_the_broker(tmp_path, keys, broker, subscriber_factory):
    feeder = Feeder(keys)
    cfg = daemon_config(tmp_path, keys, broker, feeder.port)
    seed(cfg, keys)
    damage(tmp_path / "state" / "outbox.db", "half-truncated")
    sub = subscriber_factory(broker)
    log = tmp_path / "gate.log"
    proc = start(cfg, log)
    try:
        assert wait_log(log, "started at venue"), log.read_text()
        alarm = [json.loads(p) for p in sub.wait_for("/alarm", 1) if b"state_file_corrupt" in p]
        saved = int(alarm[0]["detail"].split(" undelivered events saved")[0].rsplit(" ", 1)[1])
        assert saved > 0 and len(sub.wait_for("/checkin", saved)) >= saved
        assert proc.poll() is None and "Traceback" not in log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        feeder.close()


def test_a_damaged_write_ahead_log_is_alarmed_as_a_gap(tmp_path, keys) -> None:
    cfg = daemon_config(tmp_path, keys, Broker(tmp_path), "/dev/null")
    g = offline(cfg)
    for i in range(6):
        g.handle(red(keys, i))
    db, wal = tmp_path / "state" / "outbox.db", tmp_path / "state" / "outbox.db-wal"
    main, wal_size = db.read_bytes(), wal.stat().st_size  # the six rows live only in the WAL so far
    g.close()  # (a clean close checkpoints them; a power cut would not have)
    db.write_bytes(main)
    wal.write_bytes(b"\0" * wal_size)  # what a damaged card leaves
    g = offline(cfg)
    try:
        gaps = [a for a in alarms(g) if a["alarm"] == "outbox_gap"]
        assert gaps and "6 undelivered events were lost" in gaps[0]["detail"]
    finally:
        g.close()


def test_status_file_failures_are_logged_once_counted_and_leave_no_temp_files(tmp_path, keys, caplog) -> None:
    cfg = daemon_config(tmp_path, keys, Broker(tmp_path), "/dev/null")
    g = offline(cfg)
    try:
        status = tmp_path / "state" / "status.json"
        status.mkdir()  # os.replace onto a directory fails, like a full disk would
        for _ in range(5):
            g.reporter._last_status = 0
            g.tick()
        assert g.state()["faults"]["writing status.json"] == 5
        assert caplog.text.count("writing status.json failed") == 1
        assert not list(status.parent.glob(".status.json.*"))
        status.rmdir()
        g.reporter._last_status = 0
        g.tick()
        assert json.loads(status.read_text())["gate_id"] == "lane-k" and "recovered" in caplog.text
        fault = [(a["active"], a["detail"]) for a in alarms(g) if a["alarm"] == "fault"]
        assert [active for active, _ in fault] == [True, False], fault  # raised once, cleared once
        assert "writing status.json failed" in fault[0][1]
    finally:
        g.close()


def test_an_unwritable_state_directory_raises_the_fault_alarm_on_the_broker(
    tmp_path, keys, broker, subscriber_factory
) -> None:
    """The real daemon: status.json cannot be written (a directory stands in its place, which even root
    cannot replace), so `fault` is published on the alarm topic; once the path is free again it is cleared."""
    feeder = Feeder(keys)
    cfg = daemon_config(tmp_path, keys, broker, feeder.port)
    log = tmp_path / "gate.log"
    sub = subscriber_factory(broker, "gate/lane-k/alarm")
    faults = lambda: [json.loads(p) for p in sub.on("/alarm") if json.loads(p)["alarm"] == "fault"]  # noqa: E731
    proc = start(cfg, log)
    try:
        assert wait_log(log, "connected to")
        status = tmp_path / "state" / "status.json"

        def block() -> bool:  # the reporter may write it again between the two steps: try until it holds
            with contextlib.suppress(OSError):
                status.unlink()
                status.mkdir()
            return status.is_dir()

        assert wait_until(block, 20)
        assert wait_until(lambda: [a["active"] for a in faults()] == [True], 20), faults()
        assert "status.json" in faults()[0]["detail"]
        status.rmdir()
        assert wait_until(lambda: [a["active"] for a in faults()] == [True, False], 20), faults()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        feeder.close()


def test_anti_passback_counts_only_confirmed_passages_and_survives_a_restart(tmp_path, keys) -> None:
    cfg = daemon_config(tmp_path, keys, Broker(tmp_path), "/dev/null", passback=60)
    green = issue(keys.private, "tok-pb0001", Status.GREEN, int(time.time()) - 5, 3600).encode()
    other = issue(keys.private, "tok-pb0002", Status.GREEN, int(time.time()) - 5, 3600).encode()
    g = offline(cfg)
    g.cache.apply_delta([], [], 0)
    try:
        assert g.handle(green)[0].admits
        assert g.handle(green)[0].reason.value == "replay"  # while it is being let through
        assert wait_until(lambda: (g.pump(), not g.actuator.machine.busy)[1], 5)  # no sensor: unconfirmed
    finally:
        g.close()
    g = offline(cfg)
    try:
        assert g.handle(green)[0].reason.value == "replay"  # remembered across the restart
        assert g.handle(other)[0].admits
    finally:
        g.close()


def test_a_stop_during_a_reload_is_not_forgotten() -> None:
    s = Signals()
    s._on(signal.SIGHUP, None)
    s._on(signal.SIGTERM, None)  # arrives while the old gate is closing
    assert s.next_round() is False and s.stop.is_set()
    s2 = Signals()
    s2._on(signal.SIGHUP, None)
    assert s2.next_round() is True and not s2.stop.is_set()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def test_the_inbound_queue_is_bounded_and_counts_what_it_refuses() -> None:
    q = BoundedQueue(max_message=1000, max_bytes=4000, max_jobs=100)
    acks: list[int] = []

    def job(n: int) -> Job:
        return Job(lambda m: None, "delta", "t", b"x" * n, lambda: acks.append(n))

    assert q.offer(job(2000)) == "oversized"
    assert [q.offer(job(1000)) for _ in range(5)] == [None, None, None, None, "queue_full"]
    q.get(0.1)
    assert q.offer(job(1000)) is None  # room again once the worker took one
    assert q.refused_now() == {"oversized": 1, "queue_full": 1}


# -- against the real daemon ----------------------------------------------------------------------------


def test_a_full_disk_never_stops_the_daemon_and_everything_stored_is_delivered_after(
    tmp_path, keys, small_disk, subscriber_factory
) -> None:
    broker = Broker(tmp_path)
    broker.start()
    feeder = Feeder(keys)
    cfg = daemon_config(tmp_path, keys, broker, feeder.port, extra="[outbox]\nmin_free_mb = 2\n")
    log = tmp_path / "gate.log"
    proc = start(cfg, log)
    try:
        assert wait_log(log, "started at venue"), log.read_text()
        broker.stop()  # the backlog builds up on the small disk
        feeder.on.set()
        assert wait_until(lambda: log.read_text().count("decision deny") >= 50, 30)
        filler = fill(small_disk)
        mark = len(log.read_text())
        assert wait_until(lambda: "not recorded: outbox full" in log.read_text()[mark:], 30)
        time.sleep(3)  # a few seconds of a full disk: scans, status writes, alarms all fail meanwhile
        assert proc.poll() is None, "the daemon exited on a full disk"
        feeder.on.clear()
        filler.unlink()
        broker.start()
        sub = subscriber_factory(broker)
        text = log.read_text()
        stored = {
            m
            for line in text.splitlines()
            if "decision" in line and "not recorded" not in line
            for m in EVENT.findall(line)
        }
        assert wait_until(lambda: stored <= {json.loads(p)["event_id"] for p in sub.on("/checkin")}, 60)
        assert wait_until(lambda: "outbox no longer full" in log.read_text(), 30)
        assert proc.poll() is None and "Traceback" not in log.read_text()
        assert not list(small_disk.glob(".status.json.*"))  # no temp files left by failed writes
        status = json.loads((small_disk / "status.json").read_text())
        assert status["denied_while_full"] > 0 and status["mode"] == "normal"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        feeder.close()
        broker.stop()


def central_key(tmp_path: Path):
    _, priv, pub = generate_keypair(tmp_path / "central")
    return load_private_key(priv), pub


def test_out_of_service_and_command_nonces_survive_a_sigkill(tmp_path, keys, broker, subscriber_factory) -> None:
    key, pub = central_key(tmp_path)
    feeder = Feeder(keys)
    cfg = daemon_config(tmp_path, keys, broker, feeder.port, extra=f'[central]\nkeys = ["{pub}"]\n')
    log = tmp_path / "gate.log"
    command = sign(key, "command", {"name": "out-of-service", "correlation_id": "c-1"}, gate="lane-k")
    replies = subscriber_factory(broker, "gate/lane-k/reply")
    proc = start(cfg, log)
    try:
        assert wait_log(log, "started at venue")
        assert wait_log(log, "connected to")
        publish(broker, "gate/lane-k/command", command)
        assert wait_until(lambda: replies.on("/reply"), 20)
        assert json.loads(replies.on("/reply")[0])["result"]["mode"] == "out_of_service"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        mark = len(log.read_text())
        proc = start(cfg, log)
        assert wait_log(log, "lane mode out_of_service restored (set by central", mark), log.read_text()[mark:]
        assert wait_log(log, "connected to", mark)
        publish(broker, "gate/lane-k/command", command)  # the captured command, replayed after the restart
        assert wait_log(log, "rejected command on gate/lane-k/command: replayed", mark)
        feeder.on.set()
        assert wait_log(log, "decision deny out_of_service", mark)
        status = json.loads((tmp_path / "state" / "status.json").read_text())
        assert status["mode"] == "out_of_service" and status["mode_set_by"] == "central"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        feeder.close()


def test_a_revocation_survives_a_sigkill_right_after_it_was_applied(tmp_path, keys, broker) -> None:
    key, pub = central_key(tmp_path)
    feeder = Feeder(keys)
    cfg = daemon_config(tmp_path, keys, broker, feeder.port, extra=f'[central]\nkeys = ["{pub}"]\n')
    seed_cache = PassCache(tmp_path / "state" / "passes.db")
    seed_cache.replace_all([("tok-rev001", 0, None, 0, None)], version=3, synced_at=time.time())
    seed_cache.close()
    log = tmp_path / "gate.log"
    proc = start(cfg, log)
    try:
        assert wait_log(log, "connected to")
        delta = sign(key, "delta", {"base_version": 3, "seq": 1, "upserts": [["tok-rev001", 0, None, 1, None]]})
        publish(broker, "gate/central/passes/delta", delta)
        assert wait_log(log, "delta 3.1 applied")
        proc.send_signal(signal.SIGKILL)  # at once: the broker has had its ack, so it will not resend
        proc.wait(10)
    finally:
        feeder.close()
    with PassCache(tmp_path / "state" / "passes.db") as cache:
        entry = cache.lookup("tok-rev001")
        assert entry is not None and entry.revoked and cache.info().seq == 1


def publish(broker: Broker, topic: str, payload: bytes) -> None:
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, paho.mqtt.publish as p; "
            "p.single(sys.argv[1], sys.stdin.buffer.read(), qos=1, hostname=sys.argv[2], port=int(sys.argv[3]))",
            topic,
            broker.host,
            str(broker.port),
        ],
        input=payload,
        capture_output=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr


def test_anti_passback_survives_a_sigkill(tmp_path, keys, broker, subscriber_factory) -> None:
    module = SerialModule()
    cfg = daemon_config(tmp_path, keys, broker, module.port, passback=300)
    (tmp_path / "state").mkdir(exist_ok=True)
    with PassCache(tmp_path / "state" / "passes.db") as cache:
        cache.replace_all([], version=1, synced_at=time.time())  # fresh: the code's own status decides
    green = issue(keys.private, "tok-pbk001", Status.GREEN, int(time.time()) - 5, 3600)
    sub = subscriber_factory(broker)
    log = tmp_path / "gate.log"
    proc = start(cfg, log)
    try:
        assert wait_log(log, "started at venue")
        admitted = lambda: (module.send(green), "decision admit admitted" in log.read_text())[1]  # noqa: E731
        assert wait_until(admitted, 20, interval=0.5)
        # the passage (unconfirmed: no sensor) is stored before its check-in is published
        assert wait_until(lambda: any(json.loads(p)["type"] == "passage" for p in sub.on("/checkin")), 20)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        mark = len(log.read_text())
        proc = start(cfg, log)
        assert wait_log(log, "started at venue", mark)
        # shown until the restarted daemon has its port open (what it read before, it rightly discards)
        replayed = lambda: (module.send(green), "decision deny replay" in log.read_text()[mark:])[1]  # noqa: E731
        assert wait_until(replayed, 20, interval=0.5), log.read_text()[mark:]
        assert "decision admit" not in log.read_text()[mark:]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        module.close()
