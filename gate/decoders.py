"""QR decoding of greyscale frames with zxing-cpp (default) or pyzbar, returning exact payload bytes."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from gate.errors import ConfigError

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
    not the frame, so a dark-mode screen costs no extra frame), at full resolution only: the downscaled
    pass, the 2x upscale and pyzbar are tried only on frames where a code was seen but not read."""

    name = "zxing"

    def __init__(self, formats: Sequence[str] = ("qr",), fallback: Decoder | None = None) -> None:
        import zxingcpp

        self._zx: Any = zxingcpp
        self._formats = [getattr(zxingcpp.BarcodeFormat, _ZXING_FORMATS[f]) for f in formats]
        self._fallback = fallback
        self.saw_symbol = False

    def _read(self, frame: Frame, invert: bool, downscale: bool = True) -> list[Any]:
        try:
            return list(
                self._zx.read_barcodes(
                    frame,
                    formats=self._formats,
                    try_rotate=False,
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
        self.saw_symbol = bool(results)
        found = self._found(results)
        if found or not results:
            return found
        return self._try_harder(frame)

    def decode_thoroughly(self, frame: Frame) -> list[DecodedCode]:
        """For still images: every pass at once."""
        return self._found(self._read(frame, True)) or self._try_harder(frame)

    def _try_harder(self, frame: Frame) -> list[DecodedCode]:
        found = self._found(self._read(frame, True))
        if not found and frame.shape[0] * frame.shape[1] <= 1280 * 720 and max(frame.shape) * 2 <= 65535:
            big = np.repeat(np.repeat(frame, 2, axis=0), 2, axis=1)
            found = self._found(self._read(big, True, downscale=False))
        if not found and self._fallback is not None:
            found = self._fallback.decode(frame)
        return found


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
