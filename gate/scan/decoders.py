"""QR decoding of greyscale frames with zxing-cpp (default) or pyzbar, returning exact payload bytes."""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from gate.core.errors import ConfigError
from gate.scan.decoded import DecodedCode
from gate.scan.recover import Recovery, crop

log = logging.getLogger(__name__)
Frame = npt.NDArray[np.uint8]  # 2-D greyscale


class Decoder(Protocol):
    name: str
    saw_symbol: bool  # the last decode() met a code, read or not: a frame worth decoding again

    def decode(self, frame: Frame) -> list[DecodedCode]: ...

    def decode_thoroughly(self, frame: Frame) -> list[DecodedCode]:
        """For a still image, seen once: every pass at once."""
        ...

    def recover(self, frame: Frame) -> list[DecodedCode]:
        """After decode() read nothing on a frame with a presentation in view: the recovery passes
        (gate/scan/recover.py) on the code's likely region, within the frame's budget."""
        ...


_ZXING_FORMATS = {
    "qr": "QRCode",
    "micro_qr": "MicroQRCode",
    "datamatrix": "DataMatrix",
    "aztec": "Aztec",
    "pdf417": "PDF417",
}
_ZBAR_FORMATS = {"qr": "QRCODE", "pdf417": "PDF417"}


class ZxingDecoder:
    """zxing-cpp: exact bytes. Every frame is read in both polarities (zxing inverts the binarised image,
    not the frame, so a dark-mode screen costs no extra frame), at full resolution first (a readable code
    costs one pass), then downscaled when nothing was seen. Only on a frame where a code was seen but not
    read, or (recover()) one with a presentation in view, do the recovery passes run, within a budget."""

    name = "zxing"

    def __init__(self, formats: Sequence[str] = ("qr",), fallback: Decoder | None = None) -> None:
        import zxingcpp

        self._zx: Any = zxingcpp
        self._formats = [getattr(zxingcpp.BarcodeFormat, _ZXING_FORMATS[f]) for f in formats]
        self._fallback = fallback
        self.saw_symbol = False
        self.try_harder_seconds = TRY_HARDER_SECONDS
        self.recover_seconds = RECOVER_SECONDS
        self.recovery = Recovery(
            self._read_view, fallback=fallback.decode if fallback is not None else None, clock=BUDGET_CLOCK
        )
        self._started = 0.0

    def _read(self, frame: Frame, invert: bool, downscale: bool = True, rotate: bool = False) -> list[Any]:
        try:
            return list(
                self._zx.read_barcodes(
                    frame,
                    formats=self._formats,
                    try_rotate=rotate,
                    try_downscale=downscale,
                    try_invert=invert,
                    return_errors=True,
                )
            )
        except ValueError as exc:  # a frame zxing will not take (over 65535 wide, say): no code in it
            log.debug("zxing refused a %s frame: %s", frame.shape, exc)
            return []

    def _found(self, results: list[Any]) -> list[DecodedCode]:
        return [DecodedCode(bytes(r.bytes), str(r.format), True, str(r.text)) for r in results if r.valid]

    def _read_view(self, view: Frame) -> list[DecodedCode]:
        return self._found(self._read(view, True, downscale=False))

    def decode(self, frame: Frame) -> list[DecodedCode]:
        self._started = BUDGET_CLOCK()
        results = self._read(frame, invert=True, downscale=False)
        downscaled = not results
        if downscaled:  # nothing at full resolution: zxing's downscaled views (noise and moire average out)
            results = self._read(frame, invert=True, downscale=True)
        self.saw_symbol = bool(results)
        found = self._found(results)
        if found or not results:
            return found
        return self._try_harder(frame, results, still=False, downscaled=downscaled)

    def decode_thoroughly(self, frame: Frame) -> list[DecodedCode]:
        """For still images: every pass at once, on every code seen and on the busiest part of the picture."""
        results = self._read(frame, True)
        found = self._found(results) or self._try_harder(frame, results, still=True, downscaled=True)
        return found or self.recovery.run([crop(frame)], None)

    def recover(self, frame: Frame) -> list[DecodedCode]:
        """The recovery passes on the busiest window of the frame decode() just missed, until one reads or
        recover_seconds from the start of decode() have passed (try-harder's time counts against it; one
        view is always read)."""
        return self.recovery.run([crop(frame)], self._started + self.recover_seconds)

    def _try_harder(self, frame: Frame, seen: list[Any], still: bool, downscaled: bool) -> list[DecodedCode]:
        """Only for a frame where a code was seen but not read: the downscaled pass (unless done), then the
        recovery passes around each code seen (pyzbar last: on a whole 640x480 frame it can take 30 ms, a
        frame's budget), and pyzbar on the whole picture for a still image. In a stream no step starts
        after try_harder_seconds: the next frame brings another chance."""
        deadline = None if still else self._started + self.try_harder_seconds
        found = [] if downscaled else self._found(self._read(frame, True))
        near = regions(frame, seen)[:MAX_REGIONS]
        found = found or self.recovery.run(near, deadline)
        if not found and still and self._fallback is not None:
            found = self._fallback.decode(frame)
        return found


TRY_HARDER_SECONDS = 0.015  # a stream's try-harder starts no new step after this: a frame comes every 33 ms
RECOVER_SECONDS = 0.020  # the recovery passes, from the frame's first read: they run only during a presentation
# The budgets are the decoding thread's CPU time: on a gate it is the wall time (the lane has a core and
# the background threads yield to it), and a neighbour's load on a shared machine takes no reads away.
BUDGET_CLOCK = time.thread_time
MAX_REGIONS = 2  # codes seen but not read, tried harder per frame


def regions(frame: Frame, seen: list[Any]) -> list[Frame]:
    """The part of the frame around each code zxing located but could not read, with a margin of a quarter
    of its size (its corners may be misplaced; a region much larger than the code only slows the passes),
    largest first."""
    out = []
    h, w = frame.shape
    for r in seen:
        if r.valid:
            continue
        p = r.position
        xs = [p.top_left.x, p.top_right.x, p.bottom_right.x, p.bottom_left.x]
        ys = [p.top_left.y, p.top_right.y, p.bottom_right.y, p.bottom_left.y]
        m = max(max(xs) - min(xs), max(ys) - min(ys)) // 4 + 8
        x0 = max(0, min(xs) - m)
        x1 = min(w, max(xs) + m)
        y0 = max(0, min(ys) - m)
        y1 = min(h, max(ys) + m)
        if x1 - x0 >= 21 and y1 - y0 >= 21:
            out.append(frame[y0:y1, x0:x1])
    return sorted(out, key=lambda f: -f.size)


class ZbarDecoder:
    """pyzbar: zbar re-encodes QR byte-mode payloads to UTF-8 from a guessed charset, so only
    ASCII payloads (every gate code is ASCII) are guaranteed exact; others are flagged exact=False."""

    name = "zbar"

    def __init__(self, formats: Sequence[str] = ("qr",)) -> None:
        from pyzbar import pyzbar

        self._zbar: Any = pyzbar
        unsupported = [f for f in formats if f not in _ZBAR_FORMATS]
        if unsupported:
            raise ConfigError(f"scanner.formats: zbar cannot read {', '.join(unsupported)}")
        self._symbols = [getattr(pyzbar.ZBarSymbol, _ZBAR_FORMATS[f]) for f in formats]
        self.saw_symbol = False  # zbar reports only what it read

    def decode(self, frame: Frame) -> list[DecodedCode]:
        found = self._zbar.decode(frame, symbols=self._symbols)
        if not found:
            found = self._zbar.decode(255 - frame, symbols=self._symbols)
        self.saw_symbol = bool(found)
        return [
            DecodedCode(bytes(r.data), str(r.type), r.data.isascii(), r.data.decode("utf-8", "replace")) for r in found
        ]

    def decode_thoroughly(self, frame: Frame) -> list[DecodedCode]:
        return self.decode(frame)

    def recover(self, frame: Frame) -> list[DecodedCode]:
        """zbar reports no positions to recover around, and its own decode takes a frame's budget."""
        return []


def available(name: str) -> bool:
    module = {"zxing": "zxingcpp", "zbar": "pyzbar.pyzbar"}[name]
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def make_decoder(name: str = "auto", formats: Sequence[str] = ("qr",)) -> ZxingDecoder | ZbarDecoder:
    """`auto`: zxing-cpp if importable, else pyzbar. zxing gets pyzbar as its try-harder fallback."""
    if name == "auto":
        name = "zxing" if available("zxing") else "zbar"
    try:
        if name == "zxing":
            fallback = None
            if available("zbar") and all(f in _ZBAR_FORMATS for f in formats):
                try:
                    fallback = ZbarDecoder(formats)
                except ImportError:
                    log.info("pyzbar present but libzbar is missing: no fallback decoder")
            return ZxingDecoder(formats, fallback)
        if name == "zbar":
            return ZbarDecoder(formats)
    except ImportError as exc:
        raise ConfigError(f"scanner.decoder: {name} is not usable here: {exc}") from None
    raise ConfigError(f"scanner.decoder: unknown decoder {name!r}")
