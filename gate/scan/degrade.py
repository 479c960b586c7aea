"""What a lane's camera does to a code: defocus, motion blur, glare, screen moire, tilt and small modules.
Each class turns a real payload into a 640 x 480 greyscale frame, for bench/decode.py and the tests."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from gate.scan.decoders import Frame
from gate.scan.framegen import qr_image

W, H = 640, 480


def _place(code: Image.Image, rng: np.random.Generator, background: int = 150) -> np.ndarray:
    canvas = Image.new("L", (W, H), background)
    cw, ch = code.size
    x = int(rng.integers(0, max(1, W - cw))) if cw < W else 0
    y = int(rng.integers(0, max(1, H - ch))) if ch < H else 0
    canvas.paste(code, (x, y))
    return np.asarray(canvas, dtype=np.float64)


def _convolve(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Same-size convolution by FFT, edges padded with the image's edge values."""
    kh, kw = kernel.shape
    padded = np.pad(img, ((kh, kh), (kw, kw)), mode="edge")
    shape = padded.shape
    out = np.fft.irfft2(np.fft.rfft2(padded) * np.fft.rfft2(kernel / kernel.sum(), shape), shape)
    return out[kh + kh // 2 : kh + kh // 2 + img.shape[0], kw + kw // 2 : kw + kw // 2 + img.shape[1]]


def _finish(img: np.ndarray, rng: np.random.Generator, sigma: float = 3.0) -> Frame:
    return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


def defocus(payload: str, rng: np.random.Generator, radius: float) -> Frame:
    """A phone nearer than the lens's focus: a disc blur of `radius` pixels (4-pixel modules)."""
    r = int(np.ceil(radius))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return _finish(_convolve(_place(qr_image(payload, 4), rng), (xx**2 + yy**2 <= radius**2).astype(float)), rng)


def motion(payload: str, rng: np.random.Generator, length: int = 9) -> Frame:
    """A hand moving during the exposure: a line blur of `length` pixels at a random angle."""
    angle = rng.uniform(0, np.pi)
    kernel = np.zeros((length, length))
    c = (length - 1) / 2
    for t in np.linspace(-c, c, 4 * length):
        kernel[round(float(c + t * np.sin(angle))), round(float(c + t * np.cos(angle)))] = 1
    return _finish(_convolve(_place(qr_image(payload, 4), rng), kernel), rng)


def glare(payload: str, rng: np.random.Generator) -> Frame:
    """Daylight reflected off a glossy screen: a bright spot, saturated at its heart, over part of the code."""
    img = _place(qr_image(payload, 4), rng) * 0.8 + 20
    code_y, code_x = np.nonzero(img < 60)
    cy, cx = int(np.median(code_y)), int(np.median(code_x))
    cy, cx = cy + int(rng.integers(-30, 31)), cx + int(rng.integers(-30, 31))
    yy, xx = np.mgrid[0:H, 0:W]
    spot = 300 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(25, 35) ** 2))
    return _finish(img + spot, rng)


def moire(payload: str, rng: np.random.Generator) -> Frame:
    """A dim screen seen through its pixel grid: low contrast, interference fringes and noise."""
    img = _place(qr_image(payload, 4), rng)
    yy, xx = np.mgrid[0:H, 0:W]
    f, a = rng.uniform(0.25, 0.45), rng.uniform(0, np.pi)
    fringes = 1 + 0.35 * np.sin(f * (xx * np.cos(a) + yy * np.sin(a)))
    low = (img - 128) * 0.12 * fringes + 110
    return _finish(low, rng, sigma=5.0)


def tilt(payload: str, rng: np.random.Generator, degrees: float = 30.0) -> Frame:
    """The phone turned `degrees` about a vertical or horizontal axis, seen from 15 cm (perspective)."""
    code = qr_image(payload, 5)
    w, h = code.size
    th = np.radians(degrees) * rng.choice([-1, 1])
    f, d = 700.0, 700.0  # focal length and distance in pixels: a wide lens, the code filling a third
    corners = np.array([[-w / 2, -h / 2], [w / 2, -h / 2], [w / 2, h / 2], [-w / 2, h / 2]])
    about_x = bool(rng.integers(0, 2))
    out = []
    for x, y in corners:
        if about_x:
            y3, z3 = y * np.cos(th), d + y * np.sin(th)
            out.append((f * x / z3 + W / 2, f * y3 / z3 + H / 2))
        else:
            x3, z3 = x * np.cos(th), d + x * np.sin(th)
            out.append((f * x3 / z3 + W / 2, f * y / z3 + H / 2))
    src = [(0, 0), (w, 0), (w, h), (0, h)]
    rows = []
    for (u, v), (x, y) in zip(src, out, strict=True):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    coeffs = np.linalg.solve(np.array(rows), np.array([c for p in src for c in p], dtype=float))
    warped = code.transform((W, H), Image.Transform.PERSPECTIVE, [float(c) for c in coeffs], fillcolor=150)
    return _finish(np.asarray(warped, dtype=np.float64), rng)


def small(payload: str, rng: np.random.Generator, module: float = 1.3) -> Frame:
    """A code far from the lens, or a small screen: `module` pixels per module, resampled."""
    code = qr_image(payload, 1)
    size = (round(code.size[0] * module), round(code.size[1] * module))
    return _finish(_place(code.resize(size, Image.Resampling.BILINEAR), rng), rng)


Degrade = Callable[[str, np.random.Generator], Frame]
CLASSES: dict[str, Degrade] = {  # modules are 4 pixels wide unless the class says otherwise
    "defocus r=2 px": lambda p, rng: defocus(p, rng, 2.0),
    "defocus r=3 px": lambda p, rng: defocus(p, rng, 3.0),
    "defocus r=4 px": lambda p, rng: defocus(p, rng, 4.0),
    "motion 5 px": lambda p, rng: motion(p, rng, 5),
    "motion 7 px": lambda p, rng: motion(p, rng, 7),
    "motion 9 px": lambda p, rng: motion(p, rng, 9),
    "glare spot": glare,
    "moire, low contrast": moire,
    "tilt 30°": tilt,
    "small modules 1.3 px": small,
}
