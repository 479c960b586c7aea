"""Central's control at the edges, against a real mosquitto: a full disk during sync, central's clock ahead."""

from __future__ import annotations

import json
import queue
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import jsonschema
import pytest
from test_delivery import schema
from test_faults import offline, red
from test_sync import PREFIX, Central, card, pumping, rows, settle

from conftest import Broker, fill, make_config, require, wait_until
from fakes import Feeder, daemon_config, start, started_gate, wait_log
from gate.contracts import ApplyPolicy, PassageOutcome
from gate.core.docstore import DocStore
from gate.decide.codes import Status, issue
from gate.decide.keys import TrustStore
from gate.lane.loop import Gate
from gate.scanner import Deduplicator, Observation, Scanner
from gate.sync.envelope import Verifier, sign

pytestmark = pytest.mark.slow
GATE = "lane-t"
EVENT = re.compile(r"event=([0-9a-f-]{36})")


@pytest.fixture
def central(tmp_path, broker) -> Central:
    return Central(tmp_path, broker)


def make_gate(state: Path, keys, broker, central: Central, reserve_mb: float = 4.0) -> Gate:
    cfg = make_config(
        state,
        keys,
        mqtt={"host": broker.host, "port": broker.port},
        central={"keys": [str(central.pub)], "command_max_age_seconds": 600, "command_ahead_seconds": 30},
        gpio={"passage": {"pin": 5, "timeout_seconds": 0.3}},
    )
    cfg = cfg.model_copy(update={"gate": cfg.gate.model_copy(update={"reserve_mb": reserve_mb})})
    g = started_gate(cfg)
    return g


def command(g: Gate, broker, central: Central, *args: str, faketime: str = "") -> subprocess.CompletedProcess[str]:
    """`gate central command` (under libfaketime's offset when given), while this thread serves as the lane."""
    key = str(central.pub.with_suffix(".key"))
    argv = [sys.executable, "-m", "gate", "central", "command", "--broker", f"{broker.host}:{broker.port}"]
    argv += ["--key", key, "--timeout", "20", GATE, *args]
    if faketime:
        argv = [require("faketime"), "-f", faketime, *argv]
    return pumping(g, lambda: subprocess.run(argv, capture_output=True, text=True, timeout=90, check=False))


def revoked(g: Gate, keys, token: str) -> bool:
    return g.handle(card(keys, token))[0].reason.value == "revoked"


# -- central's clock ------------------------------------------------------------------------------------------
def test_a_command_signed_ahead_of_the_gates_clock_is_refused_with_both_times_and_moves_nothing(
    tmp_path, keys, broker, central
) -> None:
    g = make_gate(tmp_path / "state", keys, broker, central)
    try:
        r = command(g, broker, central, "out-of-service", faketime="+90s")
        assert r.returncode == 1, r.stdout + r.stderr
        reply = json.loads(r.stdout)
        jsonschema.validate(reply, schema("reply"))
        assert reply["reason"] == "clock_ahead" and "clock_ahead" in r.stderr
        assert 80 < reply["signed_at"] - reply["gate_time"] < 200
        assert g.actuator.mode == "normal"
        assert g.sync.status()["rejected"] == {"clock_ahead": 1}  # not "replayed"
        r = command(g, broker, central, "out-of-service")  # central's clock right again: no lock-out at all
        assert r.returncode == 0, r.stderr
        assert g.actuator.mode == "out_of_service"
    finally:
        g.close()


def test_after_both_clocks_were_a_day_ahead_a_new_epoch_restores_control_without_a_restart(
    tmp_path, keys, broker, central
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    day = time.time() + 86_400  # once, both clocks a day ahead: the gate carried out a command signed then
    v = Verifier(
        TrustStore.from_files([central.pub]), GATE, 1 << 20, 600, DocStore(state / "device.json", "command_nonces")
    )
    v.fresh(v.open(sign(central.key, "command", {"name": "status"}, gate=GATE, ts=day), "command"), day)
    g = make_gate(state, keys, broker, central)
    try:
        r = command(g, broker, central, "out-of-service")
        assert r.returncode == 1
        reply = json.loads(r.stdout)
        assert reply["reason"] == "out_of_order" and reply["last_carried_out"] == pytest.approx(day)
        assert "--new-epoch" not in r.stderr and "new epoch" in reply["error"] and g.actuator.mode == "normal"
        r = command(g, broker, central, "out-of-service", "--new-epoch")
        assert r.returncode == 0, r.stderr
        assert "sending again in epoch 1" in r.stderr and g.actuator.mode == "out_of_service"
        for name in ("in-service", "status"):  # later commands, with no epoch named, are in order again
            r = command(g, broker, central, name)
            assert r.returncode == 0, r.stderr
        assert g.actuator.mode == "normal"
        old = sign(central.key, "command", {"name": "open", "epoch": 0, "args": {"operator": "staff-1"}}, gate=GATE)
        central.send(f"{PREFIX}/{GATE}/command", old)  # the old epoch is closed for good
        assert settle(g, lambda: g.sync.status()["rejected"].get("old_epoch") == 1)
    finally:
        g.close()


# -- a full disk ---------------------------------------------------------------------------------------------
def test_on_a_full_disk_commands_revocations_and_snapshots_are_stored_on_the_reserve(
    keys, broker, central, small_disk
) -> None:
    g = make_gate(small_disk, keys, broker, central)
    try:
        central.snapshot(1, rows(50))
        assert settle(g, lambda: g.cache.info().version == 1)
        filler = fill(small_disk)
        central.send(f"{PREFIX}/central/passes/delta", central.delta(1, 1, [["tok-00000007", 0, None, 1, None]]))
        assert settle(g, lambda: g.cache.info().seq == 1)
        assert revoked(g, keys, "tok-00000007")
        r = command(g, broker, central, "out-of-service")
        assert r.returncode == 0, r.stderr
        assert g.actuator.mode == "out_of_service" and not (small_disk / ".reserve").exists()
        fill(small_disk)  # what the reserve gave back is used up too
        central.snapshot(2, rows(3000))  # no room for it: held, never killing the sync worker
        assert settle(g, lambda: g.sync.status()["held"] > 0, 30)
        assert "central-sync" in {t.name for t in threading.enumerate() if t.is_alive()}
        filler.unlink()  # the disk heals: what was held is stored, and central has control without a restart
        assert settle(g, lambda: g.cache.info().version == 2, 60)
        assert command(g, broker, central, "in-service").returncode == 0
        assert g.actuator.mode == "normal" and g.sync.status()["held"] == 0
    finally:
        g.close()


def test_without_a_reserve_a_full_disk_refuses_a_command_with_a_reason_and_holds_a_revocation(
    keys, broker, central, small_disk
) -> None:
    g = make_gate(small_disk, keys, broker, central, reserve_mb=0)
    try:
        central.snapshot(1, rows(50))
        assert settle(g, lambda: g.cache.info().version == 1)
        filler = fill(small_disk)
        r = command(g, broker, central, "free-pass")
        assert r.returncode == 1
        reply = json.loads(r.stdout)
        assert reply["reason"] == "not_stored" and "not_stored" in r.stderr and g.actuator.mode == "normal"
        central.send(f"{PREFIX}/central/passes/delta", central.delta(1, 1, [["tok-00000007", 0, None, 1, None]]))
        assert settle(g, lambda: g.sync.status()["held"] == 1)  # not acknowledged: not stored
        filler.unlink()
        assert settle(g, lambda: g.cache.info().seq == 1 and g.sync.status()["held"] == 0, 30)
        assert revoked(g, keys, "tok-00000007")
        assert command(g, broker, central, "free-pass").returncode == 0
        assert g.actuator.mode == "free_pass"
    finally:
        g.close()


def settled(log: Path, quiet: float = 1.5) -> bool:
    """No decision logged for `quiet` seconds."""
    before = log.read_text().count("decision ")
    time.sleep(quiet)
    return log.read_text().count("decision ") == before


def passages(state: Path) -> set[str]:
    """The decisions whose passage events the outbox holds (read beside the daemon, read-only)."""
    db = sqlite3.connect(f"file:{state / 'outbox.db'}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute("SELECT payload FROM outbox").fetchall()
    finally:
        db.close()
    return {json.loads(p)["decision_id"] for (p,) in rows if b'"passage"' in p}


# -- the real daemon on a full disk, killed -------------------------------------------------------------------
def test_passages_and_every_denial_on_a_full_disk_survive_a_sigkill(tmp_path, keys, small_disk) -> None:
    feeder = Feeder(keys)
    now = int(time.time())
    feeder._codes = (issue(keys.private, f"tok-g{i:06d}", Status.GREEN, now, 3600) for i in range(10**6))
    cfg = daemon_config(tmp_path, keys, Broker(tmp_path), feeder.port, extra="[outbox]\nmin_free_mb = 1\n")
    log = tmp_path / "gate.log"
    proc = start(cfg, log)  # no broker: everything stays in the outbox
    try:
        assert wait_log(log, "started at venue"), log.read_text()
        feeder.on.set()
        assert wait_until(lambda: log.read_text().count("decision admit") >= 20, 60)
        filler = fill(small_disk)
        assert wait_until(lambda: log.read_text().count("not recorded: outbox full") >= 30, 60)
        feeder.on.clear()
        assert wait_until(lambda: settled(log), 30)  # what the module had already sent is decided too
        text = log.read_text()
        admitted = {m for line in text.splitlines() if "decision admit" in line for m in EVENT.findall(line)}
        # Releases run one at a time (a pulse and 0.2 s each): wait for the queued ones to end, on the full disk
        assert wait_until(lambda: admitted <= passages(small_disk), 60), (len(admitted), len(passages(small_disk)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        text = log.read_text()
        denied = text.count("not recorded: outbox full") + text.count("CHECK-IN NOT RECORDED")
        filler.unlink()
        assert admitted <= passages(small_disk)  # stored on the reserve, durably: the kill lost none
        mark, restarted = len(log.read_text()), time.time()
        proc = start(cfg, log)
        assert wait_log(log, "started at venue", mark)
        status = small_disk / "status.json"
        assert wait_until(lambda: json.loads(status.read_text())["time"] > restarted, 30)
        assert json.loads(status.read_text())["denied_while_full"] == denied
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        feeder.close()


# -- floods ---------------------------------------------------------------------------------------------------
class Presenter:
    """A code source a test presents payloads to, one at a time."""

    name = "presenter"

    def __init__(self) -> None:
        self.waiting: queue.Queue[bytes] = queue.Queue()

    def read(self, timeout: float) -> Observation | None:
        try:
            return Observation((self.waiting.get(timeout=timeout),))
        except queue.Empty:
            return None

    def close(self) -> None:
        pass


def test_a_steady_flood_of_lane_requests_never_starves_a_decision(tmp_path, keys) -> None:
    g = offline(daemon_config(tmp_path, keys, Broker(tmp_path), "/dev/null"))
    source = Presenter()
    stop = threading.Event()
    flooding = threading.Event()
    g.scanner = Scanner(source, Deduplicator(1.0, 1.0))
    waiting_then: list[int] = []
    g.listeners.append(lambda scan, d, event: waiting_then.append(len(g.inbox)))

    def flood() -> None:  # never lets the inbox run dry
        while not flooding.is_set():
            while len(g.inbox) < 900 and not flooding.is_set():
                g.control.post(ApplyPolicy(g.decider.policy))
            time.sleep(0.001)

    def stopper() -> None:  # the lane runs on this thread (it owns the connections); this one ends it
        wait_until(lambda: waiting_then, 30)
        stop.set()

    flooder, ender = threading.Thread(target=flood), threading.Thread(target=stopper)
    flooder.start()
    try:
        assert wait_until(lambda: len(g.inbox) >= 500, 20)
        source.waiting.put(red(keys, 1))
        ender.start()
        g.run(stop)
        assert waiting_then, "no decision while the inbox was flooded"
        assert waiting_then[0] > 0  # decided between batches, with requests still waiting
    finally:
        flooding.set()
        stop.set()
        flooder.join(10)
        g.close()


# -- a state directory restored with its seals ---------------------------------------------------------------
def test_a_state_directory_restored_with_its_seals_is_caught_on_connection_by_the_retained_state(
    tmp_path, keys, broker, central, caplog
) -> None:
    state, older = tmp_path / "state", tmp_path / "older"
    g = make_gate(state, keys, broker, central)
    try:
        central.snapshot(1, rows(20))
        assert settle(g, lambda: g.cache.info().version == 1)
    finally:
        g.close()
    shutil.copytree(state, older)  # a copy of the whole directory, seals and all, taken now
    g = make_gate(state, keys, broker, central)
    try:
        central.send(f"{PREFIX}/central/passes/delta", central.delta(1, 1, [["tok-00000003", 0, None, 1, None]]))
        assert settle(g, lambda: g.cache.info().seq == 1)
        assert command(g, broker, central, "out-of-service").returncode == 0
    finally:
        g.close()  # its last retained state says what it held
    shutil.rmtree(state)
    shutil.copytree(older, state)  # the older copy restored: it proves itself against its own seals
    g = make_gate(state, keys, broker, central)
    try:
        assert settle(g, lambda: "state_unproven" in g.recorder.active_alarms, 30)
        assert g.actuator.mode == "out_of_service"  # the mode it lost cannot be proven
        assert "lane.db holds safety change" in caplog.text  # and the revocation it lost: stale, resync asked
        assert "passes.db holds 1.0, but this gate reported 1.1" in caplog.text
        central.snapshot(2, [[f"tok-{i:08d}", 0, None, int(i == 3), None] for i in range(20)])
        assert settle(g, lambda: g.cache.info().version == 2 and g.cache.info().proven, 30)  # central proves it
        assert command(g, broker, central, "in-service").returncode == 0
        assert g.actuator.mode == "normal" and revoked(g, keys, "tok-00000003")
    finally:
        g.close()


def test_a_passage_on_a_full_disk_keeps_its_anti_passback_across_a_restart(tmp_path, keys, small_disk) -> None:
    cfg = daemon_config(tmp_path, keys, Broker(tmp_path), "/dev/null", passback=600)
    g = offline(cfg)
    code = issue(keys.private, "tok-full01", Status.GREEN, int(time.time()) - 5, 3600).encode()
    try:
        decision, event = g.handle(code)
        assert decision.admits
        filler = fill(small_disk)
        g.control.post(PassageOutcome(event.event_id, 0, "passed"))  # the person walks through on a full disk
        g.pump()
        assert g.recorder.kept == 0  # stored on the reserve, not held in memory
    finally:
        g.close()
    filler.unlink()
    g = offline(cfg)
    try:
        assert g.handle(code)[0].reason.value == "replay"  # anti-passback was stored, and holds
    finally:
        g.close()
