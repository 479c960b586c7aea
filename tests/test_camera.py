"""The camera in the field: focus and exposure controls per camera model, and `gate camera aim`."""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageFilter

from gate.config.camera import CameraSection
from gate.config.model import Config, parse_config
from gate.core.errors import ConfigError
from gate.scan.aim import focus_score, run_aim
from gate.scan.camera import PiCamera
from gate.scan.framegen import code_frame
from gate.testing import FakePicamera2

TEXT = "GT1:8C2*1Z.Q8T$HU2BT8 7HK5-9ZJPU:%0CS1K3B.:D4+T"


def config(**camera: Any) -> Config:
    return parse_config({"gate": {"id": "lane-07"}, "venue": {"id": "v"}, "scanner": {"camera": camera}})


def fake(model: str, frames: Iterator[np.ndarray | None] | None = None) -> tuple[list[FakePicamera2], Any]:
    made: list[FakePicamera2] = []
    script = frames if frames is not None else itertools.repeat(np.zeros((480, 640), np.uint8))

    def factory() -> FakePicamera2:
        made.append(FakePicamera2(script, model=model))
        return made[-1]

    return made, factory


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("lens_position", -1, "lens_position"),
        ("af_mode", "auto", "af_mode"),
        ("af_range", "near", "af_range"),
        ("max_exposure_us", 5_000_000, "max_exposure_us"),
        ("ev", 12, "ev"),
        ("crop", [0.5, 0.5, 0.6, 0.4], "crop"),
        ("crop", [0.1, 0.1, 0.5], "crop"),
    ],
)
def test_a_bad_camera_value_is_refused_naming_its_key(key: str, value: Any, named: str) -> None:
    with pytest.raises(ConfigError) as err:
        config(**{key: value})
    assert f"scanner.camera.{named}" in str(err.value)


def test_the_documented_defaults_fix_focus_on_the_reading_window() -> None:
    cam = config().scanner.camera
    assert (cam.af_mode, cam.lens_position, cam.max_exposure_us, cam.ev, cam.crop) == ("manual", 6.5, 8000, 0, None)


# -- controls reaching the camera ---------------------------------------------------------------


def test_camera_module_3_gets_manual_focus_exposure_cap_ev_and_crop() -> None:
    made, factory = fake("imx708")
    cfg = config(lens_position=7.0, max_exposure_us=6000, ev=-0.5, crop=[0.25, 0.25, 0.5, 0.5])
    cam = PiCamera(cfg.scanner.camera, factory)
    controls = made[0].config["controls"]
    assert controls == {
        "FrameRate": 30.0,
        "AfMode": 0,
        "LensPosition": 7.0,
        "ExposureTime": 6000,
        "ExposureValue": -0.5,
        "ScalerCrop": (1152, 648, 2304, 1296),
    }
    cam.close()


def test_continuous_autofocus_searches_the_macro_range() -> None:
    made, factory = fake("imx708")
    PiCamera(config(af_mode="continuous").scanner.camera, factory).close()
    controls = made[0].config["controls"]
    assert controls["AfMode"] == 2 and controls["AfRange"] == 1 and "LensPosition" not in controls


@pytest.mark.parametrize("model", ["imx219", "imx477"])
def test_a_camera_without_autofocus_keeps_working_and_says_so_once(model: str, caplog) -> None:
    made, factory = fake(model)
    caplog.set_level(logging.INFO, logger="gate.scan.camera")
    cam = PiCamera(config(lens_position=9.0).scanner.camera, factory)
    cam.restart("test")  # a restart does not repeat the notice
    assert cam.capture(0.1) is not None
    for m in made:
        assert not {"AfMode", "AfRange", "LensPosition"} & set(m.config["controls"])
        assert m.config["controls"]["ExposureTime"] == 8000
    notices = [r.message for r in caplog.records if "no autofocus" in r.message]
    assert len(notices) == 1 and model in notices[0]
    cam.close()


def test_a_lens_position_past_the_lens_range_is_clamped_with_a_warning(caplog) -> None:
    made, factory = fake("imx708")
    PiCamera(config(lens_position=20.0).scanner.camera, factory).close()
    assert made[0].config["controls"]["LensPosition"] == 15.0
    assert "above this camera's maximum 15.0" in caplog.text


def test_no_exposure_cap_leaves_exposure_to_the_camera() -> None:
    made, factory = fake("imx219")
    PiCamera(config(max_exposure_us=0).scanner.camera, factory).close()
    assert "ExposureTime" not in made[0].config["controls"]


# -- gate camera aim ----------------------------------------------------------------------------


def test_aim_prints_its_measures_and_writes_no_frame(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    frames = [code_frame(TEXT) for _ in range(6)] + [code_frame(None) for _ in range(6)]
    _, factory = fake("imx708", iter(frames))
    lines: list[str] = []
    run_aim(config(), interval=1e9, as_json=True, factory=factory, out=lines.append, max_frames=6)
    head, report = json.loads(lines[0]), json.loads(lines[-1])
    assert head["controls"]["LensPosition"] == 6.5
    assert report["frames"] == 6 and report["reads"] == 6 and report["lens_position"] == 6.5
    assert report["focus"] > 100 and 100 < report["brightness"] < 255 and report["clipped_pct"] > 0
    text: list[str] = []
    run_aim(config(), interval=1e9, factory=factory, out=text.append, max_frames=6)  # the empty frames
    assert "reads/s" in text[-1] and "(0/6 frames)" in text[-1] and "focus" in text[-1]
    assert list(tmp_path.iterdir()) == []  # privacy: nothing written without --save
    assert TEXT not in "\n".join(lines + text)  # and no payload printed


def test_aim_save_writes_one_private_frame_on_request(tmp_path: Path) -> None:
    _, factory = fake("imx219", iter([code_frame(TEXT)] * 3))
    out = tmp_path / "frame.png"
    run_aim(config(), interval=1e9, save=out, factory=factory, out=lambda s: None, max_frames=3)
    assert os.stat(out).st_mode & 0o777 == 0o600
    assert np.array_equal(np.asarray(Image.open(out)), code_frame(TEXT))


class FocusingCamera(FakePicamera2):
    """A Camera Module 3 looking at a code held 14 cm away: sharp only near 7 dioptres."""

    def __init__(self) -> None:
        super().__init__(iter(()), model="imx708")
        self.sharp = Image.fromarray(code_frame(TEXT, size=(320, 240), scale=3))

    def capture_array(self, name: str = "main", wait: float | None = None) -> np.ndarray:
        lens = ([c["LensPosition"] for c in self.controls_set if "LensPosition" in c] or [1.0])[-1]
        y = np.asarray(self.sharp.filter(ImageFilter.GaussianBlur(abs(lens - 7.0) * 1.2)))
        return np.vstack([y, np.full((120, 320), 128, np.uint8)])


def test_aim_sweep_finds_the_lens_position_that_reads_the_held_code() -> None:
    cams: list[FocusingCamera] = []
    lines: list[str] = []

    def factory() -> FocusingCamera:
        cams.append(FocusingCamera())
        return cams[-1]

    run_aim(config(width=320, height=240), sweep=True, steps=16, factory=factory, out=lines.append)
    assert len(lines) == 1 + 16 + 1
    best = float(lines[-1].split("best lens_position = ")[1].split(" ")[0])
    assert abs(best - 7.0) <= 0.5 and "frames read" in lines[-1]
    assert cams[0].controls_set[-1] == {"AfMode": 0, "LensPosition": best}


def test_aim_sweep_on_a_fixed_focus_camera_says_it_cannot() -> None:
    _, factory = fake("imx477")
    lines: list[str] = []
    run_aim(config(), sweep=True, factory=factory, out=lines.append)
    assert "no focus control" in lines[-1]


def test_focus_score_falls_as_the_picture_blurs() -> None:
    sharp = Image.fromarray(code_frame(TEXT))
    scores = [focus_score(np.asarray(sharp.filter(ImageFilter.GaussianBlur(r)))) for r in (0.1, 1, 2, 4)]
    assert scores == sorted(scores, reverse=True)


def test_gate_camera_aim_without_a_camera_is_one_short_error(tmp_path: Path) -> None:
    cfg = tmp_path / "gate.toml"
    cfg.write_text(f'[gate]\nid = "lane-07"\nstate_dir = "{tmp_path}"\n[venue]\nid = "v"\n')
    run = subprocess.run(
        [sys.executable, "-m", "gate", "camera", "--config", str(cfg), "aim", "--seconds", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1 and "camera: cannot start" in run.stderr and "systemctl stop gate" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_camera_section_is_the_one_in_the_config() -> None:
    assert type(config().scanner.camera) is CameraSection
