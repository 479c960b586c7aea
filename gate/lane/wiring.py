"""Start-up, step by step: every part is built once, complete, in dependency order."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from gate.actuate.pins import make_pin_factory
from gate.actuator import Actuator
from gate.config.model import Config, secret_path
from gate.config.venue import MOBILE
from gate.contracts import Alarm, LaneControl, Requested, Venue, make_inbox
from gate.core import reserve
from gate.core.clock import Clock, SystemClock
from gate.core.docstore import DocStore
from gate.core.faults import Faults
from gate.core.threads import LaneFirst, lane_switching
from gate.decide.decision import Decider
from gate.decide.keys import TrustStore, load_private_key, load_public_key
from gate.decide.passcache import PassCache
from gate.decide.policy import PolicyStore
from gate.deliver.delivery import Drainer
from gate.deliver.recorder import Recorder
from gate.deliver.sealing import Sealer
from gate.lane.loop import Gate
from gate.lane.state import LaneState
from gate.lane.statefiles import Recovery, check_device_doc, open_lane_state, open_outbox, open_pass_cache
from gate.mqtt_link import MqttLink
from gate.ops.homeassistant import Discovery
from gate.ops.metrics import MetricsServer
from gate.ops.reporting import Reporter
from gate.ops.telemetry import Stats
from gate.scan.decoders import make_decoder
from gate.scan.motion import SceneWatch
from gate.scanner import CodeSource, DecodingSource, Deduplicator, ImageSource, Scanner
from gate.sync.envelope import Verifier
from gate.sync.worker import CentralSync, central_keys
from gate.venue.gps import Gps

log = logging.getLogger(__name__)


def make_source(cfg: Config) -> CodeSource:
    """The configured source; hardware libraries are imported inside their adapters."""
    sc = cfg.scanner
    if sc.source == "serial":
        from gate.scan.serial_source import SerialScanner

        return SerialScanner(sc.serial)
    decoder = make_decoder(sc.decoder, sc.formats)
    if sc.source == "images":
        assert sc.images_path is not None
        return DecodingSource(ImageSource([sc.images_path], sc.max_image_pixels), decoder)
    from gate.scan.camera import PiCamera

    return DecodingSource(PiCamera(sc.camera), decoder, SceneWatch() if sc.camera.skip_unchanged_frames else None)


def source_counters(source: CodeSource) -> dict[str, int]:
    """For telemetry: camera restarts or serial reconnects, and serial lines dropped."""
    restarts = getattr(getattr(source, "frames", source), "restarts", 0) + getattr(source, "reconnects", 0)
    return {"source_restarts": int(restarts), "dropped_lines": int(getattr(source, "dropped_lines", 0))}


def build(
    cfg: Config,
    source: CodeSource | None = None,
    pin_factory: Any = None,
    clock: Clock | None = None,
    trust: TrustStore | None = None,
    with_mqtt: bool = True,
    heartbeat: Callable[[], None] = lambda: None,
) -> Gate:
    """Every part built once, complete, given its collaborators, in dependency order. `heartbeat` is called on
    each turn of the scan loop (systemd's watchdog under `gate run`)."""
    state = cfg.gate.state_dir
    state.mkdir(parents=True, exist_ok=True)
    reserve.install(state, int(cfg.gate.reserve_mb * (1 << 20)))  # before any state file: room for safety
    recovery = Recovery()
    inbox = make_inbox()
    lane_first = LaneFirst()  # the lane's decisions come before delivery and sync
    lane_switching()
    control = LaneControl(inbox)
    # The `fault` alarm: raised when any episode of failing work starts, cleared when none is left.
    faults = Faults(on_episode=lambda what, on, detail: control.post(Alarm("fault", on, detail)))
    gps = Gps(cfg.gps, control.post) if cfg.gps.port else None
    clock = clock or SystemClock(cfg.clock.sync_source, gps_offset=gps.clock_offset if gps is not None else None)
    base_keys = list(trust.keys.values()) if trust is not None else [load_public_key(p) for p in cfg.trust.keys]
    check_device_doc(state / "device.json", recovery)
    policy = PolicyStore(state / "device.json", cfg.policy).load()
    cache_lost = open_pass_cache(state / "passes.db", recovery)
    cache = PassCache(state / "passes.db")
    cache_unproven = prove_cache(cache, recovery, cache_lost)
    decider = Decider(
        TrustStore.of([*base_keys, *central_keys(state)]),
        policy,
        cache.lookup,
        cache.info,
        cfg.scanner.max_payload_bytes,
    )
    outbox = open_outbox(state / "outbox.db", cfg.outbox, recovery)
    lanestate, mode_unknown = open_lane_state(state / "lane.db", recovery, faults)
    code_source = source or make_source(cfg)
    scanner = Scanner(code_source, Deduplicator(cfg.scanner.rearm_seconds, cfg.scanner.absent_seconds))
    factory = pin_factory if pin_factory is not None else make_pin_factory(cfg.gpio.pin_factory)
    actuator = Actuator(cfg.gpio, factory, control.post, control.post)
    link = MqttLink(cfg.mqtt, cfg.gate.id, on_up=control.report) if with_mqtt else None
    sealer = Sealer(load_private_key(secret_path(cfg.gate.device_key))) if cfg.gate.device_key else None
    drainer = None
    if link is not None:
        dead = lambda n, detail: control.post(Alarm("dead_letter", True, detail))  # noqa: E731
        window, refusals = cfg.mqtt.inflight_window, cfg.mqtt.max_refusals
        stalled = lambda on, detail: control.post(Alarm("delivery_stalled", on, detail))  # noqa: E731
        stall_after = max(2.0 * cfg.mqtt.keepalive, 10.0)
        drainer = Drainer(outbox, link, window, refusals, dead, sealer, lane_first, faults, stall_after, stalled)
    recorder = Recorder(
        cfg,
        outbox,
        clock,
        drainer.wake if drainer is not None else lambda: None,
        position=where(cfg, gps),
        stops=lambda route: decider.policy.stops.get(route, ()),  # the policy in force, central's
        venue=venue_now(cfg, lanestate),
        send_now=send_now(link, sealer),
    )
    sync = None
    if link is not None and cfg.central.keys:
        verifier = Verifier(
            TrustStore.from_files(cfg.central.keys),
            cfg.gate.id,
            cfg.central.max_message_bytes,
            cfg.central.command_max_age_seconds,
            DocStore(state / "device.json", "command_nonces"),
            cfg.central.command_ahead_seconds,
        )
        sync = CentralSync(control, link, verifier, base_keys, cfg, lane_first, faults)
    elif link is not None:
        log.warning("no [central] keys pinned: pass status, policy and commands from central are ignored")
    stats = Stats()
    reporter = Reporter(
        cfg,
        cache,
        outbox,
        decider,
        actuator,
        clock,
        recorder,
        stats,
        link=link,
        sync_status=sync.status if sync is not None else None,
        lanestate=lanestate,
        faults=faults,
        source_counters=lambda: source_counters(code_source),
        queues=(inbox, actuator.events),
    )
    gate = Gate(
        cfg,
        scanner,
        decider,
        cache,
        outbox,
        actuator,
        clock,
        recorder,
        reporter,
        inbox,
        stats,
        lanestate,
        faults,
        link=link,
        drainer=drainer,
        sync=sync,
        lane_first=lane_first,
        closers=[gps.stop] if gps is not None else [],
        heartbeat=heartbeat,
    )
    restore_lane(gate, mode_unknown)
    if link is not None:
        discovery = Discovery(cfg, link)
        link.up_listeners.append(discovery.connected)
        discovery.start()
        gate.closers.append(discovery.stop)
    if cfg.metrics.listen:
        start_metrics(gate, cfg.metrics.listen, lambda: source_counters(code_source))
    if gps is not None:
        gps.start()
    for name, detail in recovery.alarms:
        control.post(Alarm(name, True, detail))
    if sync is not None:
        sync.start()
        if cache_lost:
            sync.resync_soon("the pass cache was unreadable and started empty")
        elif cache_unproven:
            sync.resync_soon("the pass cache holds less than its seal")
    if drainer is not None:
        drainer.start()
    if link is not None:
        link.start()
    return gate


def send_now(link: MqttLink | None, sealer: Sealer | None) -> Callable[[str, bytes], object]:
    """Publish outside the outbox (an alarm the full disk cannot store yet), signed as the drainer signs."""
    if link is None:
        return lambda topic, payload: None
    return lambda topic, payload: link.publish(topic, sealer.seal(payload) if sealer else payload, qos=1)


def prove_cache(cache: PassCache, recovery: Recovery, lost: bool) -> bool:
    """A cache that holds less than its seal (or was lost) may have lost a revocation: until central's next
    snapshot it is treated as stale, and a code alone admits no one."""
    problem = cache.unproven()
    if problem is None:
        return False
    cache.distrust()
    if not lost:  # a lost cache has its own alarm already
        recovery.note("state_unproven", f"{problem}; treated as stale until central's next snapshot")
    return True


def where(cfg: Config, gps: Gps | None) -> Callable[[], dict[str, Any] | None]:
    """Where a check-in was made: the receiver's last fix; a vehicle without a receiver says so."""
    if gps is not None:
        return gps.position
    if cfg.venue.category in MOBILE:
        return lambda: {"fix": False, "why": "no_gps"}
    return lambda: None


def venue_now(cfg: Config, lanestate: LaneState) -> Venue:
    """The config's venue, with the trip central set since (a bus): that stands over the config."""
    venue = cfg.venue.venue()
    trip = lanestate.trip() if cfg.venue.category == "bus" else None
    return venue if trip is None else replace(venue, route=trip[0], run=trip[1])


def start_metrics(gate: Gate, listen: str, counters: Callable[[], dict[str, int]]) -> None:
    """Monitoring is not the lane: an address that cannot be bound is logged, and the gate runs on."""
    try:
        server = MetricsServer(listen, gate, counters)
    except OSError as exc:
        log.error("metrics: cannot listen on %s: %s; the gate runs without /metrics", listen, exc.strerror)
        return
    server.start()
    gate.closers.append(server.stop)


def restore_lane(gate: Gate, mode_unknown: bool) -> None:
    """Before the first scan: the remote mode and the anti-passback memory from before the restart."""
    now = gate.clock.read()
    try:
        record = None if mode_unknown else gate.lanestate.mode()
    except ValueError as exc:  # a value that is no mode: as unknown as an unreadable file
        log.error("lane.db: %s", exc)
        mode_unknown = True
    if mode_unknown:
        gate.set_mode(Requested.OUT_OF_SERVICE, "start-up: lane.db was unreadable")
    elif record is not None:
        log.warning("lane mode %s restored (set by %s at %.0f)", record.mode, record.set_by, record.set_at)
        gate.actuator.request(record.mode, record.set_by, record.set_at)
    window = gate.decider.policy.passback_seconds
    passed = gate.lanestate.recent_passages(now.wall, window) if window > 0 else {}
    gate.decider.restore({t: now.mono - (now.wall - at) for t, at in passed.items()})
