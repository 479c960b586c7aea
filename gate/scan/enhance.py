"""Views of a code's region that a binariser reads better: deblurred, equalised, denoised, thresholded, enlarged."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageFilter

Frame = npt.NDArray[np.uint8]  # 2-D greyscale, as gate.scan.decoders
F32 = npt.NDArray[np.float32]


def stretch(a: npt.NDArray[np.floating[Any]] | Frame, lo_pct: float = 1.0, hi_pct: float = 99.0) -> Frame:
    """To the full grey range, the extreme 1 % on each side clipped."""
    lo, hi = np.percentile(a[::3, ::3], (lo_pct, hi_pct))
    out: Frame = np.clip((a - lo) * (255.0 / max(1e-3, float(hi - lo))), 0, 255).astype(np.uint8)
    return out


def smoothed(region: Frame, sigma: float = 1.0) -> Frame:
    return np.asarray(Image.fromarray(region).filter(ImageFilter.GaussianBlur(sigma)))


def equalised(region: Frame, sigma: float = 6.0) -> Frame:
    """Local contrast equalisation (CLAHE's aim, in two blurs): each pixel minus its neighbourhood's mean,
    divided by the neighbourhood's mean absolute deviation. Lifts a code in a dim, flat or veiled area."""
    a = region.astype(np.float32)
    mean = np.asarray(Image.fromarray(region).filter(ImageFilter.GaussianBlur(sigma)), dtype=np.float32)
    dev = np.abs(a - mean)
    scale = 255.0 / max(1.0, float(dev.max()))
    spread = np.asarray(
        Image.fromarray((dev * scale).astype(np.uint8)).filter(ImageFilter.GaussianBlur(sigma)), dtype=np.float32
    )
    return stretch((a - mean) / (spread / scale + 2.0))


def denoised_equalised(region: Frame) -> Frame:
    """Sensor noise averaged over a module first (sigma 1 px on 3-px modules), then equalised."""
    return equalised(smoothed(region, 1.0))


def binarised(region: Frame) -> Frame:
    """One global threshold (Otsu's) on a lightly smoothed picture: a dim or gridded screen that zxing's
    local binariser breaks into fragments reads as clean black and white."""
    s = smoothed(region, 1.0)
    hist = np.bincount(s.ravel(), minlength=256).astype(np.float64)
    p = hist / hist.sum()
    omega, mu = np.cumsum(p), np.cumsum(p * np.arange(256))
    between = (mu[-1] * omega - mu) ** 2 / (omega * (1 - omega) + 1e-12)
    out: Frame = np.where(s > int(np.argmax(between)), 255, 0).astype(np.uint8)
    return out


def enlarged(region: Frame) -> Frame:
    """2x with bicubic interpolation: modules of one or two pixels get edges the binariser can find."""
    h, w = region.shape
    return np.asarray(Image.fromarray(region).resize((w * 2, h * 2), Image.Resampling.BICUBIC))


@lru_cache(maxsize=16)  # one per FFT size and blur: region sizes are rounded up to a few fast ones
def _gauss_otf(shape: tuple[int, int], sigma: float) -> F32:
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    return np.exp(-2 * np.pi**2 * sigma**2 * (fx**2 + fy**2)).astype(np.float32)


@lru_cache(maxsize=16)  # one per FFT size and blur: region sizes are rounded up to a few fast ones
def _box_otf(shape: tuple[int, int], length: int) -> npt.NDArray[np.complex64]:
    fx = np.fft.rfftfreq(shape[1])[None, :]
    taps = np.arange(length) - (length - 1) / 2
    otf = np.exp(-2j * np.pi * fx[..., None] * taps).mean(axis=-1)
    return np.broadcast_to(otf, (shape[0], otf.shape[1])).astype(np.complex64)


def fast_size(n: int) -> int:
    """The smallest length >= n with no prime factor above 5: an FFT of 309 points (3 x 103) costs ten
    times one of 320, and a code's region can have any size."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def _wiener(region: Frame, otf_for: Callable[[tuple[int, int]], F32 | npt.NDArray[np.complex64]], k: float) -> Frame:
    """Wiener deconvolution; the region's edges mirrored (at least 8 px, up to an FFT-friendly size) so that
    the FFT's wrap-around does not ring across the code."""
    h, w = region.shape
    shape = (fast_size(h + 16), fast_size(w + 16))
    a = region.astype(np.float32)
    a = np.pad(a - a.mean(), ((8, shape[0] - h - 8), (8, shape[1] - w - 8)), mode="symmetric")
    otf = otf_for(shape)
    # rows then columns: numpy's rfft2 on float32 is several times slower than its two 1-D transforms
    spectrum = np.fft.fft(np.fft.rfft(a, axis=1), axis=0)
    restored = np.fft.irfft(np.fft.ifft(spectrum * np.conj(otf) / (np.abs(otf) ** 2 + k), axis=0), shape[1], axis=1)
    return stretch(restored[8 : 8 + h, 8 : 8 + w])


def refocused(region: Frame, sigma: float = 1.2) -> Frame:
    """Defocus undone: Wiener deconvolution with a Gaussian of `sigma` px (k = 0.03 keeps noise down)."""
    return _wiener(region, lambda shape: _gauss_otf(shape, sigma), 0.03)


def _smear_score(d: F32, lag: int) -> float:
    n = d.shape[1]
    return float(np.vdot(d[:, : n - lag], d[:, lag:]))


def _derivative(region: Frame) -> F32:
    d: F32 = np.diff(region[::2].astype(np.float32), axis=1)
    d -= d.mean(axis=1, keepdims=True)
    return d


def smear_length(region: Frame, shortest: int = 4, longest: int = 14) -> int | None:
    """A horizontal smear's length, or None when the picture is not smeared sideways. The derivative of a
    box-blurred row is a pair of opposite spikes L apart, so its autocorrelation over the rows is most
    negative at lag L; any blur does that a little, so the same is done on columns, and only a row
    minimum well below the column one (by 0.15 of the energy; measured: 0.19-0.28 for 7-9 px smears,
    under 0.13 for every other class) counts."""
    lags = range(shortest, min(longest, region.shape[1] - 2, region.shape[0] - 2) + 1)
    if not lags:
        return None
    rows, cols = _derivative(region), _derivative(np.ascontiguousarray(region.T))
    e_rows, e_cols = max(1e-6, float(np.vdot(rows, rows))), max(1e-6, float(np.vdot(cols, cols)))
    best = min(lags, key=lambda lag: _smear_score(rows, lag))
    across = min(_smear_score(cols, lag) for lag in lags) / e_cols
    return best if _smear_score(rows, best) / e_rows - across < -SMEAR_MARGIN else None


SMEAR_MARGIN = 0.15


def unsmeared(region: Frame) -> Frame | None:
    """Horizontal motion blur undone: Wiener deconvolution with a box of the measured length (k = 0.004:
    read best over 7-9 px smears); None, at the cost of the measurement, when nothing is smeared."""
    length = smear_length(region)
    if length is None:
        return None
    return _wiener(region, lambda shape: _box_otf(shape, length), 0.004)
