"""The admission decision: every reason path, clocks, cache overrides, memories, hostile payloads."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gate.config.policy import Action, Fallback, PerKind, Policy
from gate.core.clock import PLAUSIBLE_AFTER
from gate.decide.base45 import b45decode, b45encode
from gate.decide.codes import PREFIX, Kind, Status, issue
from gate.decide.decision import Decider, Reason
from gate.decide.passcache import CacheEntry, PassCache
from gate.testing import FixedClock

NOW = 1_800_000_000


@pytest.fixture
def cache(tmp_path: Path):
    with PassCache(tmp_path / "passes.db") as c:
        c.replace_all([], version=1, synced_at=NOW - 60)
        yield c


def decider(keys, cache: PassCache, **policy) -> Decider:
    return Decider(keys.trust, Policy(**policy), cache.lookup, cache.info, max_payload=512)


def code(keys, token="tok-holder1", status=Status.GREEN, iat=NOW - 30, valid=600, kind=Kind.PHONE, comp=0) -> bytes:
    return issue(keys.private, token, status, iat, valid, kind, comp).encode()


def test_valid_green_code_is_admitted_with_its_companions(keys, cache) -> None:
    d = decider(keys, cache).decide(code(keys, comp=2), FixedClock(NOW).read())
    assert (d.action, d.reason, d.companions, d.token, d.kind) == (
        Action.ADMIT,
        Reason.ADMITTED,
        2,
        "tok-holder1",
        "phone",
    )


@pytest.mark.parametrize(
    "status, action, reason",
    [(Status.YELLOW, Action.ASSIST, Reason.STATUS_YELLOW_ASSIST), (Status.RED, Action.DENY, Reason.STATUS_RED)],
)
def test_status_maps_to_action_and_reason(keys, cache, status, action, reason) -> None:
    d = decider(keys, cache).decide(code(keys, status=status), FixedClock(NOW).read())
    assert (d.action, d.reason) == (action, reason)


def test_oversized_payload_is_denied_too_large(keys, cache) -> None:
    d = decider(keys, cache).decide(b"GT1:" + b"A" * 600, FixedClock(NOW).read())
    assert (d.action, d.reason) == (Action.DENY, Reason.TOO_LARGE)


def test_expired_code_is_denied_with_reason_expired(keys, cache) -> None:
    d = decider(keys, cache).decide(code(keys, iat=NOW - 1000, valid=600), FixedClock(NOW).read())
    assert (d.action, d.reason) == (Action.DENY, Reason.EXPIRED)


def test_code_older_than_its_kinds_maximum_age_is_expired(keys, cache) -> None:
    d = decider(keys, cache, max_age_seconds={"phone": 60}).decide(code(keys, iat=NOW - 500), FixedClock(NOW).read())
    assert d.reason is Reason.EXPIRED


def test_clock_skew_within_tolerance_is_accepted_and_beyond_is_not_yet_valid(keys, cache) -> None:
    dec = decider(keys, cache, clock_skew_seconds=120, passback_seconds=0)
    assert dec.decide(code(keys, iat=NOW + 100), FixedClock(NOW).read()).admits
    assert dec.decide(code(keys, iat=NOW + 200), FixedClock(NOW).read()).reason is Reason.NOT_YET_VALID


def test_unsynced_clock_applies_the_per_kind_policy(keys, cache) -> None:
    clock = FixedClock(NOW, synced=False)
    dec = decider(keys, cache)
    assert (dec.decide(code(keys), clock.read()).action, dec.decide(code(keys), clock.read()).reason) == (
        Action.ASSIST,
        Reason.CLOCK_UNSYNCED,
    )
    strict = decider(
        keys, cache, on_clock_unsynced=PerKind(phone=Fallback.DENY, card=Fallback.DENY, staff=Fallback.DENY)
    )
    assert strict.decide(code(keys), clock.read()).action is Action.DENY


def test_a_1970_clock_is_never_trusted_even_if_flagged_synced(keys, cache) -> None:
    d = decider(keys, cache).decide(code(keys, iat=100), FixedClock(100, synced=True).read())
    assert d.reason is Reason.CLOCK_UNSYNCED
    assert PLAUSIBLE_AFTER > 100


def test_use_code_fallback_skips_time_checks_when_clock_unsynced(keys, cache) -> None:
    # Staff default to use_code for both an unsynced clock and the stale cache it implies: the signed code decides.
    d = decider(keys, cache).decide(code(keys, kind=Kind.STAFF, iat=NOW - 10**6), FixedClock(50, synced=False).read())
    assert (d.action, d.reason) == (Action.ADMIT, Reason.ADMITTED)
    red = decider(keys, cache).decide(
        code(keys, "tok-holder2", Status.RED, kind=Kind.STAFF, iat=NOW - 10**6), FixedClock(50, synced=False).read()
    )
    assert (red.action, red.reason) == (Action.DENY, Reason.STATUS_RED)  # the code's own status still counts


def test_revoked_cache_entry_beats_a_green_code(keys, cache) -> None:
    cache.apply_delta([CacheEntry("tok-holder1", Status.GREEN, None, True, None).as_row()], [], seq=1, synced_at=NOW)
    assert decider(keys, cache).decide(code(keys), FixedClock(NOW).read()).reason is Reason.REVOKED


def test_red_cache_entry_beats_a_green_code(keys, cache) -> None:
    cache.apply_delta([CacheEntry("tok-holder1", Status.RED, None, False, None).as_row()], [], 1, NOW)
    assert decider(keys, cache).decide(code(keys), FixedClock(NOW).read()).reason is Reason.STATUS_RED


def test_cache_companions_override_the_codes(keys, cache) -> None:
    cache.apply_delta([CacheEntry("tok-holder1", Status.GREEN, None, False, 1).as_row()], [], 1, NOW)
    assert decider(keys, cache).decide(code(keys, comp=5), FixedClock(NOW).read()).companions == 1


def test_cached_pass_past_valid_until_is_expired(keys, cache) -> None:
    cache.apply_delta([CacheEntry("tok-holder1", Status.GREEN, NOW - 1, False, None).as_row()], [], 1, NOW)
    assert decider(keys, cache).decide(code(keys), FixedClock(NOW).read()).reason is Reason.EXPIRED


def test_card_takes_its_status_from_the_cache(keys, cache) -> None:
    card = code(keys, token="card-0001", kind=Kind.CARD, iat=NOW - 86_400 * 30, valid=86_400 * 365)
    dec = decider(keys, cache, passback_seconds=0)
    assert dec.decide(card, FixedClock(NOW).read()).reason is Reason.NOT_CACHED
    cache.apply_delta([CacheEntry("card-0001", Status.YELLOW, None, False, None).as_row()], [], 1, NOW)
    assert dec.decide(card, FixedClock(NOW).read()).reason is Reason.STATUS_YELLOW_ASSIST
    cache.apply_delta([CacheEntry("card-0001", Status.GREEN, None, False, None).as_row()], [], 2, NOW)
    assert dec.decide(card, FixedClock(NOW).read()).admits


def test_stale_cache_follows_the_per_kind_policy(keys, cache) -> None:
    cache.apply_delta([], [], 1, synced_at=NOW - 10 * 86_400)
    dec = decider(keys, cache)
    assert dec.decide(code(keys), FixedClock(NOW).read()).admits  # phone: use_code
    card = code(keys, token="card-0002", kind=Kind.CARD)
    d = dec.decide(card, FixedClock(NOW).read())
    assert (d.action, d.reason) == (Action.ASSIST, Reason.CACHE_STALE)


def test_stale_red_entry_still_denies_under_use_code(keys, cache) -> None:
    cache.apply_delta([CacheEntry("tok-holder1", Status.RED, None, False, None).as_row()], [], 1, NOW - 10 * 86_400)
    assert decider(keys, cache).decide(code(keys), FixedClock(NOW).read()).reason is Reason.STATUS_RED


def test_anti_passback_denies_a_second_pass_within_the_window_only(keys, cache) -> None:
    clock = FixedClock(NOW)
    releasing: dict[str, float] = {}  # the gate's ledger of releases, played here: the first admit is still passing
    dec = Decider(keys.trust, Policy(passback_seconds=60), cache.lookup, cache.info, releasing=releasing.get)
    assert dec.decide(code(keys), clock.read()).admits
    releasing["tok-holder1"] = clock.read().mono
    clock.advance(30)
    d = dec.decide(code(keys), clock.read())
    assert (d.action, d.reason) == (Action.DENY, Reason.REPLAY)
    clock.advance(31)
    assert dec.decide(code(keys), clock.read()).admits
    assert dec.decide(code(keys, token="tok-other22"), clock.read()).admits


def test_staff_code_after_assist_admits_the_passenger_as_staff_assisted(keys, cache) -> None:
    clock = FixedClock(NOW)
    dec = decider(keys, cache)
    yellow = code(keys, token="tok-yellow1", status=Status.YELLOW, comp=1)
    assert dec.decide(yellow, clock.read()).action is Action.ASSIST
    clock.advance(20)
    d = dec.decide(code(keys, token="staff-0001", kind=Kind.STAFF), clock.read())
    assert (d.action, d.reason, d.token, d.kind, d.operator, d.companions) == (
        Action.ADMIT,
        Reason.STAFF_ASSISTED,
        "tok-yellow1",
        "staff_assisted",
        "staff-0001",
        1,
    )


def test_staff_code_long_after_assist_is_the_staff_members_own_entry(keys, cache) -> None:
    clock = FixedClock(NOW)
    dec = decider(keys, cache, assist_window_seconds=30)
    dec.decide(code(keys, token="tok-yellow1", status=Status.YELLOW), clock.read())
    clock.advance(31)
    d = dec.decide(code(keys, token="staff-0001", kind=Kind.STAFF), clock.read())
    assert (d.reason, d.token, d.kind) == (Reason.ADMITTED, "staff-0001", "staff")


def test_out_of_service_gate_denies_with_that_reason(keys, cache) -> None:
    d = decider(keys, cache).decide(code(keys), FixedClock(NOW).read(), blocked=Reason.OUT_OF_SERVICE)
    assert (d.action, d.reason, d.token) == (Action.DENY, Reason.OUT_OF_SERVICE, "tok-holder1")


# -- hostile payloads: never admit, never raise ------------------------------------------------------


def _raw(keys) -> bytes:
    return b45decode(issue(keys.private, "tok-fuzzed1", Status.GREEN, NOW - 30, 600)[len(PREFIX) :])


HYP = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@HYP
@given(st.data())
def test_truncated_codes_never_admit(keys, cache, data) -> None:
    text = issue(keys.private, "tok-fuzzed1", Status.GREEN, NOW - 30, 600)
    cut = data.draw(st.integers(0, len(text) - 1))
    assert not decider(keys, cache).decide(text[:cut].encode(), FixedClock(NOW).read()).admits


@HYP
@given(st.data())
def test_bit_flipped_codes_never_admit(keys, cache, data) -> None:
    raw = bytearray(_raw(keys))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= 1 << data.draw(st.integers(0, 7))
    d = decider(keys, cache).decide((PREFIX + b45encode(bytes(raw))).encode(), FixedClock(NOW).read())
    assert not d.admits


@HYP
@given(st.binary(max_size=700))
def test_random_payloads_never_admit_or_raise(keys, cache, payload: bytes) -> None:
    assert not decider(keys, cache).decide(payload, FixedClock(NOW).read()).admits


@HYP
@given(st.binary(min_size=16, max_size=200))
def test_random_bodies_in_the_right_envelope_never_admit(keys, cache, body: bytes) -> None:
    payload = (PREFIX + b45encode(body)).encode()
    assert not decider(keys, cache).decide(payload, FixedClock(NOW).read()).admits


@HYP
@given(st.sampled_from(["lower", "prefix", "spaces"]))
def test_re_encoded_codes_never_admit(keys, cache, how: str) -> None:
    text = issue(keys.private, "tok-fuzzed1", Status.GREEN, NOW - 30, 600)
    variant = {"lower": text.lower(), "prefix": "gt1:" + text[4:], "spaces": text.replace(":", ": ", 1)}[how]
    assert not decider(keys, cache).decide(variant.encode(), FixedClock(NOW).read()).admits


@HYP
@given(st.integers(0, 15), st.sampled_from(list(Status)), st.sampled_from(list(Kind)))
def test_codes_re_signed_with_another_key_never_admit(keys, cache, comp, status, kind) -> None:
    forged = issue(keys.other, "tok-fuzzed1", status, NOW - 30, 600, kind, comp)
    d = decider(keys, cache).decide(forged.encode(), FixedClock(NOW).read())
    assert (d.admits, d.reason) == (False, Reason.UNKNOWN_KEY)


@HYP
@given(st.integers(0, 15))
def test_re_signed_claims_under_a_trusted_key_id_but_wrong_key_are_forged(keys, cache, comp) -> None:
    real = bytearray(_raw(keys))
    fake = bytearray(b45decode(issue(keys.other, "tok-fuzzed1", Status.GREEN, NOW - 30, 600, companions=comp)[4:]))
    fake[1:5] = real[1:5]  # claim the trusted key's id
    d = decider(keys, cache).decide((PREFIX + b45encode(bytes(fake))).encode(), FixedClock(NOW).read())
    assert (d.admits, d.reason) == (False, Reason.FORGED_SIGNATURE)
