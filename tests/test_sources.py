"""The serial QR-module source over pyserial loop://, and the Pi camera source with a fake Picamera2."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import serial

from gate.config.camera import CameraSection
from gate.config.model import SerialSection
from gate.core.errors import DeviceError
from gate.scan.camera import PiCamera
from gate.scan.serial_source import SerialScanner
from gate.testing import FakePicamera2, FixedClock, FlakyPort


class TickingClock(FixedClock):
    def __call__(self) -> float:
        self.mono += 0.005
        return self.mono


def loop_scanner(**kw: Any) -> tuple[SerialScanner, FlakyPort, list[FlakyPort]]:
    ports: list[FlakyPort] = []

    def opener(cfg: SerialSection) -> FlakyPort:
        ports.append(FlakyPort(serial.serial_for_url("loop://", timeout=0.01)))
        return ports[-1]

    s = SerialScanner(SerialSection(port="loop://", **kw), opener=opener)
    assert s.read(0.01) is None  # opens the port
    return s, ports[0], ports


def lines(s: SerialScanner, n: int = 5) -> list[bytes]:
    out = []
    for _ in range(n):
        obs = s.read(0.05)
        if obs is not None:
            out += obs.payloads
    return out


def test_complete_lines_become_codes_and_crlf_is_stripped() -> None:
    s, port, _ = loop_scanner()
    port.write(b"GT1:ABC\rGT1:DEF\r\n")
    assert lines(s) == [b"GT1:ABC", b"GT1:DEF"]


def test_a_line_split_across_reads_is_joined() -> None:
    s, port, _ = loop_scanner()
    port.write(b"GT1:AB")
    assert s.read(0.05) is None
    port.write(b"CD\r")
    assert lines(s) == [b"GT1:ABCD"]


def test_a_line_cut_by_a_pause_is_dropped_whole_never_decided_in_part() -> None:
    clock = TickingClock()
    port = FlakyPort(serial.serial_for_url("loop://", timeout=0.01))
    s = SerialScanner(SerialSection(port="loop://"), opener=lambda cfg: port, mono=clock)
    port.write(b"GT1:HA")
    assert s.read(0.05) is None  # the module stopped mid-code
    clock.mono += 1.5
    assert s.read(0.05) is None
    port.write(b"LF\r")  # the rest of it, after the pause
    assert s.read(0.05) is None  # neither the head nor the tail is decided
    port.write(b"GT1:NEXT\r")
    assert s.read(0.05).payloads == (b"GT1:NEXT",)  # the next whole line is
    assert s.dropped_lines == 1


def test_a_whole_code_after_an_abandoned_fragment_is_decided() -> None:
    clock = TickingClock()
    port = FlakyPort(serial.serial_for_url("loop://", timeout=0.01))
    s = SerialScanner(SerialSection(port="loop://"), opener=lambda cfg: port, mono=clock)
    port.write(b"GT1:HA")  # a fragment whose rest never comes
    assert s.read(0.05) is None
    clock.mono += 1.5
    assert s.read(0.05) is None
    port.write(b"GT1:WHOLE\r")
    assert s.read(0.05).payloads == (b"GT1:WHOLE",)
    assert s.dropped_lines == 1


def test_garbage_bytes_pass_through_as_bytes_without_crashing() -> None:
    s, port, _ = loop_scanner()
    port.write(b"\xff\xfe\x00garbage\x80\r")
    assert lines(s) == [b"\xff\xfe\x00garbage\x80"]


def test_over_long_lines_are_dropped_whole() -> None:
    s, port, _ = loop_scanner(max_line_bytes=32)
    port.write(b"X" * 100)
    port.write(b"Y" * 100 + b"\rGT1:OK\r")
    assert lines(s, 10) == [b"GT1:OK"] and s.dropped_lines == 1


def test_unplug_reconnects_with_backoff_and_reads_again() -> None:
    s, port, ports = loop_scanner()
    port.unplug()
    assert s.read(0.05) is None  # lost: backing off, not raising
    assert lines(s, 40) == []  # reconnects in ~0.5 s
    assert len(ports) == 2 and s.reconnects == 1
    ports[1].write(b"GT1:BACK\r")
    assert lines(s) == [b"GT1:BACK"]


def test_a_port_that_cannot_be_opened_backs_off_and_keeps_trying() -> None:
    attempts = []

    def opener(cfg: SerialSection) -> Any:
        attempts.append(1)
        raise serial.SerialException("could not open port /dev/serial/by-id/usb-x: No such file")

    s = SerialScanner(SerialSection(port="/dev/serial/by-id/usb-x"), opener=opener)
    for _ in range(5):
        assert s.read(0.05) is None
    assert 1 <= len(attempts) <= 2  # backoff, not a busy loop


def test_a_module_unplugged_for_long_is_back_within_two_seconds_of_replugging() -> None:
    clock = TickingClock()
    plugged = [False]
    port = FlakyPort(serial.serial_for_url("loop://", timeout=0.01))

    def opener(cfg: SerialSection) -> Any:
        if not plugged[0]:
            raise serial.SerialException("No such file or directory")
        return port

    s = SerialScanner(SerialSection(port="/dev/ttyACM0"), opener=opener, mono=clock)
    for _ in range(100):  # 45 s unplugged, on the test's clock
        s.read(0.05)
        clock.mono += 0.45
    plugged[0] = True
    replugged = clock.mono
    port.write(b"GT1:BACK\r")
    while (obs := s.read(0.05)) is None and clock.mono - replugged < 10:
        clock.mono += 0.05
    assert obs is not None and obs.payloads == (b"GT1:BACK",)
    assert clock.mono - replugged <= 2.1


# -- camera ------------------------------------------------------------------------------------------


def y_frames(n: int, h: int = 64, w: int = 96) -> list[np.ndarray]:
    return [np.full((h, w), i, np.uint8) for i in range(n)]


def test_camera_returns_the_y_plane_without_stride_padding() -> None:
    cfg = CameraSection(width=96, height=64)
    cam_holder: list[FakePicamera2] = []
    frames = iter(y_frames(2))

    def factory() -> FakePicamera2:
        cam_holder.append(FakePicamera2(frames, stride=128))
        return cam_holder[-1]

    cam = PiCamera(cfg, factory)
    frame = cam.capture(0.5)
    assert frame is not None and frame.shape == (64, 96) and (frame == 0).all()
    assert cam_holder[0].config["lores"] == {"size": (96, 64), "format": "YUV420"}
    assert cam_holder[0].waits == [0.5]  # every capture is bounded
    cam.close()
    assert cam_holder[0].closed


def test_a_stalled_camera_is_restarted_and_counted(caplog) -> None:
    clock = FixedClock(mono=100.0)
    cams: list[FakePicamera2] = []
    scripts = iter([iter([None] * 100), iter(y_frames(3))])

    def factory() -> FakePicamera2:
        cams.append(FakePicamera2(next(scripts)))
        return cams[-1]

    cam = PiCamera(CameraSection(width=96, height=64, stall_seconds=2.0), factory, mono=clock)
    for _ in range(4):  # 3 s without a frame
        assert cam.capture(0.1) is None
        clock.mono += 1.0
    assert cam.restarts == 1 and len(cams) == 2 and cams[0].closed
    assert "restarting" in caplog.text
    assert cam.capture(0.1) is not None


def test_a_camera_that_cannot_start_is_a_device_error() -> None:
    def factory() -> Any:
        raise RuntimeError("Camera __init__ sequence did not complete")

    with pytest.raises(DeviceError, match="camera: cannot start"):
        PiCamera(CameraSection(), factory)


def test_restart_survives_a_camera_that_fails_to_stop() -> None:
    class Wedged(FakePicamera2):
        def stop(self) -> None:
            raise RuntimeError("wedged")

    cams = iter([Wedged(iter([])), FakePicamera2(itertools.repeat(np.zeros((64, 96), np.uint8)))])
    cam = PiCamera(CameraSection(width=96, height=64), lambda: next(cams))
    cam.restart("test")
    assert cam.capture(0.1) is not None
