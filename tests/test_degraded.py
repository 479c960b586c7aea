"""Robustness: a small fixed sample of each degraded-image class, so that a decoder regression fails the suite.
The full measurement, with raw zxing-cpp and pyzbar beside gate, is bench/decode.py."""

from __future__ import annotations

import numpy as np
import pytest
import zxingcpp

from gate.scan.decoders import Decoder, ZxingDecoder, make_decoder
from gate.scan.degrade import CLASSES

# A real code's length: the payload of a signed single-holder code (see docs/codes.md).
CODE = "GT1:" + "6BFOXN*TS0BI$ZD.P9UOL97O4-2HH77HRM3HSZ3L+Q*UMV20/27NAK:L9%IQE4U:NJ 7ABE6P.5$MD-FFS2B3V9"
SEEDS = range(6)
# What gate reads of the six frames of each class (zxing-cpp 2.x): at least this many, and never fewer than
# raw zxingcpp.read_barcodes on the same frames. The two classes where gate's try-harder pays are named.
FLOOR = {
    "defocus r=2 px": 6,
    "defocus r=3 px": 6,
    "defocus r=4 px": 0,
    "motion 5 px": 6,
    "motion 7 px": 3,
    "motion 9 px": 0,
    "glare spot": 6,  # raw zxing: 2 (the flattened view of the code reads it)
    "moire, low contrast": 5,
    "tilt 30°": 6,
    "small modules 1.3 px": 6,  # raw zxing: 0 (the 2x bicubic view reads it)
}


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    dec = make_decoder("auto")
    assert isinstance(dec, ZxingDecoder)
    dec.try_harder_seconds = 10.0  # what it can read, not how fast this machine is (bench/decode.py times it)
    return dec


@pytest.mark.parametrize("name", list(CLASSES))
def test_gate_reads_the_degraded_class_at_least_as_well_as_raw_zxing(decoder: Decoder, name: str) -> None:
    frames = [CLASSES[name](CODE, np.random.default_rng(seed)) for seed in SEEDS]
    gate = raw = 0
    for f in frames:
        got = [c.data for c in decoder.decode(f)]
        assert got in ([], [CODE.encode()]), f"{name}: a wrong payload {got!r}"  # never a wrong read
        gate += bool(got)
        raw += any(
            bytes(r.bytes) == CODE.encode() for r in zxingcpp.read_barcodes(f, formats=zxingcpp.BarcodeFormat.QRCode)
        )
    assert gate >= FLOOR[name], f"{name}: gate read {gate} of {len(frames)}, expected at least {FLOOR[name]}"
    assert gate >= raw, f"{name}: gate read {gate}, raw zxing-cpp {raw}"


def test_the_classes_are_all_covered() -> None:
    assert set(FLOOR) == set(CLASSES)
