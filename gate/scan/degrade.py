"""What a lane's camera does to a code: defocus, motion, glare, low contrast, low light, noise, tilt, moire."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import segno

from gate.scan.enhance import Frame

W, H = 640, 480
MODULE = 3.0  # pixels per module at the reading distance: a version-6/7 code is ~125-135 px across
Img = npt.NDArray[np.float64]


def _modules(payload: str) -> npt.NDArray[np.float64]:
    """The code's modules, 1 = dark, with the four-module quiet zone."""
    qr = segno.make(payload, error="m", micro=False)
    return np.pad(np.array(qr.matrix, dtype=np.float64), 4)


def _homography(src: list[tuple[float, float]], dst: list[tuple[float, float]]) -> npt.NDArray[np.float64]:
    rows, rhs = [], []
    for (x, y), (u, v) in zip(src, dst, strict=True):
        rows += [[x, y, 1, 0, 0, 0, -u * x, -u * y], [0, 0, 0, x, y, 1, -v * x, -v * y]]
        rhs += [u, v]
    h = np.linalg.solve(np.array(rows), np.array(rhs))
    return np.append(h, 1.0).reshape(3, 3)


def _corners(n: int, rng: np.random.Generator, tilt_deg: float = 0.0) -> list[tuple[float, float]]:
    """Where the code's corners land in the frame: MODULE-pixel modules, a random place and a small
    rotation; `tilt_deg` turns the code about a vertical or horizontal axis, seen through a pinhole."""
    half = n * MODULE / 2
    rot = np.radians(rng.uniform(-8, 8))
    cx, cy = rng.uniform(half + 20, W - half - 20), rng.uniform(half + 20, H - half - 20)
    th = np.radians(tilt_deg) * rng.choice([-1, 1])
    about_x = bool(rng.integers(0, 2))
    f = 600.0
    out = []
    for x, y in ((-half, -half), (half, -half), (half, half), (-half, half)):
        x, y = x * np.cos(rot) - y * np.sin(rot), x * np.sin(rot) + y * np.cos(rot)
        if about_x:
            x3, y3, z3 = x, y * np.cos(th), f + y * np.sin(th)
        else:
            x3, y3, z3 = x * np.cos(th), y, f + x * np.sin(th)
        out.append((cx + f * x3 / z3, cy + f * y3 / z3))
    return out


def render(
    payload: str,
    rng: np.random.Generator,
    tilt_deg: float = 0.0,
    grid: Callable[[Img, Img], Img] | None = None,
    sub: int = 3,
) -> Img:
    """The code as the sensor sees it, darkness 0..1: each pixel averages sub x sub points (a sensor's
    area), each point mapped back into the code through a true projective map; `grid(u, v)` multiplies
    the code's light at screen coordinates (in modules), for a screen's pixel grid."""
    mods = _modules(payload)
    n = mods.shape[0]
    hmap = _homography(_corners(n, rng, tilt_deg), [(0, 0), (n, 0), (n, n), (0, n)])
    offsets = (np.arange(sub) + 0.5) / sub
    acc = np.zeros((H, W))
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    for oy in offsets:
        for ox in offsets:
            px, py = xx + ox, yy + oy
            d = hmap[2, 0] * px + hmap[2, 1] * py + hmap[2, 2]
            u = (hmap[0, 0] * px + hmap[0, 1] * py + hmap[0, 2]) / d
            v = (hmap[1, 0] * px + hmap[1, 1] * py + hmap[1, 2]) / d
            inside = (u >= 0) & (u < n) & (v >= 0) & (v < n)
            dark = np.where(inside, mods[np.clip(v, 0, n - 1).astype(int), np.clip(u, 0, n - 1).astype(int)], 0.0)
            light = 1 - dark
            if grid is not None:
                light = np.where(inside, light * grid(u, v), light)
            acc += 1 - light
    out: Img = acc / (sub * sub)
    return out


def _scene(dark: Img, rng: np.random.Generator, black: float = 25.0, white: float = 215.0) -> Img:
    """A code (paper or screen) in front of a plain background with a gentle light gradient."""
    yy, xx = np.mgrid[0:H, 0:W]
    a = rng.uniform(0, 2 * np.pi)
    light = 1 + 0.15 * ((xx - W / 2) * np.cos(a) + (yy - H / 2) * np.sin(a)) / W
    out: Img = (white - (white - black) * dark) * light
    return out


def _blur(img: Img, kx: Img, ky: Img) -> Img:
    """Separable convolution, edges repeated: shifted sums are cheap for kernels of a few pixels."""
    for axis, k in ((1, kx), (0, ky)):
        r = len(k) // 2
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, len(k) - 1 - r)
        p = np.pad(img, pad, mode="edge")
        n = img.shape[axis]
        acc = np.zeros_like(img)
        for i, w in enumerate(k):
            acc += w * np.take(p, np.arange(i, i + n), axis=axis)
        img = acc
    return img


def _gauss(sigma: float) -> Img:
    r = int(np.ceil(3 * sigma))
    k: Img = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * sigma**2))
    out: Img = k / k.sum()
    return out


def _out(img: Img, rng: np.random.Generator, noise: float = 2.5) -> Frame:
    return np.clip(np.round(img + rng.normal(0, noise, img.shape)), 0, 255).astype(np.uint8)


def defocus(p: str, rng: np.random.Generator, sigma: float) -> Frame:
    """The phone nearer than the fixed focus: a Gaussian blur of `sigma` pixels."""
    g = _gauss(sigma)
    return _out(_blur(_scene(render(p, rng), rng), g, g), rng)


def motion(p: str, rng: np.random.Generator, length: int) -> Frame:
    """A hand sweeping sideways during the exposure: a horizontal smear of `length` pixels."""
    return _out(_blur(_scene(render(p, rng), rng), np.full(length, 1 / length), np.ones(1)), rng)


def glare(p: str, rng: np.random.Generator, radius: float) -> Frame:
    """A lamp reflected in a glossy screen: a saturated disc of `radius` px over the code, with a halo."""
    dark = render(p, rng)
    img = _scene(dark, rng)
    ys, xs = np.nonzero(dark > 0.5)
    cy, cx = np.median(ys) + rng.uniform(-25, 25), np.median(xs) + rng.uniform(-25, 25)
    yy, xx = np.mgrid[0:H, 0:W]
    r = np.hypot(yy - cy, xx - cx)
    veil = np.where(r <= radius, 1.0, np.exp(-(((r - radius) / (0.35 * radius)) ** 2)))
    return _out(img + veil * 320, rng)


def low_contrast(p: str, rng: np.random.Generator, span: float) -> Frame:
    """A dim screen in a bright hall: dark and light modules only `span` grey levels apart."""
    mid = rng.uniform(100, 150)
    return _out(_scene(render(p, rng), rng, mid - span / 2, mid + span / 2), rng, noise=2.0)


def underexposed(p: str, rng: np.random.Generator, white: float) -> Frame:
    """A short exposure in a dark corner: light modules at `white` grey levels, with shot and read noise
    (a photon count of ~4 per grey level, then 2 levels of read noise) amplified by the gain."""
    img = _scene(render(p, rng), rng, 0.15 * white, white)
    electrons = rng.poisson(np.maximum(img, 0) * 4) / 4
    return _out(electrons, rng, noise=2.0)


def noisy(p: str, rng: np.random.Generator, sigma: float) -> Frame:
    """High sensor gain: Gaussian noise of `sigma` grey levels over a normal picture."""
    return _out(_scene(render(p, rng), rng), rng, noise=sigma)


def tilt(p: str, rng: np.random.Generator, degrees: float) -> Frame:
    """The phone turned `degrees` about a vertical or horizontal axis, seen by a wide lens."""
    return _out(_scene(render(p, rng, tilt_deg=degrees), rng), rng)


def moire(p: str, rng: np.random.Generator, depth: float) -> Frame:
    """A phone screen filmed close: its pixel grid (dark gaps `depth` deep, pitch near the camera's own)
    beats against the sensor's; the sensor samples points, not areas, so the fringes alias in."""
    pitch = rng.uniform(0.30, 0.36)  # screen pixels, in modules: one module is ~3 screen pixels
    a = rng.uniform(-0.2, 0.2)

    def grid(u: Img, v: Img) -> Img:
        su, sv = u * np.cos(a) + v * np.sin(a), -u * np.sin(a) + v * np.cos(a)
        gaps = ((su / pitch) % 1 > 0.7) | ((sv / pitch) % 1 > 0.7)
        return np.where(gaps, 1 - depth, 1.0)

    return _out(_scene(render(p, rng, grid=grid, sub=1), rng, 40, 200), rng, noise=3.0)


@dataclass(frozen=True)
class Level:
    cls: str  # the kind of degradation
    label: str  # its strength
    make: Callable[[str, np.random.Generator], Frame]


def _levels(cls: str, fn: Callable[[str, np.random.Generator, float], Frame], unit: str, *vals: float) -> list[Level]:
    def bind(v: float) -> Callable[[str, np.random.Generator], Frame]:
        return lambda p, rng: fn(p, rng, v)

    return [Level(cls, f"{v:g} {unit}".strip(), bind(v)) for v in vals]


LEVELS: list[Level] = [
    *_levels("defocus", defocus, "px sigma", 1.4, 1.55),
    *_levels("motion", lambda p, r, v: motion(p, r, int(v)), "px", 7, 9),
    *_levels("glare", glare, "px radius", 16, 18),
    *_levels("low contrast", low_contrast, "levels", 16, 12),
    *_levels("underexposed", underexposed, "white level", 20, 15),
    *_levels("noise", noisy, "sigma", 40, 50),
    *_levels("tilt", tilt, "deg", 55, 65),
    *_levels("moire", moire, "depth", 0.3, 0.4),
]
CLASSES: dict[str, Callable[[str, np.random.Generator], Frame]] = {f"{lv.cls} {lv.label}": lv.make for lv in LEVELS}
