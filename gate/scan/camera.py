"""Pi camera frame source: picamera2 lores YUV420 stream, Y plane, bounded captures, stall restart."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from gate.config.camera import CameraSection
from gate.core.errors import DeviceError
from gate.scan.decoders import Frame

log = logging.getLogger(__name__)


def _picamera2() -> Any:
    from picamera2 import Picamera2  # apt: python3-picamera2; never a pip dependency

    return Picamera2()


AF_MODES = {"manual": 0, "continuous": 2}  # libcamera's AfModeEnum: Manual, Auto, Continuous
AF_RANGES = {"normal": 0, "macro": 1, "full": 2}  # libcamera's AfRangeEnum
FOCUS_KEYS = ("AfMode", "AfRange", "LensPosition")


def _clamp(name: str, value: float, limits: Any) -> float:
    lo, hi = (limits[0], limits[1]) if isinstance(limits, tuple) and len(limits) >= 2 else (None, None)
    if isinstance(lo, int | float) and value < lo:
        log.warning("camera: %s %s is below this camera's minimum %s: using %s", name, value, lo, lo)
        return float(lo)
    if isinstance(hi, int | float) and hi > 0 and value > hi:
        log.warning("camera: %s %s is above this camera's maximum %s: using %s", name, value, hi, hi)
        return float(hi)
    return value


def camera_controls(cfg: CameraSection, available: dict[str, Any], field: Any = None) -> dict[str, Any]:
    """libcamera controls for `cfg`, only those this camera reports (`camera_controls`), within its ranges.
    `field` is the sensor's full ScalerCrop rectangle (x, y, w, h) that `crop` fractions refer to."""
    wanted: dict[str, Any] = {"FrameRate": cfg.fps}
    if cfg.af_mode == "manual":
        wanted["AfMode"] = AF_MODES["manual"]
        wanted["LensPosition"] = cfg.lens_position
    else:
        wanted["AfMode"] = AF_MODES["continuous"]
        wanted["AfRange"] = AF_RANGES[cfg.af_range]
    if cfg.max_exposure_us:
        wanted["ExposureTime"] = cfg.max_exposure_us  # a fixed shutter; the AGC keeps varying the gain
    if cfg.ev:
        wanted["ExposureValue"] = cfg.ev
    if cfg.crop is not None and field is not None and len(field) == 4:
        x0, y0, fw, fh = (int(v) for v in field)
        x, y, w, h = cfg.crop
        wanted["ScalerCrop"] = (x0 + round(x * fw), y0 + round(y * fh), round(w * fw), round(h * fh))
    out: dict[str, Any] = {}
    for name, value in wanted.items():
        if name == "FrameRate" or name == "ScalerCrop":
            out[name] = value  # picamera2 turns FrameRate into frame durations; ScalerCrop was placed above
        elif name in available:
            out[name] = _clamp(name, value, available[name]) if name in ("LensPosition", "ExposureTime") else value
    return out


class PiCamera:
    """Captures the greyscale Y plane of the lores stream; restarts the camera after a stall."""

    name = "camera"

    def __init__(
        self,
        cfg: CameraSection,
        factory: Callable[[], Any] = _picamera2,
        mono: Callable[[], float] = time.monotonic,
        open_now: bool = True,
    ) -> None:
        """`open_now=False`: the camera starts on the first `open()` or capture, on the thread that reads it (the
        gate's build() opens nothing; Gate.start() opens it on the lane thread)."""
        self.cfg = cfg
        self._factory = factory
        self._mono = mono
        self._cam: Any = None
        self.restarts = 0
        self.controls: dict[str, Any] = {}  # what the camera was asked for, as it reported it can do
        self._told: set[str] = set()  # ignored keys already logged: once per process, not once per restart
        self._last_frame = mono()
        if open_now:
            self._open()

    def open(self) -> None:
        """Start the camera if it is not running; DeviceError if it cannot start."""
        if self._cam is None:
            self._open()

    def _open(self) -> None:
        size = (self.cfg.width, self.cfg.height)
        try:
            cam = self._factory()
            available = dict(getattr(cam, "camera_controls", {}) or {})
            props = dict(getattr(cam, "camera_properties", {}) or {})
            field = props.get("ScalerCropMaximum") or (available.get("ScalerCrop") or (None, None))[1]
            self.controls = camera_controls(self.cfg, available, field)
            self._tell_ignored(available, props)
            config = cam.create_video_configuration(
                main={"size": size, "format": "YUV420"},
                lores={"size": size, "format": "YUV420"},
                controls=self.controls,
                buffer_count=4,
            )
            cam.configure(config)
            cam.start()
        except Exception as exc:
            raise DeviceError(f"camera: cannot start ({exc.__class__.__name__}: {exc})") from exc
        self._cam = cam
        self._last_frame = self._mono()

    def _tell_ignored(self, available: dict[str, Any], props: dict[str, Any]) -> None:
        model = props.get("Model", "this camera")
        ignored = []
        if not any(k in available for k in FOCUS_KEYS):
            ignored.append(("focus", f"{model} has no autofocus (fixed focus): af_mode, lens_position and af_range"))
        for key, control in (("max_exposure_us", "ExposureTime"), ("ev", "ExposureValue")):
            if getattr(self.cfg, key) and control not in available:
                ignored.append((key, f"{model} reports no {control} control: {key}"))
        for what, text in ignored:
            if what not in self._told:
                self._told.add(what)
                log.info("camera: %s ignored", text)
        if self.cfg.crop is not None and "ScalerCrop" not in self.controls and "crop" not in self._told:
            self._told.add("crop")
            log.warning("camera: %s reports no sensor field (ScalerCropMaximum): crop ignored", model)

    def set_controls(self, controls: dict[str, Any]) -> None:
        """Change controls while running (`gate camera aim --sweep`); only those the camera reports."""
        if self._cam is None:
            return
        available = getattr(self._cam, "camera_controls", {}) or {}
        wanted = {k: v for k, v in controls.items() if k in available}
        if wanted:
            self._cam.set_controls(wanted)
            self.controls.update(wanted)

    def control_range(self, name: str) -> tuple[float, float] | None:
        limits = (getattr(self._cam, "camera_controls", {}) or {}).get(name)
        if not isinstance(limits, tuple) or len(limits) < 2 or limits[0] is None or limits[1] is None:
            return None
        return float(limits[0]), float(limits[1])

    def _shutdown(self) -> None:
        cam, self._cam = self._cam, None
        if cam is None:
            return
        for step in (cam.stop, cam.close):
            try:
                step()
            except Exception as exc:  # a wedged camera must not stop the restart
                log.warning("camera: %s failed during restart: %s", step.__name__, exc)

    def restart(self, why: str) -> None:
        self.restarts += 1
        log.error("camera: restarting (%s), restart #%d", why, self.restarts)
        self._shutdown()
        self._open()

    def capture(self, timeout: float) -> Frame | None:
        if self._cam is None:
            self._open()
        try:
            arr = self._cam.capture_array("lores", wait=timeout)
        except TimeoutError:
            arr = None
        except Exception as exc:
            log.warning("camera: capture failed: %s", exc)
            arr = None
        now = self._mono()
        if arr is None:
            if now - self._last_frame > self.cfg.stall_seconds:
                self.restart(f"no frame for {now - self._last_frame:.1f}s")
            return None
        self._last_frame = now
        # YUV420 arrives as (h*3/2, stride): the first h rows are Y; columns past width are padding.
        return np.ascontiguousarray(arr[: self.cfg.height, : self.cfg.width])

    def close(self) -> None:
        self._shutdown()
