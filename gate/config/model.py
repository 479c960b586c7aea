"""The gate's TOML configuration: one frozen, validated model per concern."""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator

from gate.config.camera import CameraSection, Section
from gate.config.errors import describe
from gate.config.ops import HomeAssistantSection, MetricsSection
from gate.config.policy import Policy
from gate.config.venue import GpsSection, VenueCategory, VenueSection
from gate.core.address import broker_endpoint
from gate.core.errors import ConfigError

DEFAULT_PATH = Path("/etc/gate/gate.toml")


class _Model(Section):
    """A section of gate.toml."""


class GateSection(_Model):
    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="This lane's id, unique in the city")

    @field_validator("id")
    @classmethod
    def _edited(cls, v: str) -> str:
        if v.lower() == "change-me":  # gate.example.toml's: two unedited gates would share one MQTT client id
            raise ValueError("still the example's placeholder 'CHANGE-ME': give this lane its own id")
        return v

    state_dir: Path = Field(Path("/var/lib/gate"), description="Pass cache, outbox and device state")
    reserve_mb: float = Field(
        4.0, ge=0, le=1024, description="Space held in the state directory for safety writes on a full disk"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    device_key: Path | None = Field(
        None, description="Ed25519 key that signs check-ins and alarms (relative: in $CREDENTIALS_DIRECTORY)"
    )


class SerialSection(_Model):
    port: str = Field("", description="Prefer /dev/serial/by-id/... which survives re-plugging")
    baud: int = Field(9600, ge=1200, le=4_000_000)
    terminator: str = Field("\r", min_length=1, max_length=2, description="End of one scanned code")
    max_line_bytes: int = Field(1024, ge=16, le=65536)


class ScannerSection(_Model):
    source: Literal["camera", "serial", "images"] = "camera"
    decoder: Literal["auto", "zxing", "zbar"] = "auto"
    formats: tuple[Literal["qr", "micro_qr", "datamatrix", "aztec", "pdf417"], ...] = ("qr",)
    max_payload_bytes: int = Field(512, ge=32, le=4096, description="Longer payloads are denied too_large")
    rearm_seconds: float = Field(3.0, ge=0.2, le=600, description="Same code held in view scans again after")
    absent_seconds: float = Field(0.5, ge=0.05, le=10, description="Unseen this long = left view")
    images_path: Path | None = Field(None, description="File or folder, for source = 'images'")
    max_image_pixels: int = Field(
        25_000_000, ge=1_000_000, le=400_000_000, description="Larger image files are refused before decoding"
    )
    camera: CameraSection = CameraSection()
    serial: SerialSection = SerialSection()


class TrustSection(_Model):
    keys: tuple[Path, ...] = Field((), description="PEM public keys whose codes are accepted")


class ClockSection(_Model):
    sync_source: Literal["auto", "timesyncd", "adjtimex", "gps", "assume_synced"] = "auto"


class PinSection(_Model):
    pin: int = Field(ge=0, le=27, description="BCM pin number")
    active_high: bool = True


class RelaySection(PinSection):
    pulse_seconds: float = Field(1.0, gt=0, le=30, description="How long one release holds the lock open")
    lock_mode: Literal["fail_secure", "fail_safe"] = Field(
        "fail_secure", description="fail_safe: de-energised = released (egress-critical lanes)"
    )


class IndicatorSection(_Model):
    kind: Literal["leds", "rgb"] = "leds"
    green: int | None = Field(None, ge=0, le=27)
    red: int | None = Field(None, ge=0, le=27)
    amber: int | None = Field(None, ge=0, le=27, description="Separate amber LED; rgb mixes it")
    blue: int | None = Field(None, ge=0, le=27, description="rgb only")
    active_high: bool = True


class InputSection(PinSection):
    active_high: bool = False  # inputs are usually wired to ground with the internal pull-up


class PassageSection(InputSection):
    timeout_seconds: float = Field(8.0, gt=0, le=120, description="Release with no passage locks again")
    held_open_seconds: float = Field(20.0, gt=0, le=600, description="Sensor blocked this long: alarm")
    debounce_seconds: float = Field(0.01, ge=0, le=1, description="An edge this soon after the last is bounce")
    flap_edges: int = Field(
        40, ge=4, le=100_000, description="More edges than this in a second: sensor_flapping, edges ignored"
    )


class GpioSection(_Model):
    pin_factory: Literal["default", "mock", "lgpio", "rpigpio", "pigpio", "native"] = "default"
    relay: RelaySection = RelaySection(pin=17)
    indicator: IndicatorSection | None = None
    buzzer: PinSection | None = None
    passage: PassageSection | None = None
    exit_button: InputSection | None = None
    fire: InputSection | None = None

    @model_validator(mode="after")
    def _pins_unique(self) -> GpioSection:
        seen: dict[int, str] = {}
        for name, pin in self.pins():
            if pin in seen:
                raise ValueError(f"pin {pin} is used by both {seen[pin]} and {name}")
            seen[pin] = name
        ind = self.indicator
        if ind is not None and ind.kind == "rgb" and None in (ind.red, ind.green, ind.blue):
            raise ValueError("indicator kind 'rgb' needs red, green and blue pins")
        return self

    def pins(self) -> list[tuple[str, int]]:
        out = [("gpio.relay.pin", self.relay.pin)]
        for name in ("buzzer", "passage", "exit_button", "fire"):
            dev = getattr(self, name)
            if dev is not None:
                out.append((f"gpio.{name}.pin", dev.pin))
        if self.indicator is not None:
            for colour in ("green", "red", "amber", "blue"):
                pin = getattr(self.indicator, colour)
                if pin is not None:
                    out.append((f"gpio.indicator.{colour}", pin))
        return out


class TlsSection(_Model):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = Field(False, description="Skip hostname checks (test brokers only)")

    @model_validator(mode="after")
    def _pair(self) -> TlsSection:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together")
        return self


class MqttSection(_Model):
    host: str = Field("localhost", min_length=1)
    port: int = Field(1883, ge=1, le=65535)
    hosts: tuple[str, ...] = Field(
        (), max_length=16, description='Brokers of one cluster, "host:port" each, tried in turn on a lost connection'
    )
    topic_prefix: str = Field("gate", pattern=r"^[A-Za-z0-9_/-]{1,64}$")
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    keepalive: int = Field(30, ge=5, le=3600)
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = Field(None, description="Relative names resolve in $CREDENTIALS_DIRECTORY")
    tls: TlsSection | None = None
    inflight_window: int = Field(200, ge=1, le=65535, description="Unacknowledged check-ins at once")
    max_refusals: int = Field(
        5, ge=1, le=1000, description="An event the broker refuses this often (MQTT 5) becomes a dead letter"
    )
    telemetry_seconds: float = Field(60.0, ge=1, le=3600)

    @model_validator(mode="after")
    def _auth(self) -> MqttSection:
        if self.password is not None and self.password_file is not None:
            raise ValueError("give password or password_file, not both")
        has_pw = self.password is not None or self.password_file is not None
        if has_pw and self.username is None:
            raise ValueError("a password needs a username")
        if self.username is not None and not has_pw:
            raise ValueError("username is set but neither password nor password_file is")
        if self.hosts and self.model_fields_set & {"host", "port"}:
            raise ValueError("give host/port (one broker) or hosts (a cluster), not both")
        endpoints = [broker_endpoint(h) for h in self.hosts]
        if len(set(endpoints)) != len(endpoints):
            raise ValueError("hosts names one broker twice")
        return self

    def endpoints(self) -> tuple[tuple[str, int], ...]:
        """The brokers to try, in order: `hosts`, or the one `host`:`port`."""
        return tuple(broker_endpoint(h) for h in self.hosts) or ((self.host, self.port),)

    def resolved_password(self) -> str | None:
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is None:
            return None
        return read_secret(self.password_file, "mqtt.password_file")


class CentralSection(_Model):
    keys: tuple[Path, ...] = Field((), description="Pinned central public keys; empty = no central sync")
    max_message_bytes: int = Field(4 << 20, ge=1024, le=64 << 20, description="Larger control messages are refused")
    command_max_age_seconds: float = Field(120.0, ge=5, le=3600, description="Older commands are refused as stale")
    command_ahead_seconds: float = Field(
        30.0,
        ge=1,
        le=600,
        description="A command signed further ahead of the gate's clock is refused (it would hold back later ones)",
    )


class OutboxSection(_Model):
    max_events: int = Field(2_000_000, ge=1000, description="Undelivered check-ins kept at most")
    min_free_mb: int = Field(64, ge=1, description="Free disk below this counts as full")
    on_full: Literal["out_of_service", "drop_oldest"] = Field(
        "out_of_service", description="out_of_service denies entry; drop_oldest deletes and counts"
    )


class Config(_Model):
    gate: GateSection
    venue: VenueSection
    scanner: ScannerSection = ScannerSection()
    trust: TrustSection = TrustSection()
    clock: ClockSection = ClockSection()
    policy: Policy = Policy()
    gpio: GpioSection = GpioSection()
    mqtt: MqttSection = MqttSection()
    outbox: OutboxSection = OutboxSection()
    central: CentralSection = CentralSection()
    homeassistant: HomeAssistantSection = HomeAssistantSection()
    metrics: MetricsSection = MetricsSection()
    gps: GpsSection = GpsSection()

    @model_validator(mode="after")
    def _source_needs(self) -> Config:
        if self.scanner.source == "serial" and not self.scanner.serial.port:
            raise ValueError("scanner.source is 'serial' but scanner.serial.port is empty")
        if self.clock.sync_source == "gps" and not self.gps.port:
            raise ValueError("clock.sync_source is 'gps' but gps.port is empty")
        if self.venue.category == VenueCategory.BUS and self.gps.port == "" and not self.gps.optional:
            raise ValueError("venue.category is 'bus' but gps.port is empty (or set gps.optional = true)")
        if self.scanner.source == "images" and self.scanner.images_path is None:
            raise ValueError("scanner.source is 'images' but scanner.images_path is not set")
        return self


CREDENTIALS_FALLBACK = Path("/etc/gate/credentials")  # where install.sh keeps them, for use outside systemd


def secret_path(path: Path) -> Path:
    """A relative secret file resolves in systemd's $CREDENTIALS_DIRECTORY when it is set (the service),
    else in /etc/gate/credentials (a maintainer's `gate check-config` or `gate status`, as root)."""
    if path.is_absolute():
        return path
    return Path(os.environ.get("CREDENTIALS_DIRECTORY") or CREDENTIALS_FALLBACK) / path


def read_secret(path: Path, key: str) -> str:
    """Read a secret file, resolved as `secret_path` does; an empty one (install.sh leaves it) is an error."""
    full = secret_path(path)
    try:
        secret = full.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read secret file {full}: {exc.strerror}") from None
    if not secret:
        raise ConfigError(f"{key}: secret file {full} is empty")
    return secret


def parse_config(data: dict[str, Any], source: str = "<config>") -> Config:
    """Strict: no type coercion (a quoted "1883" is not a port, "no" is not false). The data is checked as
    JSON so that strings may still name paths and choices."""
    try:
        as_json = json.dumps(data)
    except (TypeError, ValueError) as exc:  # TOML dates and times: no key takes one
        raise ConfigError(f"{source}: a value of an unsupported type ({str(exc)[:80]})") from None
    try:
        return Config.model_validate_json(as_json, strict=True)
    except ValidationError as exc:
        raise ConfigError(describe(exc, source)) from None


def load_config(path: Path) -> Config:
    """Load and validate; every problem raises ConfigError naming the file and key path (or line and column)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(f"{path}: not UTF-8: byte 0x{raw[exc.start]:02x} at line {line}, column {column}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {str(exc)[:200]}") from None
    config = parse_config(data, str(path))
    if config.mqtt.password_file is not None:
        config.mqtt.resolved_password()
    return config
