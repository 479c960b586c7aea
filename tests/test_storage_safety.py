"""Damaged or full storage fails safe (docs/operations.md, "What the gate does when…"): a state file that holds
less than its seal cannot prove the lane's mode, its anti-passback or the pass cache, so the gate starts out of
service or treats the cache as stale (no code alone admits), with a `state_unproven` alarm; a full disk is not
corruption; a captured command cannot be carried out twice, whatever the clocks do."""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_faults import alarms, central_key, offline, publish, red

from conftest import Broker, fill, wait_until
from fakes import Feeder, daemon_config, start, wait_log
from gate.contracts import Requested
from gate.core.docstore import DocStore
from gate.core.seal import seal_path
from gate.decide.codes import Status, issue
from gate.decide.keys import TrustStore, generate_keypair, load_private_key
from gate.lane.state import LaneState, ModeRecord
from gate.sync.envelope import Rejected, Verifier, sign


def green(keys: Any, token: str) -> bytes:
    return issue(keys.private, token, Status.GREEN, int(time.time()) - 5, 3600).encode()


def snapshot(state: Path) -> Path:
    """A copy of the state directory as it is now (a crash at this instant would leave it so)."""
    copy = state.with_name(state.name + ".then")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(state, copy)
    return copy


def roll_back(state: Path, then: Path, name: str) -> None:
    """`name` (and its SQLite side files) as it was at `then`: what a torn write-ahead log leaves."""
    for side in ("", "-wal", "-shm"):
        (state / f"{name}{side}").unlink(missing_ok=True)
        if (then / f"{name}{side}").exists():
            shutil.copy2(then / f"{name}{side}", state / f"{name}{side}")


def unproven(g: Any) -> list[str]:
    return [a["detail"] for a in alarms(g) if a["alarm"] == "state_unproven" and a["active"]]


# -- lane.db: the mode and anti-passback --------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["rolled back", "torn wal", "deleted", "seal garbage"])
def test_a_lane_db_that_lost_out_of_service_starts_out_of_service_with_an_alarm(tmp_path, keys, damage) -> None:
    cfg = daemon_config(tmp_path, keys, Broker(tmp_path), "/dev/null")
    state = tmp_path / "state"
    g = offline(cfg)
    g.close()
    then = snapshot(state)  # in service
    lane = LaneState(state / "lane.db")
    lane.set_mode(ModeRecord(Requested.OUT_OF_SERVICE, "central", time.time()))
    if damage == "torn wal":  # the process dies with the change in the log only, and the log is cut short
        crashed = snapshot(state)
        lane.close()
        roll_back(state, crashed, "lane.db")
        wal = state / "lane.db-wal"
        assert wal.stat().st_size > 4096
        with wal.open("r+b") as fh:
            fh.truncate(32)  # the header only: every frame is gone, and SQLite says nothing
    else:
        lane.close()
        if damage == "rolled back":
            roll_back(state, then, "lane.db")
        elif damage == "deleted":
            (state / "lane.db").unlink()
        else:
            seal_path(state / "lane.db").write_bytes(b'{"seal": {"facts": {"seq": 0}, "sha256": "00"}}')
    g = offline(cfg)
    try:
        st = g.state()
        assert st["mode"] == "out_of_service", st
        assert g.handle(green(keys, "tok-ss0001"))[0].reason.value == "out_of_service"
        assert g.actuator.relay.pin_factory.pin(17).state is False
        assert len(unproven(g)) == 1 and "lane.db" in unproven(g)[0]
        g.set_mode(Requested.NORMAL, "central")  # a person puts it back in service: proven from here on
    finally:
        g.close()
    g = offline(cfg)
    try:
        assert g.state()["mode"] == "normal" and "state_unproven" not in g.state()["alarms_active"]
    finally:
        g.close()


def test_a_lane_db_that_lost_a_passage_does_not_admit_the_code_again(tmp_path, keys) -> None:
    cfg = daemon_config(tmp_path, keys, Broker(tmp_path), "/dev/null", passback=600)
    state = tmp_path / "state"
    code = green(keys, "tok-ss0002")
    g = offline(cfg)
    g.cache.apply_delta([], [], 0)
    g.close()
    then = snapshot(state)
    g = offline(cfg)
    try:
        assert g.handle(code)[0].admits
        assert wait_until(lambda: (g.pump(), not g.actuator.machine.busy)[1], 5)  # unconfirmed: it counts
    finally:
        g.close()
    roll_back(state, then, "lane.db")  # the passage is gone from lane.db
    g = offline(cfg)
    try:
        assert g.handle(code)[0].reason.value == "out_of_service"  # not a second admit
        assert unproven(g)
    finally:
        g.close()


# -- passes.db: a revocation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("damage", ["rolled back", "seal garbage", "deleted"])
def test_a_pass_cache_that_lost_a_revocation_admits_no_code_alone(tmp_path, keys, damage) -> None:
    cfg = daemon_config(tmp_path, keys, Broker(tmp_path), "/dev/null")  # phones: use_code when stale
    state = tmp_path / "state"
    code = green(keys, "tok-ss0003")
    g = offline(cfg)
    g.cache.apply_delta([("tok-other1", 0, None, 0, None)], [], 1)
    g.close()
    then = snapshot(state)
    g = offline(cfg)
    g.cache.apply_delta([("tok-ss0003", 0, None, 1, None)], [], 2)  # central revokes it
    assert g.handle(code)[0].reason.value == "revoked"
    g.close()
    if damage == "rolled back":
        roll_back(state, then, "passes.db")
    elif damage == "deleted":
        (state / "passes.db").unlink()
    else:
        seal_path(state / "passes.db").write_text("{")
    g = offline(cfg)
    try:
        d = g.handle(code)[0]
        if damage == "seal garbage":  # the revocation itself survived; only its proof is gone
            assert d.reason.value == "revoked", d
        else:
            assert d.action.value == "assist" and d.reason.value == "cache_stale", d  # staff look; no code alone
            assert "unproven" in d.detail
        assert g.handle(green(keys, "tok-ss0099"))[0].action.value == "assist"  # any code, until proven
        assert len(unproven(g)) == 1 and "passes.db" in unproven(g)[0]
        assert g.state()["mode"] == "normal"  # the lane serves; only the cache is in doubt
    finally:
        g.close()


def test_a_new_snapshot_proves_the_cache_again(tmp_path, keys) -> None:
    cfg = daemon_config(tmp_path, keys, Broker(tmp_path), "/dev/null")
    state = tmp_path / "state"
    g = offline(cfg)
    g.cache.apply_delta([], [], 1)
    g.close()
    seal_path(state / "passes.db").write_text("garbage")
    g = offline(cfg)
    try:
        assert not g.cache.info().proven
        g.cache.replace_all([("tok-ss0004", 0, None, 0, None)], version=7)  # central's snapshot
        assert g.cache.info().proven
        assert g.handle(green(keys, "tok-ss0004"))[0].admits
    finally:
        g.close()


# -- a full disk is not corruption ---------------------------------------------------------------------------
def test_a_start_on_a_full_disk_keeps_every_state_file(tmp_path, keys, small_disk) -> None:
    cfg = daemon_config(tmp_path, keys, Broker(tmp_path), "/dev/null")
    g = offline(cfg)
    g.cache.apply_delta([("tok-ss0005", 0, None, 1, None)], [], 1)  # revoked
    for i in range(50):
        g.handle(red(keys, i))
    g.close()
    filler = fill(small_disk)
    try:
        g = offline(cfg)
    except OSError as exc:  # may not start at all on a disk this full: it says which file, and moves nothing
        assert "state" in str(exc)
    else:
        try:
            assert g.handle(green(keys, "tok-ss0005"))[0].reason.value == "revoked"
        finally:
            g.close()
    assert not list(small_disk.glob("*.corrupt-*")), sorted(p.name for p in small_disk.iterdir())
    filler.unlink()
    g = offline(cfg)
    try:
        assert g.handle(green(keys, "tok-ss0005"))[0].reason.value == "revoked"
        assert g.outbox.depth >= 50  # nothing lost
    finally:
        g.close()


def test_a_directory_in_place_of_a_state_file_is_named_and_nothing_is_moved(tmp_path, keys) -> None:
    cfg = daemon_config(tmp_path, keys, Broker(tmp_path), "/dev/null")
    state = tmp_path / "state"
    g = offline(cfg)
    g.close()
    for side in ("", "-wal", "-shm"):
        (state / f"outbox.db{side}").unlink(missing_ok=True)
    (state / "outbox.db").mkdir()
    with pytest.raises(OSError, match=r"outbox\.db"):
        offline(cfg)
    assert (state / "outbox.db").is_dir() and not list(state.glob("outbox.db.corrupt-*"))


# -- commands: replay-proof across clock jumps ----------------------------------------------------------------
def test_a_captured_command_is_not_carried_out_again_after_the_clocks_come_back(tmp_path) -> None:
    _, priv, pub = generate_keypair(tmp_path / "central")
    key = load_private_key(priv)
    store = DocStore(tmp_path / "device.json", "command_nonces")

    def verifier() -> Verifier:
        return Verifier(TrustStore.from_files([pub]), "lane-k", 65536, 300, store)

    now = time.time()
    ahead = sign(key, "command", {"name": "open", "args": {"operator": "staff-1"}}, gate="lane-k", ts=now + 400)
    v = verifier()
    v.fresh(v.open(ahead, "command"), now + 400)  # both clocks 400 s ahead: accepted, carried out
    for later in (verifier(), v):  # the clocks come back (and the gate restarts, or not)
        with pytest.raises(Rejected, match=r"nonce already used|ahead of the gate's clock"):
            later.fresh(later.open(ahead, "command"), now + 200)
        with pytest.raises(Rejected, match=r"nonce already used"):
            later.fresh(later.open(ahead, "command"), now + 390)
    older = sign(key, "command", {"name": "in-service"}, gate="lane-k", ts=now)
    with pytest.raises(Rejected, match="before the last command carried out") as refused:
        v.fresh(v.open(older, "command"), now)
    assert refused.value.reason == "out_of_order" and refused.value.facts["last_carried_out"] == now + 400
    newer = sign(key, "command", {"name": "in-service"}, gate="lane-k", ts=now + 401)
    v.fresh(v.open(newer, "command"), now + 401)


# -- the real daemon -----------------------------------------------------------------------------------------
def test_the_daemon_killed_after_out_of_service_with_a_torn_log_restarts_out_of_service(
    tmp_path, keys, broker, subscriber_factory
) -> None:
    key, pub = central_key(tmp_path)
    feeder = Feeder(keys)
    cfg = daemon_config(tmp_path, keys, broker, feeder.port, extra=f'[central]\nkeys = ["{pub}"]\n')
    log = tmp_path / "gate.log"
    replies = subscriber_factory(broker, "gate/lane-k/reply")
    proc = start(cfg, log)
    try:
        assert wait_log(log, "connected to")
        publish(broker, "gate/lane-k/command", sign(key, "command", {"name": "out-of-service"}, gate="lane-k"))
        assert wait_until(lambda: replies.on("/reply"), 20)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        wal = tmp_path / "state" / "lane.db-wal"
        db = sqlite3.connect(f"file:{tmp_path / 'state' / 'lane.db'}?mode=ro", uri=True)
        assert db.execute("SELECT mode FROM mode").fetchone() == ("out_of_service",)  # in the log only
        db.close()
        with wal.open("r+b") as fh:
            fh.truncate(32)
        broker.stop()  # central cannot say it again
        mark = len(log.read_text())
        proc = start(cfg, log)
        assert wait_log(log, "state_unproven", mark), log.read_text()[mark:]
        feeder.on.set()
        assert wait_log(log, "decision deny out_of_service", mark)
        assert "decision admit" not in log.read_text()[mark:]

        def alarms() -> list[str]:  # status.json is rewritten every few seconds: wait for the alarm to reach it
            return list(json.loads((tmp_path / "state" / "status.json").read_text())["alarms_active"])

        assert wait_until(lambda: "state_unproven" in alarms(), 20), alarms()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        feeder.close()


def test_an_outbox_gap_counts_only_what_the_broker_had_not_acknowledged(tmp_path) -> None:
    from gate.config.model import OutboxSection
    from gate.deliver.outbox import Outbox
    from gate.lane.statefiles import Recovery, open_outbox

    state = tmp_path / "state"
    Outbox(state / "outbox.db").close()
    then = snapshot(state)
    box = Outbox(state / "outbox.db")
    seqs = [box.append(f"ev-{i}", "gate/lane-k/checkin", b"{}") for i in range(20)]
    assert box.ack(seqs[:7]) == 7  # delivered, in order
    box.close()
    roll_back(state, then, "outbox.db")  # the write-ahead log that held all 20 is gone
    recovery = Recovery()
    box = open_outbox(state / "outbox.db", OutboxSection(), recovery)
    box.close()
    assert [name for name, _ in recovery.alarms] == ["outbox_gap"]
    assert "13 undelivered events were lost" in recovery.alarms[0][1]


@pytest.mark.parametrize("reserve_mb", [0.0, 4.0])
def test_an_alarm_on_a_full_disk_is_stored_on_the_reserve_or_published_at_once_and_stored_later(
    tmp_path, keys, broker, subscriber_factory, small_disk, reserve_mb
) -> None:
    from gpiozero.pins.mock import MockFactory

    from gate.config.model import load_config
    from gate.contracts import Alarm
    from gate.lane.wiring import build
    from gate.scan.decoders import make_decoder
    from gate.scanner import DecodingSource
    from gate.testing import ScriptedFrames

    cfg = load_config(daemon_config(tmp_path, keys, broker, "/dev/null"))
    cfg = cfg.model_copy(update={"gate": cfg.gate.model_copy(update={"reserve_mb": reserve_mb})})
    src = DecodingSource(ScriptedFrames([]), make_decoder("zxing"))
    g = build(cfg, source=src, pin_factory=MockFactory(), with_mqtt=True).start()
    sub = subscriber_factory(broker, "gate/lane-k/alarm")
    try:
        assert wait_until(g.link.connected.is_set, 20)
        g.pump()
        g.reporter.publish_state()  # the lane's outbox connection is open before the disk fills
        assert wait_until(lambda: g.outbox._reader.is_open, 20)  # and the drainer's
        filler = fill(small_disk)
        g.control.post(Alarm("held_open", True, "passage blocked too long"))
        g.pump()
        if reserve_mb:  # stored at once on the reserve, which the full disk made the gate give back
            assert g.recorder.kept == 0 and not (small_disk / ".reserve").exists()
        else:
            assert g.recorder.kept == 1  # not in the outbox: no room
        sent = wait_until(lambda: [json.loads(p) for p in sub.on("/alarm") if b"held_open" in p], 20)
        assert sent and sent[0]["active"] is True  # published all the same
        filler.unlink()
        assert wait_until(lambda: (g.pump(), g.recorder.kept == 0)[1], 20)  # stored once there is room
        assert wait_until(lambda: g.outbox.depth == 0, 20)  # and delivered
        if reserve_mb:  # and the reserve is taken back once there is room
            assert wait_until(lambda: (g.pump(), (small_disk / ".reserve").exists())[1], 20)
    finally:
        g.close()


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    modes=st.lists(st.sampled_from(list(Requested)), min_size=1, max_size=6),
    stale_db=st.integers(min_value=-1, max_value=6),
    stale_seal=st.integers(min_value=-1, max_value=6),
)
def test_whatever_earlier_copy_a_restart_finds_the_mode_is_the_last_requested_or_out_of_service(
    modes: list[Requested], stale_db: int, stale_seal: int
) -> None:
    """The property behind the seals: lane.db or its seal, either one an older copy (a rollback, a torn log, a
    stale file put back), never makes the lane start in a mode other than the last one central asked for,
    unless it starts out of service with the alarm. (Both put back together, as one older backup, is
    consistent, and is what that backup says.)"""
    import tempfile

    assume(not (0 <= stale_db < len(modes) and 0 <= stale_seal < len(modes)))

    from gate.lane.statefiles import Recovery, check_lane_state, prove_lane_state

    with tempfile.TemporaryDirectory() as d:
        state = Path(d)
        copies: list[tuple[bytes, bytes]] = []
        lane = LaneState(state / "lane.db")
        for i, mode in enumerate(modes):
            lane.set_mode(ModeRecord(mode, "central", float(i)))
            lane.close()  # a clean stop: the log is in the file, which can be copied whole
            copies.append(((state / "lane.db").read_bytes(), seal_path(state / "lane.db").read_bytes()))
            lane = LaneState(state / "lane.db")
        lane.close()
        if 0 <= stale_db < len(copies):
            (state / "lane.db").write_bytes(copies[stale_db][0])
        if 0 <= stale_seal < len(copies):
            seal_path(state / "lane.db").write_bytes(copies[stale_seal][1])
        recovery = Recovery()
        lost = check_lane_state(state / "lane.db", recovery)
        lane = LaneState(state / "lane.db")
        unknown = lost or prove_lane_state(lane, recovery)
        try:
            if not unknown:
                record = lane.mode()
                assert record is not None and record.mode is modes[-1], (record, modes, stale_db, stale_seal)
            else:
                assert [name for name, _ in recovery.alarms] == ["state_unproven"]
        finally:
            lane.close()


# -- the reserve and the command order -----------------------------------------------------------------------
def test_the_reserve_is_given_back_to_a_write_that_found_the_disk_full_and_taken_again(tmp_path) -> None:
    import errno

    from gate.core.reserve import Reserve

    r = Reserve(tmp_path, 1 << 20)
    assert r.held and not r.given_back
    tries = []

    def write() -> str:
        tries.append(1)
        if len(tries) == 1:
            raise sqlite3.OperationalError("database or disk is full")
        return "stored"

    assert r.write(write) == "stored" and len(tries) == 2  # tried once more on the space given back
    assert r.given_back and not (tmp_path / ".reserve").exists()
    with pytest.raises(OSError):  # nothing left to give: the failure is the caller's
        r.write(lambda: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    r.retake(now=time.monotonic() + 60)
    assert r.held


def test_a_command_ahead_of_the_gates_clock_moves_nothing_and_a_new_epoch_resets_the_order(tmp_path) -> None:
    _, priv, pub = generate_keypair(tmp_path / "central")
    key = load_private_key(priv)
    store = DocStore(tmp_path / "device.json", "command_nonces")
    v = Verifier(TrustStore.from_files([pub]), "lane-k", 65536, 300, store, ahead=30)
    now = time.time()

    def cmd(ts: float, **body: Any) -> Any:
        return v.open(sign(key, "command", {"name": "status", **body}, gate="lane-k", ts=ts), "command")

    with pytest.raises(Rejected) as ahead:
        v.fresh(cmd(now + 90), now)
    assert ahead.value.reason == "clock_ahead" and ahead.value.facts["signed_at"] - ahead.value.facts["gate_time"] > 89
    v.fresh(cmd(now), now)  # nothing moved: in order at once
    v.fresh(cmd(now + 300), now + 300)  # both clocks ahead once: carried out
    with pytest.raises(Rejected, match="new epoch") as late:
        v.fresh(cmd(now + 5), now + 5)  # the clocks corrected
    assert late.value.reason == "out_of_order" and late.value.facts["epoch"] == 0
    v.fresh(cmd(now + 6, epoch=1), now + 6)  # the signed recovery
    restarted = Verifier(TrustStore.from_files([pub]), "lane-k", 65536, 300, store, ahead=30)
    restarted.fresh(
        restarted.open(sign(key, "command", {"name": "status"}, gate="lane-k", ts=now + 7), "command"), now + 7
    )
    with pytest.raises(Rejected) as old:
        restarted.fresh(
            restarted.open(sign(key, "command", {"epoch": 0}, gate="lane-k", ts=now + 8), "command"), now + 8
        )
    assert old.value.reason == "old_epoch"
