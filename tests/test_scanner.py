"""Decoding generated codes with both backends, exact bytes, one scan per presentation, `gate decode`."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gate.scan.decoders import ZbarDecoder, ZxingDecoder, make_decoder
from gate.scan.framegen import code_frame
from gate.scanner import DecodingSource, Deduplicator, ImageSource, Scanner
from gate.testing import FixedClock, ScriptedFrames

TEXT = "GT1:8C2*1Z.Q8T$HU2BT8 7HK5-9ZJPU:%0CS1K3B.:D4+T"
LOOKS = {
    "plain": {},
    "rotated 35°": {"angle": 35},
    "upside down": {"angle": 180},
    "blurred": {"blur": 1.5},
    "noisy": {"noise": 25, "seed": 3},
    "inverted (dark mode)": {"invert": True},
    "low contrast": {"contrast": 0.25},
    "perspective": {"perspective": 0.12},
    "small": {"scale": 3},
}


@pytest.fixture(scope="module")
def zbar() -> ZbarDecoder:
    try:
        return ZbarDecoder()
    except ImportError as exc:  # libzbar0 missing: a real failure, not a skip
        pytest.fail(f"libzbar is not installed: {exc}")


@pytest.mark.parametrize("look", list(LOOKS))
def test_zxing_reads_the_code_under(look: str) -> None:
    frame = code_frame(TEXT, **LOOKS[look])
    assert [c.data for c in ZxingDecoder().decode_thoroughly(frame)] == [TEXT.encode()]


@pytest.mark.parametrize("look", [k for k in LOOKS if k != "perspective"])
def test_zbar_reads_the_code_under(zbar: ZbarDecoder, look: str) -> None:
    frame = code_frame(TEXT, **LOOKS[look])
    assert [c.data for c in zbar.decode(frame)] == [TEXT.encode()]


@pytest.mark.parametrize("invert", [False, True])
def test_streaming_zxing_reads_either_polarity_on_every_frame(invert: bool) -> None:
    dec, frame = ZxingDecoder(), code_frame(TEXT, invert=invert)
    assert [len(dec.decode(frame)) for _ in range(3)] == [1, 1, 1]  # no frame is spent on the other polarity


def test_zxing_returns_exact_bytes_for_binary_and_utf8_payloads() -> None:
    for payload in (bytes(range(0, 256, 3)), "通行码 ✓".encode()):
        found = ZxingDecoder().decode_thoroughly(code_frame(payload, scale=3))
        assert [(c.data, c.exact) for c in found] == [(payload, True)]


def test_zbar_is_exact_for_ascii_and_flags_what_it_may_have_re_encoded(zbar: ZbarDecoder) -> None:
    assert [(c.data, c.exact) for c in zbar.decode(code_frame(TEXT))] == [(TEXT.encode(), True)]
    found = zbar.decode(code_frame(bytes(range(128, 256, 2)), scale=3))
    assert found and not found[0].exact


def test_empty_and_featureless_frames_yield_nothing(zbar: ZbarDecoder) -> None:
    for frame in (np.zeros((480, 640), np.uint8), np.random.default_rng(1).integers(0, 255, (480, 640), np.uint8)):
        assert ZxingDecoder().decode(frame) == [] and zbar.decode(frame) == []


def test_auto_prefers_zxing_with_zbar_as_fallback() -> None:
    dec = make_decoder("auto")
    assert dec.name == "zxing" and isinstance(dec, ZxingDecoder) and dec._fallback is not None


def test_a_code_held_in_view_scans_once_until_rearm() -> None:
    d = Deduplicator(rearm=3.0, absent=0.5)
    got = [d.feed([b"A"], t / 10) for t in range(0, 29)]  # 2.8 s continuously in view
    assert sum(len(g) for g in got) == 1
    assert d.feed([b"A"], 3.0) == [b"A"]  # re-armed


def test_the_same_code_scans_again_after_leaving_view() -> None:
    d = Deduplicator(rearm=30.0, absent=0.5)
    assert d.feed([b"A"], 0.0) == [b"A"]
    assert d.feed([], 0.3) == [] and d.feed([b"A"], 0.4) == []  # a missed frame is not leaving view
    assert d.feed([], 1.0) == []
    assert d.feed([b"A"], 1.1) == [b"A"]


def test_a_different_code_scans_at_once() -> None:
    d = Deduplicator(rearm=30.0, absent=0.5)
    assert d.feed([b"A"], 0.0) == [b"A"]
    assert d.feed([b"A", b"B"], 0.1) == [b"B"]


def test_scanner_turns_scripted_frames_into_one_scan_per_presentation() -> None:
    clock = FixedClock(mono=0.0)
    frames = [code_frame(TEXT)] * 3 + [code_frame(None)] * 2 + [code_frame(TEXT, invert=True)]
    scanner = Scanner(DecodingSource(ScriptedFrames(frames), make_decoder("zxing")), Deduplicator(10, 0.5), clock)
    scans = []
    for _ in frames:
        scans += scanner.poll(0.1) or []
        clock.mono += 0.2
    assert [s.payload for s in scans] == [TEXT.encode(), TEXT.encode()]
    assert scanner.poll(0.01) is None  # exhausted


def _decode_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gate", "decode", *args], capture_output=True, text=True, timeout=60)


def test_decode_command_prints_json_per_image_and_survives_corrupt_files(tmp_path: Path) -> None:
    good = tmp_path / "a.png"
    empty = tmp_path / "b.png"
    corrupt = tmp_path / "c.png"
    truncated = tmp_path / "d.jpg"
    text = tmp_path / "e.txt"
    Image.fromarray(code_frame(TEXT, angle=10)).save(good)
    Image.fromarray(code_frame(None)).save(empty)
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    Image.fromarray(code_frame(TEXT)).save(truncated, quality=90)
    truncated.write_bytes(truncated.read_bytes()[:200])
    text.write_text("not an image")
    r = _decode_cli("--json", *(str(p) for p in (good, empty, corrupt, truncated, text)))
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert r.returncode == 0 and len(lines) == 5
    assert lines[0]["codes"][0]["text"] == TEXT and base64.b64decode(lines[0]["codes"][0]["bytes_b64"]) == TEXT.encode()
    assert lines[0]["codes"][0]["format"] and lines[0]["ms"] >= 0
    assert lines[1]["codes"] == []
    assert all("error" in line and line["image"] for line in lines[2:])


def test_decode_command_exits_1_when_no_image_holds_a_code(tmp_path: Path) -> None:
    empty = tmp_path / "empty.png"
    Image.fromarray(code_frame(None)).save(empty)
    for backend in ("zxing", "zbar"):
        assert _decode_cli("--decoder", backend, str(empty)).returncode == 1


def test_image_source_skips_unreadable_files(tmp_path: Path) -> None:
    Image.fromarray(code_frame(TEXT)).save(tmp_path / "1.png")
    (tmp_path / "2.png").write_bytes(b"nope")
    Image.fromarray(code_frame(None)).save(tmp_path / "3.png")
    src = ImageSource([tmp_path])
    frames = [src.capture(0.01) for _ in range(3)]
    assert frames[0] is not None and frames[1] is not None and frames[2] is None and src.exhausted
