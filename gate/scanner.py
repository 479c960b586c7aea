"""Code capture: sources of frames or lines, decoding, and one scan per presentation."""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError

from gate.core.errors import GateError
from gate.scan.decoders import Decoder, Frame
from gate.scan.motion import SceneWatch

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".pgm", ".ppm"}


@dataclass(frozen=True)
class Observation:
    """What a source saw at one instant: the payloads of one frame or one serial line."""

    payloads: tuple[bytes, ...]
    decode_ms: float | None = None  # None: nothing decoded here (a serial module hands over text)


@dataclass(frozen=True)
class Scan:
    """One presentation of a code: its payload and what decoding the frame it came from cost."""

    payload: bytes
    decode_ms: float | None


class CodeSource(Protocol):
    name: str

    def read(self, timeout: float) -> Observation | None:
        """Block at most `timeout` s; None means nothing arrived (or the source is exhausted)."""

    def close(self) -> None: ...


class FrameSource(Protocol):
    name: str

    def capture(self, timeout: float) -> Frame | None: ...

    def close(self) -> None: ...


class DecodingSource:
    """Turns a frame source into a code source by decoding each frame."""

    def __init__(self, frames: FrameSource, decoder: Decoder, watch: SceneWatch | None = None) -> None:
        self.frames, self.decoder = frames, decoder
        self.name = frames.name
        self.still = bool(getattr(frames, "still", False))
        self.watch = None if self.still else watch  # a stream's unchanged empty frames are not decoded

    def read(self, timeout: float) -> Observation | None:
        frame = self.frames.capture(timeout)
        if frame is None:
            return None
        if self.watch is not None and not self.watch.worth_decoding(frame):
            return Observation(())
        start = time.perf_counter()
        codes = self.decoder.decode_thoroughly(frame) if self.still else self.decoder.decode(frame)
        if not codes and self.watch is not None and self.watch.in_view:  # recovery only for a presentation
            codes = self.decoder.recover(frame)
        ms = (time.perf_counter() - start) * 1000
        if self.watch is not None:
            self.watch.decoded(frame, bool(codes) or self.decoder.saw_symbol, read=bool(codes))
        # Oversized payloads are passed on: the decision denies them as too_large, visibly.
        return Observation(tuple(c.data for c in codes), ms)

    def open(self) -> None:
        """Start the frame source where it has a start of its own (a camera): on the thread that reads it."""
        start = getattr(self.frames, "open", None)
        if callable(start):
            start()

    def close(self) -> None:
        self.frames.close()


class Deduplicator:
    """A code held in view scans once; again only after it left view or `rearm` seconds passed."""

    def __init__(self, rearm: float, absent: float) -> None:
        self.rearm, self.absent = rearm, absent
        self._seen: dict[bytes, tuple[float, float]] = {}  # payload -> (emitted at, last seen)

    def feed(self, payloads: Iterable[bytes], now: float) -> list[bytes]:
        fresh = []
        for p in dict.fromkeys(payloads):
            state = self._seen.get(p)
            if state is None or now - state[1] > self.absent or now - state[0] >= self.rearm:
                fresh.append(p)
                self._seen[p] = (now, now)
            else:
                self._seen[p] = (state[0], now)
        self._seen = {p: s for p, s in self._seen.items() if now - s[1] <= self.absent}
        return fresh


class Scanner:
    """A code source plus de-duplication: yields Scans."""

    def __init__(self, source: CodeSource, dedup: Deduplicator, mono: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.dedup = dedup
        self._mono = mono

    def poll(self, timeout: float) -> list[Scan] | None:
        """Scans from one observation; [] if it held nothing new, None if the source gave nothing."""
        obs = self.source.read(timeout)
        if obs is None:
            return None
        now = self._mono()
        return [Scan(p, obs.decode_ms) for p in self.dedup.feed(obs.payloads, now)]

    def open(self) -> None:
        """Start the source where it has a start of its own (a camera): DeviceError if it cannot start."""
        start = getattr(self.source, "open", None)
        if callable(start):
            start()

    def close(self) -> None:
        self.source.close()


MAX_IMAGE_PIXELS = 25_000_000  # the config's default: well above a 1920×1080 snapshot


def load_grey(path: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Frame:
    """Read an image file as a 2-D greyscale array; GateError names the file if it is not an image or is
    larger than `max_pixels` (checked from the header, before anything is decoded)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit is checked below
            im = Image.open(path)
        with im:
            w, h = im.size
            if w * h > max_pixels:
                raise GateError(
                    f"{path}: {w}×{h} pixels is over the limit of {max_pixels:,} (scanner.max_image_pixels)"
                )
            im.load()
            return np.asarray(im.convert("L"), dtype=np.uint8)
    except FileNotFoundError:
        raise GateError(f"{path}: no such file") from None
    except Image.DecompressionBombError as exc:
        raise GateError(f"{path}: too many pixels to decode safely ({str(exc)[:80]})") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
        raise GateError(f"{path}: not a readable image ({exc.__class__.__name__}: {str(exc)[:80]})") from None


def image_files(paths: Iterable[Path]) -> Iterator[Path]:
    for p in paths:
        if p.is_dir():
            yield from sorted(q for q in p.iterdir() if q.suffix.lower() in IMAGE_SUFFIXES)
        else:
            yield p


class ImageSource:
    """Frames from image files or folders, each shown once; unreadable files are logged and skipped."""

    name = "images"

    still = True  # each image is seen once: decode it thoroughly, not one pass per frame

    def __init__(self, paths: Iterable[Path], max_pixels: int = MAX_IMAGE_PIXELS) -> None:
        self._files = list(image_files(paths))
        self._next = 0
        self.max_pixels = max_pixels

    @property
    def exhausted(self) -> bool:
        return self._next >= len(self._files)

    def capture(self, timeout: float) -> Frame | None:
        while not self.exhausted:
            path = self._files[self._next]
            self._next += 1
            try:
                return load_grey(path, self.max_pixels)
            except GateError as exc:
                log.warning("skipping image: %s", exc)
        time.sleep(min(timeout, 0.05))
        return None

    def close(self) -> None:
        self._next = len(self._files)
