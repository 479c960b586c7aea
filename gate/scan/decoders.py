"""QR decoding of greyscale frames with zxing-cpp (default) or pyzbar, returning exact payload bytes."""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from gate.core.errors import ConfigError

log = logging.getLogger(__name__)
Frame = npt.NDArray[np.uint8]  # 2-D greyscale


@dataclass(frozen=True)
class DecodedCode:
    data: bytes
    format: str
    exact: bool  # False when the backend may have re-encoded the payload's bytes
    text: str  # the backend's reading as text (character set applied); gate decides on `data`


class Decoder(Protocol):
    name: str
    saw_symbol: bool  # the last decode() met a code, read or not: a frame worth decoding again

    def decode(self, frame: Frame) -> list[DecodedCode]: ...

    def decode_thoroughly(self, frame: Frame) -> list[DecodedCode]:
        """For a still image, seen once: every pass at once."""
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
    costs one pass), then downscaled when nothing was seen; the rotated pass, the flattened and enlarged
    views of the code and pyzbar are tried only on frames where a code was seen but not read."""

    name = "zxing"

    def __init__(self, formats: Sequence[str] = ("qr",), fallback: Decoder | None = None) -> None:
        import zxingcpp

        self._zx: Any = zxingcpp
        self._formats = [getattr(zxingcpp.BarcodeFormat, _ZXING_FORMATS[f]) for f in formats]
        self._fallback = fallback
        self.saw_symbol = False
        self.try_harder_seconds = TRY_HARDER_SECONDS

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

    def decode(self, frame: Frame) -> list[DecodedCode]:
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
        """For still images: every pass at once."""
        results = self._read(frame, True)
        return self._found(results) or self._try_harder(frame, results, still=True, downscaled=True)

    def _try_harder(self, frame: Frame, seen: list[Any], still: bool, downscaled: bool) -> list[DecodedCode]:
        """Only for a frame where a code was seen but not read: the downscaled pass (unless done); then,
        around each code seen, its picture flattened (a glare spot or a shadow subtracted) and enlarged 2x
        with bicubic interpolation (modules of 1-2 pixels); then pyzbar, on those regions in a stream (on a
        whole 640x480 frame it can take 30 ms, a frame's budget) and on the whole picture for a still image.
        In a stream no step starts after TRY_HARDER_SECONDS: the next frame brings another chance."""
        deadline = time.perf_counter() + self.try_harder_seconds
        found = [] if downscaled else self._found(self._read(frame, True))
        near = regions(frame, seen)[:MAX_REGIONS]
        steps: list[Callable[[], list[DecodedCode]]] = []
        for region in near:
            steps += [partial(self._read_view, flattened, region), partial(self._read_view, enlarged, region)]
        if self._fallback is not None:
            steps += [partial(self._fallback.decode, picture) for picture in ([frame] if still else near)]
        for step in steps:
            if found or (not still and time.perf_counter() > deadline):  # the next frame is due
                break
            found = step()
        return found

    def _read_view(self, look: Callable[[Frame], Frame], region: Frame) -> list[DecodedCode]:
        return self._found(self._read(look(region), True, downscale=False))


TRY_HARDER_SECONDS = 0.015  # a stream's try-harder starts no new step after this: a frame comes every 33 ms
MAX_REGIONS = 2  # codes seen but not read, tried harder per frame


def regions(frame: Frame, seen: list[Any]) -> list[Frame]:
    """The part of the frame around each code zxing located but could not read, with a margin of half its
    size (its corners may be misplaced), largest first."""
    out = []
    h, w = frame.shape
    for r in seen:
        if r.valid:
            continue
        p = r.position
        xs = [p.top_left.x, p.top_right.x, p.bottom_right.x, p.bottom_left.x]
        ys = [p.top_left.y, p.top_right.y, p.bottom_right.y, p.bottom_left.y]
        m = max(max(xs) - min(xs), max(ys) - min(ys)) // 2 + 8
        x0, x1, y0, y1 = max(0, min(xs) - m), min(w, max(xs) + m), max(0, min(ys) - m), min(h, max(ys) + m)
        if x1 - x0 >= 21 and y1 - y0 >= 21:
            out.append(frame[y0:y1, x0:x1])
    return sorted(out, key=lambda f: -f.size)


def flattened(region: Frame) -> Frame:
    """Uneven light taken out: the picture minus its blurred self, stretched to the full grey range."""
    from PIL import Image, ImageFilter

    a = region.astype(np.float32)
    background = np.asarray(Image.fromarray(region).filter(ImageFilter.GaussianBlur(8)), dtype=np.float32)
    d = a - background
    lo, hi = np.percentile(d[::3, ::3], (1, 99))
    out: Frame = np.clip((d - lo) * (255 / max(1.0, float(hi - lo))), 0, 255).astype(np.uint8)
    return out


def enlarged(region: Frame) -> Frame:
    """2x with bicubic interpolation: modules of one or two pixels get edges the binariser can find."""
    from PIL import Image

    h, w = region.shape
    if max(h, w) * 2 > 4096:
        return region
    return np.asarray(Image.fromarray(region).resize((w * 2, h * 2), Image.Resampling.BICUBIC))


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
