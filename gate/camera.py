"""Pi camera frame source: picamera2 lores YUV420 stream, Y plane, bounded captures, stall restart."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from gate.config import CameraSection
from gate.decoders import Frame
from gate.errors import DeviceError

log = logging.getLogger(__name__)


def _picamera2() -> Any:
    from picamera2 import Picamera2  # apt: python3-picamera2; never a pip dependency

    return Picamera2()


class PiCamera:
    """Captures the greyscale Y plane of the lores stream; restarts the camera after a stall."""

    name = "camera"

    def __init__(
        self, cfg: CameraSection, factory: Callable[[], Any] = _picamera2, mono: Callable[[], float] = time.monotonic
    ) -> None:
        self.cfg, self._factory, self._mono = cfg, factory, mono
        self._cam: Any = None
        self.restarts = 0
        self._last_frame = mono()
        self._open()

    def _open(self) -> None:
        size = (self.cfg.width, self.cfg.height)
        try:
            cam = self._factory()
            config = cam.create_video_configuration(
                main={"size": size, "format": "YUV420"},
                lores={"size": size, "format": "YUV420"},
                controls={"FrameRate": self.cfg.fps},
                buffer_count=4,
            )
            cam.configure(config)
            cam.start()
        except Exception as exc:
            raise DeviceError(f"camera: cannot start ({exc.__class__.__name__}: {exc})") from exc
        self._cam = cam
        self._last_frame = self._mono()

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
