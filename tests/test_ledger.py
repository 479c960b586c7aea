"""One ledger of releases: each release resolves exactly once, and the lane machine, the recorder and
anti-passback agree with it after any sequence of decisions, passages, timeouts and mode changes."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from conftest import make_config
from fakes import ListOutbox
from gate.actuate.machine import Effect, LaneMachine, Outcome
from gate.config.model import Config
from gate.config.policy import Action, Policy
from gate.contracts import Mode, PassageOutcome, Requested
from gate.decide.codes import Kind, Status, issue
from gate.decide.decision import Decider, Decision, Reason
from gate.decide.passcache import CacheInfo
from gate.deliver.events import CheckIn
from gate.deliver.ledger import Ledger
from gate.deliver.recorder import Recorder
from gate.testing import FixedClock

NOW = 1_800_000_000
PULSE = 0.2
TIMEOUT = 1.5
PASSBACK = 600
TOKENS = [f"tok-lg{i:06d}" for i in range(5)]
RECORDER = Recorder(make_config(Path("/nonexistent/state")), ListOutbox(), FixedClock(NOW))  # type: ignore[arg-type]
LEDGER = settings(max_examples=120, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck))


def checkin(ref: str, token: str | None, companions: int) -> CheckIn:
    """A released decision's check-in (the ledger reads its event_id, token and companions)."""
    d = Decision(Action.ADMIT, Reason.ADMITTED, "", token, "phone", companions)
    return replace(RECORDER.checkin(d, FixedClock(NOW).read(), 1, 1), event_id=ref)


# -- the ledger alone --------------------------------------------------------------------------------------------
def test_a_release_closes_with_its_last_passage_and_its_holder_is_let_through_until_their_own() -> None:
    ledger = Ledger()
    ledger.open(checkin("d1", "tok-a", 2), at=5.0)
    assert ledger.refs() == ["d1"] and ledger.letting_through("tok-a") == 5.0
    first = ledger.resolve(PassageOutcome("d1", 0, "passed"))
    assert first is not None and first.holder and not first.closed
    assert ledger.letting_through("tok-a") is None and ledger.get("d1") is not None  # companions still to come
    assert ledger.resolve(PassageOutcome("d1", 1, "passed")) is not None
    last = ledger.resolve(PassageOutcome("d1", 2, "not_passed"))
    assert last is not None and last.closed and last.release.outcomes == {0: "passed", 1: "passed", 2: "not_passed"}
    assert len(ledger) == 0 and ledger.resolve(PassageOutcome("d1", 2, "not_passed")) is None  # once only


def test_an_outcome_for_a_release_never_opened_is_ignored() -> None:
    assert Ledger().resolve(PassageOutcome("nobody", 0, "passed")) is None


def test_a_remote_open_has_no_token_and_still_waits_for_its_passage() -> None:
    ledger = Ledger()
    ledger.open(checkin("r1", None, 0), at=1.0)
    assert ledger.refs() == ["r1"]
    done = ledger.resolve(PassageOutcome("r1", 0, "unconfirmed"))
    assert done is not None and done.closed and done.release.token is None


# -- the ledger in the lane, as a property -----------------------------------------------------------------------
class LedgerLane(RuleBasedStateMachine):
    """The lane's parts wired as `gate.lane.loop.Gate` wires them: the decider asks the ledger who is being let
    through, the recorder opens a release as it records the decision, and each outcome the machine reports is
    resolved in the ledger, counted by anti-passback (the holder's) and recorded against its decision."""

    keys: ClassVar[Any] = None
    cfg: ClassVar[Config | None] = None
    codes: ClassVar[dict[tuple[str, int], bytes]] = {}

    @initialize(sensor=st.booleans())
    def start(self, sensor: bool) -> None:
        assert self.cfg is not None
        self.clock = FixedClock(NOW, mono=1000.0)
        self.ledger = Ledger()
        self.outbox = ListOutbox()
        self.recorder = Recorder(self.cfg, self.outbox, self.clock, ledger=self.ledger)  # type: ignore[arg-type]
        info = CacheInfo(1, NOW, 0, 0)
        policy = Policy(passback_seconds=PASSBACK)
        self.decider = Decider(
            self.keys.trust, policy, lambda t: None, lambda: info, releasing=self.ledger.letting_through
        )
        self.m = LaneMachine(PULSE, TIMEOUT if sensor else None)
        self.opened: dict[str, tuple[str | None, int]] = {}  # every release ever opened: ref -> token, passages
        self.outcomes: Counter[tuple[str, int]] = Counter()
        self.closed: Counter[str] = Counter()
        self.through: set[str] = set()  # tokens whose holder went through (anti-passback counts them)

    def code(self, token: str, companions: int) -> bytes:
        key = (token, companions)
        if key not in self.codes:
            self.codes[key] = issue(
                self.keys.private, token, Status.GREEN, NOW - 5, 3600, Kind.PHONE, companions
            ).encode()
        return self.codes[key]

    def carry_out(self, effects: list[Effect]) -> None:
        """What the actuator reports, carried out as the lane does (Gate._carry_out)."""
        for e in effects:
            if not isinstance(e, Outcome):
                continue
            o = PassageOutcome(e.ref, e.index, e.outcome)
            done = self.ledger.resolve(o)
            assert done is not None, f"an outcome for {e.ref} the ledger does not hold"
            self.outcomes[(e.ref, e.index)] += 1
            self.closed[e.ref] += done.closed
            token = done.release.token
            if done.holder and token is not None and o.outcome != "not_passed":
                self.decider.confirm(token, self.clock.mono)
                self.through.add(token)
            self.recorder.passage(done)

    def being_let_through(self, token: str) -> bool:
        """Said plainly from the machine and the outcomes seen: a release for `token` runs and its holder has
        no outcome yet."""
        return any(self.opened[r][0] == token and (r, 0) not in self.outcomes for r in self.m.refs)

    # -- what happens at the lane -----------------------------------------------------------------------------------
    @rule(token=st.sampled_from(TOKENS), companions=st.integers(0, 3))
    def a_code_is_shown(self, token: str, companions: int) -> None:
        now = self.clock.read()
        blocked = Reason.OUT_OF_SERVICE if self.m.mode is Mode.OUT_OF_SERVICE else None
        d = self.decider.decide(self.code(token, companions), now, blocked)
        if blocked is not None:
            assert d.reason is Reason.OUT_OF_SERVICE
        elif token in self.through:
            assert d.reason is Reason.REPLAY and d.detail.startswith("passed this gate")
        elif self.being_let_through(token):
            assert d.reason is Reason.REPLAY and d.detail == "being let through at this gate now"
        else:
            assert d.reason is Reason.ADMITTED, d
        event = self.recorder.checkin(d, now, 1, 1)
        self.recorder.decision(event, released=d.admits, at=now.mono)
        if d.admits:
            self.opened[event.event_id] = (token, companions + 1)
            self.carry_out(self.m.release(event.event_id, companions + 1, now.mono))

    @rule()
    def someone_walks_through(self) -> None:
        self.carry_out(self.m.passage_entered(self.clock.mono))
        self.carry_out(self.m.passage_cleared(self.clock.mono + 0.01))

    @rule(seconds=st.sampled_from([0.01, PULSE, 0.5, TIMEOUT, 3.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.carry_out(self.m.tick(self.clock.mono))

    @rule(mode=st.sampled_from(Requested))
    def central_requests(self, mode: Requested) -> None:
        self.carry_out(self.m.request(mode, "central", self.clock.wall))

    @rule(active=st.booleans())
    def fire_input(self, active: bool) -> None:
        self.carry_out(self.m.fire_input(active, "fire input"))

    # -- the three views agree --------------------------------------------------------------------------------------
    @invariant()
    def the_machine_and_the_ledger_hold_the_same_releases(self) -> None:
        if hasattr(self, "m"):
            assert self.m.refs == self.ledger.refs()

    @invariant()
    def the_recorder_knows_a_decision_exactly_while_its_release_is_open(self) -> None:
        for ref in getattr(self, "opened", {}):
            assert (self.recorder.decided(ref) is not None) == (ref in self.m.refs)
            assert self.closed[ref] == (0 if ref in self.m.refs else 1)  # resolved exactly once

    @invariant()
    def anti_passback_sees_whom_the_ledger_lets_through(self) -> None:
        for token in TOKENS if hasattr(self, "m") else ():
            assert (self.ledger.letting_through(token) is not None) == self.being_let_through(token)

    def teardown(self) -> None:
        if not hasattr(self, "m"):
            return
        self.carry_out(self.m.abort())  # stopping ends every release
        assert len(self.ledger) == 0 and all(self.closed[r] == 1 for r in self.opened)
        assert all(self.outcomes[(r, i)] == 1 for r, (_, n) in self.opened.items() for i in range(n))
        passages = [json.loads(p) for _, _, p in self.outbox.rows if json.loads(p)["type"] == "passage"]
        named = Counter((p["decision_id"], p["companion_index"]) for p in passages)
        assert named == self.outcomes  # each passage recorded once, against its own decision


def test_every_release_resolves_once_and_machine_recorder_and_anti_passback_agree(keys, tmp_path: Path) -> None:
    LedgerLane.keys, LedgerLane.cfg = keys, make_config(tmp_path / "state", keys)
    run_state_machine_as_test(LedgerLane, settings=LEDGER)
