"""`gate camera aim`: what an installer needs at the lane to mount, focus and light the camera.

It prints measures only: no payload, and no frame is ever written unless `--save FILE` asks for one."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from gate.config.model import Config
from gate.core.errors import DeviceError
from gate.scan.decoders import Decoder, Frame

Out = Callable[[str], None]
CLIPPED = 250  # a pixel at or above this grey level has lost its detail (glare, an over-bright screen)


class AimCamera(Protocol):
    controls: dict[str, Any]

    def capture(self, timeout: float) -> Frame | None: ...

    def set_controls(self, controls: dict[str, Any]) -> None: ...

    def control_range(self, name: str) -> tuple[float, float] | None: ...


def window(frame: Frame, cropped: bool) -> Frame:
    """The reading window: the whole frame when the sensor is cropped to it, else the middle half."""
    if cropped:
        return frame
    h, w = frame.shape
    return frame[h // 4 : h - h // 4, w // 4 : w - w // 4]


def focus_score(region: Frame) -> float:
    """Variance of the Laplacian: high when edges are sharp, falls as the picture blurs."""
    f = region.astype(np.float32)
    lap = 4 * f[1:-1, 1:-1] - f[:-2, 1:-1] - f[2:, 1:-1] - f[1:-1, :-2] - f[1:-1, 2:]
    return float(lap.var()) if lap.size else 0.0


@dataclass
class Window:
    """Measures over the frames of one report."""

    frames: int = 0
    reads: int = 0
    focus: list[float] = field(default_factory=list)
    brightness: list[float] = field(default_factory=list)
    clipped: list[float] = field(default_factory=list)

    def add(self, frame: Frame, cropped: bool, read: bool) -> None:
        region = window(frame, cropped)
        self.frames += 1
        self.reads += read
        self.focus.append(focus_score(region))
        self.brightness.append(float(region.mean()))
        self.clipped.append(float((region >= CLIPPED).mean()))

    def report(self, seconds: float, lens: float | None) -> dict[str, Any]:
        def med(xs: list[float]) -> float:
            return float(np.median(xs)) if xs else 0.0

        return {
            "frames": self.frames,
            "focus": round(med(self.focus), 1),
            "brightness": round(med(self.brightness), 1),
            "clipped_pct": round(100 * med(self.clipped), 2),
            "reads_per_s": round(self.reads / seconds, 1) if seconds > 0 else 0.0,
            "reads": self.reads,
            "lens_position": lens,
        }


def _line(r: dict[str, Any]) -> str:
    lens = "" if r["lens_position"] is None else f"  lens {r['lens_position']:.2f} dpt"
    return (
        f"focus {r['focus']:8.1f}  brightness {r['brightness']:5.1f}  clipped {r['clipped_pct']:5.2f}%"
        f"  reads/s {r['reads_per_s']:5.1f} ({r['reads']}/{r['frames']} frames){lens}"
    )


class Aim:
    def __init__(self, camera: AimCamera, decoder: Decoder, cropped: bool, out: Out, as_json: bool = False) -> None:
        self.camera = camera
        self.decoder = decoder
        self.cropped = cropped
        self.as_json = as_json
        self._out = out
        self.last: Frame | None = None

    def _print(self, r: dict[str, Any]) -> None:
        self._out(json.dumps(r) if self.as_json else _line(r))

    def _lens(self) -> float | None:
        v = self.camera.controls.get("LensPosition")
        return None if v is None else float(v)

    def _frame(self, timeout: float = 1.0) -> Frame | None:
        frame = self.camera.capture(timeout)
        if frame is not None:
            self.last = frame
        return frame

    def watch(self, seconds: float | None, interval: float = 0.33, max_frames: int | None = None) -> None:
        """Report every `interval` s until `seconds` have passed (None: until interrupted) or `max_frames`."""
        start = last = time.monotonic()
        win, total = Window(), 0
        while (seconds is None or time.monotonic() - start < seconds) and (max_frames is None or total < max_frames):
            frame = self._frame()
            if frame is None:
                continue
            total += 1
            win.add(frame, self.cropped, bool(self.decoder.decode(frame)))
            now = time.monotonic()
            if now - last >= interval:
                self._print(win.report(now - last, self._lens()))
                win, last = Window(), now
        if win.frames:
            self._print(win.report(max(time.monotonic() - last, 1e-3), self._lens()))

    def sweep(self, steps: int = 16, settle: int = 3, per_step: int = 10) -> float | None:
        """Step the lens across its range with a code held in place; the best position has the most reads,
        then the sharpest picture. None when the camera has no focus control."""
        limits = self.camera.control_range("LensPosition")
        if limits is None:
            self._out("this camera has no focus control (LensPosition): --sweep needs Camera Module 3")
            return None
        lo, hi = limits
        results: list[tuple[int, float, float]] = []
        for p in np.linspace(lo, hi, max(2, steps)):
            pos = round(float(p), 2)
            self.camera.set_controls({"AfMode": 0, "LensPosition": pos})
            for _ in range(settle):  # frames exposed while the lens moved
                self._frame()
            win, t0 = Window(), time.monotonic()
            while win.frames < per_step:
                frame = self._frame()
                if frame is None:
                    break
                win.add(frame, self.cropped, bool(self.decoder.decode(frame)))
            r = win.report(time.monotonic() - t0, pos)
            self._print(r)
            results.append((r["reads"], r["focus"], pos))
        reads, focus, best = max(results)
        self.camera.set_controls({"AfMode": 0, "LensPosition": best})
        why = f"{reads}/{per_step} frames read" if reads else "no code was read at any position; the sharpest"
        self._out(
            f"best lens_position = {best} ({why}, focus {focus:.1f}): set [scanner.camera] lens_position = {best}"
        )
        return best

    def save(self, path: Path) -> None:
        """One frame, on explicit request, readable by its owner only (it may show a face or a code)."""
        from PIL import Image

        if self.last is None:
            raise OSError("no frame was captured")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            Image.fromarray(self.last).save(fh, format="PNG")
        self._out(f"saved one frame to {path} (it may show a face or a code: delete it when done)")


def run_aim(
    cfg: Config,
    seconds: float | None = None,
    interval: float = 0.33,
    sweep: bool = False,
    steps: int = 16,
    save: Path | None = None,
    as_json: bool = False,
    factory: Callable[[], Any] | None = None,
    out: Out = print,
    max_frames: int | None = None,
) -> int:
    """The camera as the daemon would run it (same config, same controls), measured instead of deciding."""
    from gate.scan.camera import PiCamera
    from gate.scan.decoders import make_decoder

    try:
        camera = PiCamera(cfg.scanner.camera) if factory is None else PiCamera(cfg.scanner.camera, factory)
    except DeviceError as exc:
        raise DeviceError(f"{exc} (a running gate service holds the camera: systemctl stop gate)") from None
    aim = Aim(camera, make_decoder(cfg.scanner.decoder, cfg.scanner.formats), cfg.scanner.camera.crop is not None, out)
    aim.as_json = as_json
    shown = dict(camera.controls)
    out(json.dumps({"controls": shown}) if as_json else f"camera controls: {shown}")
    try:
        if sweep:
            aim.sweep(steps)
        else:
            aim.watch(seconds, interval, max_frames)
    except KeyboardInterrupt:
        pass
    finally:
        try:
            if save is not None:
                aim.save(save)
        finally:
            camera.close()
    return 0
