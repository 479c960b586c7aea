"""Synthetic camera frames holding QR codes: for the demo, the tests and the benchmarks."""

from __future__ import annotations

import io

import numpy as np
import segno
from PIL import Image, ImageFilter

from gate.scan.decoders import Frame


def qr_image(data: str | bytes, scale: int = 4, border: int = 4) -> Image.Image:
    qr = segno.make(data, error="m", micro=False)
    buf = io.BytesIO()
    qr.save(buf, kind="png", scale=scale, border=border)
    buf.seek(0)
    return Image.open(buf).convert("L")


def code_frame(
    data: str | bytes | None,
    size: tuple[int, int] = (640, 480),
    scale: int = 4,
    angle: float = 0.0,
    invert: bool = False,
    blur: float = 0.0,
    noise: float = 0.0,
    contrast: float = 1.0,
    background: int = 170,
    seed: int = 0,
    perspective: float = 0.0,
) -> Frame:
    """A greyscale frame of `size` (w, h) with the code (or none) centred and distorted as asked."""
    w, h = size
    canvas = Image.new("L", (w, h), background)
    if data is not None:
        code = qr_image(data, scale)
        if invert:  # a dark-mode phone screen: light modules on dark
            code = Image.eval(code, lambda v: 255 - v)
        if angle:
            code = code.rotate(angle, expand=True, fillcolor=0 if invert else 255)
        if perspective:
            cw, ch = code.size
            d = int(perspective * cw)
            coeffs = _perspective_coeffs(
                [(0, 0), (cw, 0), (cw, ch), (0, ch)], [(d, d // 2), (cw - d, 0), (cw, ch), (0, ch - d // 2)]
            )
            code = code.transform(code.size, Image.Transform.PERSPECTIVE, coeffs, fillcolor=0 if invert else 255)
        canvas.paste(code, ((w - code.size[0]) // 2, (h - code.size[1]) // 2))
    if blur:
        canvas = canvas.filter(ImageFilter.GaussianBlur(blur))
    arr = np.asarray(canvas, dtype=np.float64)
    if contrast != 1.0:
        arr = (arr - 128) * contrast + 128
    if noise:
        arr = arr + np.random.default_rng(seed).normal(0, noise, arr.shape)
    return np.clip(arr, 0, 255).astype(np.uint8)


def _perspective_coeffs(dst: list[tuple[int, int]], src: list[tuple[int, int]]) -> list[float]:
    rows = []
    for (x, y), (u, v) in zip(dst, src, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    a = np.array(rows, dtype=np.float64)
    b = np.array([c for p in src for c in p], dtype=np.float64)
    return [float(c) for c in np.linalg.solve(a, b)]
