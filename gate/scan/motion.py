"""Presentation mode: a frame that shows the same empty scene as the last one decoded is not decoded again."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from gate.scan.decoders import Frame

ROW_STEP, COL_STEP = 8, 4  # every 4th pixel of every 8th row
BLOCK_ROWS, BLOCK_COLS = 4, 8  # samples in a block: each block covers 32 x 32 pixels of the frame
THRESHOLD = 14.0  # mean absolute difference (grey levels) in any one block that counts as a change
RECHECK_FRAMES = 15  # an unchanged scene is still decoded once every this many frames (twice a second)


class SceneWatch:
    """Commercial presentation-mode readers sleep until the scene moves; so does the lane. The reference is
    the last frame that was decoded and held nothing code-like (no code read, none seen but unread). A frame
    is decoded when any 32 x 32 block of it differs from the reference by more than THRESHOLD on average,
    which a code, a phone or a hand entering view always does and temporal sensor noise (sigma 6: 7-10) does
    not; and in any case every RECHECK_FRAMES-th frame. While a code is in view nothing is skipped. A check
    costs ~0.1 ms against ~0.6-1 ms for zxing's two-polarity pass over an empty 640 x 480 frame."""

    def __init__(self, threshold: float = THRESHOLD, recheck: int = RECHECK_FRAMES) -> None:
        self.threshold, self.recheck = threshold, recheck
        self._ref: npt.NDArray[np.int16] | None = None
        self._skipped = 0
        self.skipped_total = 0
        self._code_in_view = False
        self._code_read = False  # the last frame decoded had its code read: an empty frame next is it leaving
        self.in_view = False  # the frame just let through shows a presentation: worth the recovery passes

    @staticmethod
    def _sample(frame: Frame) -> npt.NDArray[np.int16]:
        return frame[::ROW_STEP, ::COL_STEP].astype(np.int16)

    def worth_decoding(self, frame: Frame) -> bool:
        """Whether to decode this frame; `in_view` then says whether it shows a presentation: the scene
        changed from the empty reference, or the last frame decoded held something code-like. A first
        frame or a periodic recheck of an unchanged scene is decoded without being in view."""
        ref = self._ref
        if ref is None:  # after a code: in view, unless it was read (the passenger is done; no recovery)
            return self._decode(self._code_in_view and not self._code_read)
        if ref.shape != self._sample_shape(frame):
            return self._decode(False)
        if self._changed(frame, ref):
            return self._decode(True)
        if self._skipped + 1 >= self.recheck:
            return self._decode(False)
        self._skipped += 1
        self.skipped_total += 1
        self.in_view = False
        return False

    def _changed(self, frame: Frame, ref: npt.NDArray[np.int16]) -> bool:
        diff = np.abs(self._sample(frame) - ref)
        h, w = diff.shape[0] - diff.shape[0] % BLOCK_ROWS, diff.shape[1] - diff.shape[1] % BLOCK_COLS
        if h == 0 or w == 0:
            return True
        sums = diff[:h, :w].reshape(h // BLOCK_ROWS, BLOCK_ROWS, w // BLOCK_COLS, BLOCK_COLS).sum(axis=(1, 3))
        return int(sums.max()) > self.threshold * BLOCK_ROWS * BLOCK_COLS

    def _decode(self, in_view: bool) -> bool:
        self._skipped = 0
        self.in_view = in_view
        return True

    @staticmethod
    def _sample_shape(frame: Frame) -> tuple[int, ...]:
        return (-(-frame.shape[0] // ROW_STEP), -(-frame.shape[1] // COL_STEP))

    def decoded(self, frame: Frame, saw_code: bool, read: bool = False) -> None:
        """After a decode: an empty result makes this frame the reference; a code (read or not) clears it.
        `read`: the code was read, so a following frame with nothing readable is the code leaving view, not a
        presentation still to be recovered (that would spend the recovery budget after every passenger)."""
        self._ref = None if saw_code else self._sample(frame)
        self._code_in_view = saw_code
        self._code_read = saw_code and read
