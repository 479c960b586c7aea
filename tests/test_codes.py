"""The GT1 code format: round trips, strict parsing, and hostile payloads."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gate.core.errors import CodeError
from gate.decide.base45 import ALPHABET, b45decode, b45encode
from gate.decide.codes import PREFIX, Kind, Status, check_token, issue, parse

NOW = 1_800_000_000


@given(st.binary(max_size=300))
def test_base45_round_trips_any_bytes(data: bytes) -> None:
    text = b45encode(data)
    assert set(text) <= set(ALPHABET)
    assert b45decode(text) == data


def test_base45_matches_rfc9285_examples() -> None:
    assert b45encode(b"AB") == "BB8"
    assert b45encode(b"Hello!!") == "%69 VD92EX0"
    assert b45decode("QED8WEX0") == b"ietf!"


def test_issued_code_parses_back_to_its_claims(keys) -> None:
    text = issue(keys.private, "tok-abc123", Status.YELLOW, NOW, 600, Kind.CARD, companions=3)
    assert text.startswith(PREFIX) and set(text) <= set(ALPHABET)
    code = parse(text)
    assert (code.token, code.status, code.kind, code.companions) == ("tok-abc123", Status.YELLOW, Kind.CARD, 3)
    assert (code.issued_at, code.expires_at) == (NOW, NOW + 600)
    code.verify(keys.trust)


def test_code_is_compact_enough_for_a_small_qr(keys) -> None:
    text = issue(keys.private, "a" * 22, Status.GREEN, NOW, 600)
    assert len(text) <= 160  # QR version 7 (45x45) holds 154..224 alphanumeric chars at level M


@pytest.mark.parametrize(
    "token", ["13812345678", "110101199003071234", "11010119900307123X", "short", "has space1", "x" * 33, "ünïcode12"]
)
def test_tokens_that_are_not_pseudonymous_ids_are_refused(token: str) -> None:
    with pytest.raises(CodeError):
        check_token(token)


@pytest.mark.parametrize(
    "payload, why",
    [
        (b"", "does not start"),
        (b"GT2:AAAA", "does not start"),
        (b"GT1:", "too short"),
        (b"GT1:@@@", "not base45"),
        ("GT1:\u00e9".encode(), "not ASCII"),
        (b"GT1:00", "too short"),
        (b"GT1:AA", "out of range"),
    ],
)
def test_malformed_payloads_name_what_is_wrong(payload: bytes, why: str) -> None:
    with pytest.raises(CodeError) as exc:
        parse(payload)
    assert exc.value.reason == "malformed" and why in str(exc.value)


def test_unsigned_code_is_malformed(keys) -> None:
    text = issue(keys.private, "tok-abc123", Status.GREEN, NOW, 600)
    body = b45decode(text[len(PREFIX) :])[:-64]
    with pytest.raises(CodeError, match="too short to hold a signed pass"):
        parse(PREFIX + b45encode(body))


def test_code_signed_by_untrusted_key_is_unknown_key(keys) -> None:
    code = parse(issue(keys.other, "tok-abc123", Status.GREEN, NOW, 600))
    with pytest.raises(CodeError) as exc:
        code.verify(keys.trust)
    assert exc.value.reason == "unknown_key"


def test_changed_claim_under_the_same_key_id_is_forged(keys) -> None:
    raw = bytearray(b45decode(issue(keys.private, "tok-abc123", Status.RED, NOW, 600)[len(PREFIX) :]))
    raw[5] &= ~0x0C  # status red -> green in the flags byte
    code = parse(PREFIX + b45encode(bytes(raw)))
    assert code.status is Status.GREEN
    with pytest.raises(CodeError) as exc:
        code.verify(keys.trust)
    assert exc.value.reason == "forged_signature"


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 10**6), st.sampled_from(list(Kind)), st.integers(0, 15))
def test_any_valid_claims_round_trip(keys, iat: int, valid: int, kind: Kind, companions: int) -> None:
    code = parse(issue(keys.private, "tok-roundtrip", Status.GREEN, iat, valid, kind, companions))
    assert (code.issued_at, code.expires_at, code.kind, code.companions) == (iat, iat + valid, kind, companions)


def test_a_sealed_payload_verifies_and_any_change_is_caught() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gate.deliver.sealing import Sealer, SealError, unseal

    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    sealed = Sealer(key).seal(b'{"event_id":"e1","gate_id":"lane-a","token":"tok-abc123"}')
    keys = {"lane-a": key.public_key(), "lane-b": other.public_key()}
    assert unseal(sealed, keys, "lane-a").body["token"] == "tok-abc123"
    cases = {
        "bad_signature": (sealed.replace(b"tok-abc123", b"tok-abc124"), "lane-a"),
        "wrong_gate": (sealed, "lane-b"),
        "unsigned": (b'{"event_id":"e1","gate_id":"lane-a"}', "lane-a"),
        "unknown_gate": (Sealer(other).seal(b'{"event_id":"e1","gate_id":"lane-z"}'), "lane-z"),
        "wrong_key": (Sealer(other).seal(b'{"event_id":"e1","gate_id":"lane-a"}'), "lane-a"),
        "malformed": (b"[" * 10_000, "lane-a"),
    }
    for reason, (payload, gate_id) in cases.items():
        with pytest.raises(SealError) as exc:
            unseal(payload, keys, gate_id)
        assert exc.value.reason == reason
