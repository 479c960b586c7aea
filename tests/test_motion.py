"""Presentation mode: unchanged empty frames are not decoded, and no code's first frame is ever skipped."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gate.config.model import parse_config
from gate.scan.decoders import DecodedCode, Frame, ZxingDecoder
from gate.scan.framegen import code_frame
from gate.scan.motion import RECHECK_FRAMES, SceneWatch
from gate.scanner import DecodingSource
from gate.testing import ScriptedFrames

TEXT = "GT1:8C2*1Z.Q8T$HU2BT8 7HK5-9ZJPU:%0CS1K3B.:D4+T"


def lane(seed: int, sigma: float = 6.0, level: int = 140, flat: bool = False) -> Frame:
    """An empty lane: a smooth texture (or a flat grey) with fresh sensor noise in every frame."""
    texture = np.kron(np.random.default_rng(7).integers(level - 45, level + 45, (31, 41)), np.ones((16, 16)))
    base = np.full((480, 640), float(level)) if flat else texture[:480, :640]
    noise = np.random.default_rng(seed).normal(0, sigma, (480, 640))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def with_code(seed: int, side: int = 200, flat: bool = False, level: int = 140, **look: float) -> Frame:
    """A phone screen showing the code (quiet zone included) held up in the middle of the lane."""
    frame = lane(seed, flat=flat, level=level)
    y, x = (480 - side) // 2, (640 - side) // 2
    frame[y : y + side, x : x + side] = code_frame(TEXT, size=(side, side), **look)  # type: ignore[arg-type]
    return frame


class Counting(ZxingDecoder):
    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def decode(self, frame: Frame) -> list[DecodedCode]:
        self.calls += 1
        return super().decode(frame)


def source(frames: list[Frame]) -> tuple[DecodingSource, Counting, SceneWatch]:
    dec, watch = Counting(), SceneWatch()
    return DecodingSource(ScriptedFrames(frames), dec, watch), dec, watch


def test_an_empty_lane_is_decoded_only_on_its_first_frame_and_each_recheck() -> None:
    n = 3 * RECHECK_FRAMES
    src, dec, watch = source([lane(i) for i in range(n)])
    assert all(src.read(0.1) is not None for _ in range(n))
    assert dec.calls == 3  # frames 0, 15 and 30
    assert watch.skipped_total == n - 3


def test_a_code_is_decoded_on_the_first_frame_it_appears_in() -> None:
    frames = [lane(i) for i in range(5)] + [with_code(99)]
    src, dec, _ = source(frames)
    seen = [src.read(0.1) for _ in frames]
    assert dec.calls == 2 and [o.payloads for o in seen if o and o.payloads] == [(TEXT.encode(),)]


def test_a_small_low_contrast_code_on_a_matching_grey_still_counts_as_a_change() -> None:
    """The hardest change to see: 2-pixel modules, a quarter of the contrast, on a background of the code's
    own mean brightness. It changes no block's mean, but every block's pixels."""
    code = code_frame(TEXT, size=(80, 80), scale=2, contrast=0.25)
    level = int(code.mean())
    frames = [lane(i, flat=True, level=level) for i in range(3)]
    frames.append(with_code(50, side=80, flat=True, level=level, scale=2, contrast=0.25))
    src, dec, watch = source(frames)
    for _ in frames:
        src.read(0.1)
    assert dec.calls == 2 and watch.skipped_total == 2


def test_while_a_code_is_in_view_every_frame_is_decoded_even_when_none_reads() -> None:
    unreadable = with_code(5, blur=2.5)  # zxing finds the code but cannot read it (checksum errors)
    assert ZxingDecoder().decode(unreadable) == []
    frames = [lane(0), unreadable, unreadable, unreadable, with_code(6)]
    src, dec, _ = source(frames)
    seen = [src.read(0.1) for _ in frames]
    assert dec.calls == 5
    assert seen[-1] is not None and seen[-1].payloads == (TEXT.encode(),)


def test_a_lighting_change_is_decoded_once_then_becomes_the_reference() -> None:
    frames = [lane(0), lane(1), lane(2, level=120), lane(3, level=120), lane(4, level=120)]
    src, dec, _ = source(frames)
    for _ in frames:
        src.read(0.1)
    assert dec.calls == 2


def test_still_images_are_never_skipped_and_the_watch_can_be_turned_off() -> None:
    class Still(ScriptedFrames):
        still = True

    src = DecodingSource(Still([lane(0)] * 3), Counting(), SceneWatch())
    assert src.watch is None
    cfg = parse_config(
        {"gate": {"id": "a"}, "venue": {"id": "v"}, "scanner": {"camera": {"skip_unchanged_frames": False}}}
    )
    assert cfg.scanner.camera.skip_unchanged_frames is False


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    sigma=st.floats(0, 8),
    x=st.integers(0, 640 - 160),
    y=st.integers(0, 480 - 160),
    module=st.sampled_from([2, 3, 4]),
)
def test_wherever_a_code_appears_it_is_decoded_at_once(seed: int, sigma: float, x: int, y: int, module: int) -> None:
    """Property: after any run of empty frames, the first frame with a code anywhere in view is decoded."""
    code = code_frame(TEXT, size=(160, 160), scale=module)
    shown = lane(seed + 1, sigma)
    shown[y : y + 160, x : x + 160] = code
    frames = [lane(seed, sigma), lane(seed + 2, sigma), shown]
    src, dec, _ = source(frames)
    for _ in frames:
        src.read(0.1)
    assert dec.calls == 2  # the first empty frame, then the code's frame
