"""Recovery passes for a frame the first read missed: where the code is, and which views of it to read, in order."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from gate.contracts import CODE_PREFIX
from gate.scan import enhance
from gate.scan.decoded import DecodedCode
from gate.scan.enhance import Frame

Reader = Callable[[Frame], list[DecodedCode]]

MAX_SIDE = 400  # px: larger regions are shrunk before the passes
REGION = 224  # px: a code of 125-150 px (3-px modules) with a margin for a misplaced centre; FFT-friendly
_GATE_CODE = re.compile(rb"\A" + re.escape(CODE_PREFIX.encode()) + rb"[0-9A-Z $%*+\-./:]{20,4000}\Z")


def gate_shaped(data: bytes) -> bool:
    """A read from an enhanced view is kept only when it has a gate code's shape (prefix and base45
    alphabet): a sharpened or thresholded picture can occasionally yield a short false QR read, and a
    passenger must never see a red light for a read that was never theirs."""
    return _GATE_CODE.match(data) is not None


@dataclass(frozen=True)
class Pass:
    name: str
    view: Callable[[Frame], Frame | None]


# Chosen on bench/degraded.py (docs/performance.md): each pass reads frames no earlier one reads, in order
# of frames recovered per millisecond; pyzbar (the fallback) runs last. Measured and left out: a deglared
# view (no frame the others miss), a grey closing against screen grids (none, and false short reads).
PASSES: tuple[Pass, ...] = (
    Pass("unsmeared", enhance.unsmeared),  # ~0.7 ms when it finds no sideways smear and stops there
    Pass("binarised", enhance.binarised),
    Pass("refocused", enhance.refocused),
    Pass("enlarged", enhance.enlarged),
    Pass("equalised", enhance.equalised),
    Pass("denoised+equalised", enhance.denoised_equalised),
)


def busiest_window(frame: Frame, size: int = REGION) -> tuple[int, int]:
    """The top-left corner of the size x size window with the most edge energy above the frame's typical
    level: a code is the densest texture a lane's camera sees, and noise is the same everywhere."""
    h, w = frame.shape
    size_y, size_x = min(size, h), min(size, w)
    b = 8  # blocks of 8 x 8 pixels, measured on every other pixel (4 x 4 samples)
    if h < b or w < b:  # a picture smaller than one block is its own window
        return 0, 0
    a = frame[: h // b * b : 2, : w // b * b : 2].astype(np.int16)
    energy = np.abs(np.diff(a, axis=1, append=a[:, -1:])) + np.abs(np.diff(a, axis=0, append=a[-1:, :]))
    blocks = energy.reshape(h // b, b // 2, w // b, b // 2).mean(axis=(1, 3), dtype=np.float32)
    blocks = np.maximum(blocks - np.median(blocks), 0)
    k = max(1, min(16, blocks.shape[0], blocks.shape[1]))  # a 128-px window: the code's own size
    c = np.pad(blocks.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]
    y, x = np.unravel_index(int(np.argmax(sums)), sums.shape)
    cy, cx = (y + k / 2) * b, (x + k / 2) * b
    return int(np.clip(cy - size_y / 2, 0, h - size_y)), int(np.clip(cx - size_x / 2, 0, w - size_x))


def fitted(region: Frame, largest: int = MAX_SIDE) -> Frame:
    """A region over `largest` px shrunk by a whole factor (block means): a code that large has modules of
    many pixels, and a pass's cost (an FFT, a 2x enlargement) grows with the area."""
    f = -(-max(region.shape) // largest)
    if f <= 1:
        return region
    h, w = region.shape[0] // f * f, region.shape[1] // f * f
    small: Frame = region[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3)).astype(np.uint8)
    return small


def crop(frame: Frame, size: int = REGION) -> Frame:
    y, x = busiest_window(frame, size)
    return frame[y : y + size, x : x + size]


class Recovery:
    """Runs the passes on regions of a frame until one reads or the deadline passes; a pass that starts
    is finished (each costs a few ms), none starts after the deadline once one view has been read, so
    that a frame whose first read was slow (a noisy one) still gets one chance."""

    def __init__(
        self,
        read: Reader,
        passes: Sequence[Pass] = PASSES,
        fallback: Reader | None = None,
        clock: Callable[[], float] = time.thread_time,
    ) -> None:
        self._read = read
        self.passes = tuple(passes)
        self._fallback = fallback
        self._clock = clock
        self.last_pass = ""  # which pass read the last recovered frame (for the bench)

    def run(self, regions: Sequence[Frame], deadline: float | None) -> list[DecodedCode]:
        """`deadline` on the clock given (the thread's CPU time by default); None: every pass."""
        regions = [fitted(r) for r in regions]
        steps = [(p.name, p.view, r) for r in regions for p in self.passes]
        if self._fallback is not None:
            steps += [("pyzbar", _same, r) for r in regions]
        read_any = False
        for name, view, region in steps:
            if read_any and deadline is not None and self._clock() > deadline:
                break
            picture = view(region)
            if picture is None:  # the pass found nothing to do here (no smear): it does not count as tried
                continue
            reader = self._fallback if name == "pyzbar" and self._fallback is not None else self._read
            found = [c for c in reader(picture) if c.exact and gate_shaped(c.data)]
            read_any = True
            if found:
                self.last_pass = name
                return found
        return []


def _same(region: Frame) -> Frame:
    return region
