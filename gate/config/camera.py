"""`[scanner.camera]`: the camera stream and the optics of the reading window (see docs/camera.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Section(BaseModel):
    """Every config section: unknown keys are errors, and a loaded config never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class CameraSection(Section):
    width: int = Field(640, ge=64, le=4056)
    height: int = Field(480, ge=64, le=3040)
    fps: float = Field(30.0, gt=0, le=120)
    stall_seconds: float = Field(5.0, gt=0, le=600, description="No frame this long restarts the camera")
    skip_unchanged_frames: bool = Field(
        True, description="Presentation mode: frames of the same empty scene are not decoded (every 15th is)"
    )
    af_mode: Literal["manual", "continuous"] = Field(
        "manual", description="manual: focus fixed at lens_position; continuous: autofocus within af_range"
    )
    lens_position: float = Field(
        6.5, ge=0, le=32, description="Focus in dioptres (1 / metres) when af_mode = 'manual': 6.5 = about 15 cm"
    )
    af_range: Literal["macro", "normal", "full"] = Field("macro", description="Where continuous autofocus searches")
    max_exposure_us: int = Field(
        8000, ge=0, le=1_000_000, description="Shutter time against motion blur, gain makes up the rest; 0 = auto"
    )
    ev: float = Field(0.0, ge=-8, le=8, description="Exposure compensation in stops: negative for bright screens")
    crop: tuple[float, float, float, float] | None = Field(
        None, description="Reading window [x, y, width, height] as fractions of the sensor's field (ScalerCrop)"
    )

    @field_validator("crop")
    @classmethod
    def _crop_inside(cls, crop: tuple[float, float, float, float] | None) -> tuple[float, float, float, float] | None:
        if crop is not None:
            x, y, w, h = crop
            if not (0 <= x < 1 and 0 <= y < 1 and 0 < w <= 1 and 0 < h <= 1):
                raise ValueError(f"{list(crop)}: x and y must be in [0, 1), width and height in (0, 1]")
            if x + w > 1 + 1e-9 or y + h > 1 + 1e-9:
                raise ValueError(f"{list(crop)} reaches past the sensor's edge (x + width, y + height > 1)")
        return crop
