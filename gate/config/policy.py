"""The admission policy's model: data central pushes (signed), with defaults from the `[policy]` section."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from gate.config.venue import ID_PATTERN


class Action(StrEnum):
    ADMIT = "admit"
    ASSIST = "assist"
    DENY = "deny"


class Fallback(StrEnum):
    """What to do when a check cannot be made (stale cache, unsynced clock)."""

    USE_CODE = "use_code"  # carry on with what the signed code says
    ASSIST = "assist"
    DENY = "deny"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PerKind(_Model):
    phone: Fallback
    card: Fallback
    staff: Fallback


class MaxAge(_Model):
    phone: int = Field(86_400, ge=1, description="Oldest accepted phone code, seconds since issue")
    card: int = Field(400 * 86_400, ge=1, description="Oldest accepted printed card, seconds since issue")
    staff: int = Field(31 * 86_400, ge=1, description="Oldest accepted staff code, seconds since issue")


class StatusActions(_Model):
    green: Action = Action.ADMIT
    yellow: Action = Action.ASSIST
    red: Action = Action.DENY


class Stop(_Model):
    id: str = Field(pattern=ID_PATTERN)
    name: str = Field("", max_length=120)
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    radius_m: float = Field(50.0, gt=0, le=5000, description="A fix this close names the stop")


class Policy(_Model):
    """Every rule a decision applies. `version` is set by central; 0 means config defaults."""

    version: int = Field(0, ge=0, description="Policy version from central; 0 = the config defaults")
    status_actions: StatusActions = StatusActions()
    max_age_seconds: MaxAge = MaxAge()
    clock_skew_seconds: int = Field(300, ge=0, le=3600, description="Tolerance for codes issued 'later'")
    cache_stale_after_seconds: int = Field(3 * 86_400, ge=60, description="Cache older than this is stale")
    on_cache_stale: PerKind = PerKind(phone=Fallback.USE_CODE, card=Fallback.ASSIST, staff=Fallback.USE_CODE)
    on_clock_unsynced: PerKind = PerKind(phone=Fallback.ASSIST, card=Fallback.USE_CODE, staff=Fallback.USE_CODE)
    card_without_cache_entry: Action = Field(Action.ASSIST, description="A card whose token is not cached")
    passback_seconds: int = Field(60, ge=0, le=86_400, description="Same token cannot pass again within")
    assist_window_seconds: int = Field(120, ge=5, le=3600, description="A staff code after assist admits")
    stops: dict[str, tuple[Stop, ...]] = Field(
        default_factory=dict, description="Per bus route: its stops; a check-in names the nearest within its radius"
    )
